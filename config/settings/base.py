"""Settings shared by every environment. Environment-specific modules import from here.

Every integration is configured here and switched on by environment variables (see the
configuration table in README.md). Nothing here may hold a production secret.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE

from config import gdal
from config.env import BASE_DIR, env, secret

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = secret("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

GDAL_LIBRARY_PATH = gdal.configure()
GEOS_LIBRARY_PATH = gdal.geos_library()

INSTALLED_APPS = [
    "django_prometheus",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.gis",
    "csp",
    "rest_framework",
    "rest_framework_gis",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "places",
    "ingestion",
    "analytics",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "config.logging.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "config.security.PermissionsPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # RateLimit-* headers on every response a rate limit counted (places.throttling).
    "places.throttling.RateLimitHeadersMiddleware",
    "config.security.UndeclaredMethodMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Security headers (every environment; production adds HTTPS-only ones) ---------------
# Scripts only from our own static files: no inline script, no eval. The one inline script left,
# Django's map widget in the admin, carries the per-response nonce (places.admin_base), which is
# added to the header only on the pages that render it. <style> elements need the hash of their
# exact text: the one below is drf-spectacular's Swagger UI page (tests/config/test_security.py
# fails when an upgrade changes it). style="" attributes are allowed (style-src-attr): the
# browsable API and Swagger UI's Markdown tables use them, and an attribute can neither run
# code nor load anything from elsewhere (img-src and font-src stay 'self').
# MapLibre starts its workers from blob: URLs and decodes tiles' images through blob:, Swagger UI
# draws its icons from data: URLs.
SWAGGER_UI_INLINE_STYLE_HASH = "'sha256-MMpT0iDxyjALd9PdfepImGX3DBfJPXZ4IlDWdPAgtn0='"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, SWAGGER_UI_INLINE_STYLE_HASH],
        "style-src-attr": [UNSAFE_INLINE],
        "img-src": [SELF, "data:", "blob:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# Browser features no page of ours uses are switched off for us and for anything we embed.
PERMISSIONS_POLICY: dict[str, list[str]] = {
    feature: []
    for feature in (
        "accelerometer",
        "autoplay",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "usb",
    )
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- Databases ----------------------------------------------------------------------------
# JIT compilation costs more than it saves on our tile and aggregate queries, so every
# application connection turns it off. A viewport of 100,000 points sorts about 5 MB, just
# over PostgreSQL's default work_mem of 4 MB, which would spill the sort to disk.
#
# Parallel query only where it pays: PostGIS declares its functions costly, so the planner
# started a parallel worker even for a 1,000-place view, and under many short map queries at
# once those workers competed with the other requests for the same cores. A higher setup
# cost kept small queries serial and big ones parallel. Measured in one session on the
# million places (issue 14): 1,000-place views 1.7 ms median (p90 2.1 ms) against 2.1–8.7
# ms (p90 16–18 ms) at PostgreSQL's default of 1000; the 100K-place view 84 ms either way
# (106–128 ms with parallel query off altogether). Since the box test of points calls no
# costly PostGIS function (places.serving.query.point_in_bbox_condition, 2026-12-05), the
# views plan serial at this setting and down to PostgreSQL's default (EXPLAIN of the 100K
# view and of the one-pass cluster view of the world): the 100K-place view took 110–115 ms
# over HTTP (an A/B 112 against 121 with the old test in parallel; README, Benchmarks). The
# setting still shapes the tiles, whose MVT functions are declared costly.
PG_SESSION_OPTIONS = (
    f"-c jit=off -c work_mem={env.str('PG_WORK_MEM', default='32MB')}"
    f" -c parallel_setup_cost={env.int('PG_PARALLEL_SETUP_COST', default=50000)}"
)

# Prepared statements for the viewport's plain points query (issue 14;
# places.serving.viewport): parsing and planning were a quarter of PostgreSQL's CPU for a
# 1,000-place view (1.1 against 0.8 ms per query, the same plans). A session pool keeps
# them (docker/compose.yaml's PgBouncer, the chart's Pooler); a transaction pool that does
# not (PgBouncer before 1.21, or without max_prepared_statements: make prod's, Debian's
# 1.18) needs them off, as bin/prod sets.
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=True)


def _database(url: str, *, read_only: bool = False, password: str = "") -> dict:
    config = env.db_url_config(url)
    if password and not config.get("PASSWORD"):
        # The URL names no password (Kubernetes: it lives in the operator's Secret, mounted as
        # the file DATABASE_PASSWORD_FILE), so the URLs themselves can sit in a ConfigMap.
        config["PASSWORD"] = password
    # Metrics per query (django-prometheus) on top of the PostGIS backend, and a health check
    # that asks the socket before it spends a round trip (config/database/base.py).
    config["ENGINE"] = "config.database"
    options = PG_SESSION_OPTIONS
    if read_only:
        # Analytics must never write; on the primary fallback this makes a stray write fail.
        options += " -c default_transaction_read_only=on"
    config["OPTIONS"] = {**config.get("OPTIONS", {}), "options": options}
    config["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASE_URL = secret("DATABASE_URL", "postgis://postgres@127.0.0.1:5432/places")
REPLICA_DATABASE_URL = secret("REPLICA_DATABASE_URL", "") or ""
DATABASE_PASSWORD = secret("DATABASE_PASSWORD", "") or ""
DATABASES = {
    "default": _database(DATABASE_URL, password=DATABASE_PASSWORD),
    "replica": _database(
        REPLICA_DATABASE_URL or DATABASE_URL, read_only=True, password=DATABASE_PASSWORD
    ),
}
# Web processes remember data versions between the commits that move them, each told by a
# connection listening for them (places.version_watch): empty listens on the default
# database's own settings; a URL names another way to the same database (PgBouncer's session
# pool: a transaction pool lends the session holding the LISTEN to others); "off" reads every
# version from PostgreSQL, as each request did before.
DATA_VERSION_LISTEN_URL = secret("DATA_VERSION_LISTEN_URL", "") or ""
# A replica that does not answer must not hold an analytics task (or /health/ready/) for long.
DATABASES["replica"]["OPTIONS"]["connect_timeout"] = env.int("REPLICA_CONNECT_TIMEOUT", default=3)
# Tests: the replica alias reads the test database by its name and is never created, flushed
# or migrated: on the streaming replica, which replays it from the primary, when
# REPLICA_DATABASE_URL is set (make test sets it), else on the primary itself.
DATABASES["replica"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["config.routers.PrimaryReplicaRouter"]
# When analytics may read from the replica (analytics.replica.read_source): lagging more than
# either bound, or down, analytics fall back to the primary ("primary", in a read-only
# transaction) or raise ReplicaUnavailable for the task to retry later ("retry"). A task that
# needs its own earlier write waits up to ANALYTICS_REPLICA_WAIT_SECONDS for its replay.
ANALYTICS_REPLICA_MAX_LAG_SECONDS = env.float("ANALYTICS_REPLICA_MAX_LAG_SECONDS", default=30.0)
ANALYTICS_REPLICA_MAX_LAG_BYTES = env.int(
    "ANALYTICS_REPLICA_MAX_LAG_BYTES", default=256 * 1024 * 1024
)
ANALYTICS_REPLICA_FALLBACK = env.str("ANALYTICS_REPLICA_FALLBACK", default="primary")
ANALYTICS_REPLICA_WAIT_SECONDS = env.float("ANALYTICS_REPLICA_WAIT_SECONDS", default=10.0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and Celery (two Redis instances) -----------------------------------------------
# The cache has a Redis of its own, bounded in memory and evicting the least recently used
# keys when full (`--maxmemory 256mb --maxmemory-policy allkeys-lru`, see bin/services-up):
# anonymous requests must not be able to grow it without limit. The broker's Redis must never
# evict (a lost message is a lost import), so the two cannot share one instance. Rate-limit
# and login-failure counters live in the cache: a counter in use is recently used, so LRU
# evicts cold bodies long before it.
REDIS_URL = secret("REDIS_URL", "redis://127.0.0.1:6380/0")
CACHES = {
    "default": {
        # django-redis with django-prometheus's metrics; its clear() also empties the web
        # process's copy of recent bodies (places.serving.local_cache).
        "BACKEND": "places.serving.local_cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="places"),
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 2,
            "SOCKET_TIMEOUT": 2,
        },
    }
}

# Responses bigger than this (gzipped, as stored) are cached only when their URL is shared
# by everyone who asks for that content (tiles, statistics): a body for a free-form query
# (a box, a filter, a page size) is built and sent but not stored (places.serving.responses).
CACHE_MAX_BODY_BYTES = env.int("CACHE_MAX_BODY_BYTES", default=1024 * 1024)
# Each web process keeps the small bodies it last sent, up to this many bytes (gzipped), and
# asks Redis only for others (places.serving.local_cache); 0 switches the copy off.
CACHE_LOCAL_BYTES = env.int("CACHE_LOCAL_BYTES", default=16 * 1024 * 1024)

CELERY_BROKER_URL = secret("CELERY_BROKER_URL", "redis://127.0.0.1:6379/1")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "ingestion.tasks.*": {"queue": "ingestion"},
    "analytics.tasks.*": {"queue": "analytics"},
    "ingestion.edge.tasks.*": {"queue": "edge"},
}
# One task at a time per worker process: imports are long, and a prefetched second task
# would wait behind them.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A task that was taken but not acknowledged (worker killed) is redelivered after this long;
# it must exceed the longest task.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=4 * 3600)
}
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=3 * 3600)
# The soft limit raises inside the task first, so an import fails with a message instead of
# being killed and left "running".
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 120
# Our own logging config (JSON with LOG_FORMAT=json) stays in force in workers and beat.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "ensure-attribute-partitions": {
        "task": "places.tasks.place_attribute_partitions_ensure",
        "schedule": crontab(minute=17, hour=3),
    },
    # Redis keeps no messages on disk here: a restart loses queued imports, which this
    # re-queues once their heartbeat is stale (and it clears staging rows left behind).
    "recover-import-jobs": {
        "task": "ingestion.tasks.import_jobs_recover",
        "schedule": 60.0,
    },
    # Datasets with a sync URL and schedule whose check is due (hourly, daily, weekly):
    # a conditional GET, and a snapshot import when the file changed.
    "sync-datasets": {
        "task": "ingestion.tasks.datasets_sync",
        "schedule": crontab(minute="*/15"),
    },
    # Likely duplicates among all places, nightly (imports look at their own places at once).
    "find-duplicates": {
        "task": "places.tasks.duplicates_find",
        "schedule": crontab(minute=41, hour=2),
    },
    # Edge readings: month partitions ahead of the data, and past EDGE_RETENTION_DAYS dropped.
    "edge-partitions": {
        "task": "ingestion.edge.tasks.edge_partitions_maintain",
        "schedule": crontab(minute=23, hour=3),
    },
    # Nodes without a heartbeat or batch for EDGE_SILENT_AFTER_SECONDS are marked silent.
    "edge-silent-nodes": {
        "task": "ingestion.edge.tasks.edge_nodes_silent_mark",
        "schedule": 60.0,
    },
    # Batches whose follow-up task was lost (Redis restarted) still reach the counters.
    "edge-count-batches": {
        "task": "ingestion.edge.tasks.edge_batches_count_pending",
        "schedule": 300.0,
    },
    # Region summaries whose data moved and the recent days of sensor readings (analytics),
    # and everything once a night (archives uploaded late, anything a key could miss).
    "analytics-recompute": {
        "task": "analytics.tasks.analytics_recompute",
        "schedule": 600.0,
    },
    "analytics-recompute-full": {
        "task": "analytics.tasks.analytics_recompute",
        "schedule": crontab(minute=40, hour=2),
        "kwargs": {"full": True},
    },
}
# Analytics: a place's nearest sensor is looked for within this radius (metres, geodesic);
# incremental rollups recompute the whole days since this many hours ago.
ANALYTICS_SENSOR_RADIUS_M = env.float("ANALYTICS_SENSOR_RADIUS_M", default=5000.0)
ANALYTICS_SENSOR_RECENT_HOURS = env.int("ANALYTICS_SENSOR_RECENT_HOURS", default=48)
# Imports apply this many staged rows per transaction (each commit is a resumable checkpoint)
# and are re-queued when their heartbeat (moved by every batch) is older than the stale limit.
IMPORT_BATCH_ROWS = env.int("IMPORT_BATCH_ROWS", default=50_000)
# Batches applied at once, each on its own database connection (and server process).
IMPORT_APPLY_WORKERS = env.int("IMPORT_APPLY_WORKERS", default=2)
IMPORT_STALE_SECONDS = env.int("IMPORT_STALE_SECONDS", default=600)
CELERY_BEAT_SCHEDULE_FILENAME = str(BASE_DIR / ".run" / "celerybeat-schedule")

# --- Static and uploaded files ----------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=str(BASE_DIR / ".run" / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = env.path("MEDIA_ROOT", default=str(BASE_DIR / ".run" / "media"))
MEDIA_URL = "/media/"


# Uploaded import files go to the local disk under MEDIA_ROOT (one machine, or a volume all
# pods mount), or, when UPLOADS_S3_BUCKET is set, to an S3-compatible bucket through
# django-storages, so that web (which receives a file) and the ingestion workers (which import
# it, on other pods) share no filesystem (ingestion.services.stored_files, k8s/README.md).
# Credentials: UPLOADS_S3_ACCESS_KEY_ID and UPLOADS_S3_SECRET_ACCESS_KEY (or their _FILE);
# unset, boto3 finds its own (an IAM role of the pod or instance, AWS_* variables).
def uploads_storage() -> dict[str, Any]:
    """The default storage's STORAGES entry, from the UPLOADS_S3_* variables."""
    bucket = env.str("UPLOADS_S3_BUCKET", default="")
    endpoint = env.str("UPLOADS_S3_ENDPOINT_URL", default="")
    if not bucket:
        return {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    return {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            # Empty for AWS itself; MinIO, Ceph, Garage... name theirs.
            "endpoint_url": endpoint or None,
            "region_name": env.str("UPLOADS_S3_REGION", default="") or None,
            "access_key": secret("UPLOADS_S3_ACCESS_KEY_ID", "") or None,
            "secret_key": secret("UPLOADS_S3_SECRET_ACCESS_KEY", "") or None,
            # A key prefix, so that one bucket can serve several deployments.
            "location": env.str("UPLOADS_S3_PREFIX", default=""),
            # Bucket-style host names need wildcard DNS that self-hosted stores rarely have.
            "addressing_style": env.str(
                "UPLOADS_S3_ADDRESSING_STYLE",
                default="path" if endpoint else "auto",
            ),
            "signature_version": "s3v4",
            # Never replace a stored file: two uploads of one name keep both (as on disk).
            "file_overwrite": False,
            # Private objects: the bucket's policy decides, no public ACL is ever set.
            "default_acl": None,
        },
    }


STORAGES = {
    "default": uploads_storage(),
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- Internationalisation -----------------------------------------------------------------
LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Login lockout by django-axes (places.login_throttle): LOGIN_FAILURE_LIMIT failures per client
# address or per user name lock it out for LOGIN_FAILURE_WINDOW_SECONDS after the last one;
# every password check goes through axes' backend first, refused unhashed while locked out.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=10)
LOGIN_FAILURE_WINDOW_SECONDS = env.int("LOGIN_FAILURE_WINDOW_SECONDS", default=15 * 60)
INSTALLED_APPS += ["axes"]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last: it answers for locked-out requests
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "places.login_throttle.CheckedModelBackend",  # Django's, marking a password checked
]
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"  # counts in Redis, no row per failure
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_FAILURE_WINDOW_SECONDS)
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]  # each on its own
AXES_CLIENT_IP_CALLABLE = "places.login_throttle.client_address"
AXES_USERNAME_CALLABLE = "places.login_throttle.username_of"
AXES_LOCKOUT_CALLABLE = "places.login_throttle.lockout_response"
AXES_RESET_ON_SUCCESS = False  # one's own login must not reset the count of guesses at others
AXES_ENABLE_ADMIN = False  # the cache handler keeps no rows; the audit trail has the events

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "config.schema.PlacesAutoSchema",
    # The API is read-only; a session (the admin's) only lifts the throttle to the user rate.
    # No Basic authentication: it would hash a password on every request that sends one.
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # Per client IP (anonymous, rate "anon") or per user (signed in, rate "user"), counted
    # atomically in Redis (places.throttling). A map page fetches a few dozen tiles per view,
    # so the anonymous default leaves people room and stops scrapers; an empty value switches
    # a limit off (the benchmark does, to measure the server, not the limit).
    "DEFAULT_THROTTLE_CLASSES": ["places.throttling.RedisRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_ANON_RATE", default="6000/min") or None,
        "user": env.str("API_USER_RATE", default="20000/min") or None,
    },
    # The client's address is the NUM_PROXIES-th from the end of X-Forwarded-For. Behind a
    # proxy it must equal the number of proxies: with 0 every client has the proxy's address
    # and shares one bucket; with too many a client can choose its address by sending the
    # header itself.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
}
# /metrics answers only requests whose peer and every forwarded-for address lie in these
# networks (loopback and private ranges: Prometheus inside the cluster); others get 404.
METRICS_ALLOWED_NETWORKS = [
    ipaddress.ip_network(network)
    for network in env.list(
        "METRICS_ALLOWED_NETWORKS",
        default=[
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ],
    )
]
# A Celery worker serves its pool's task durations and import counts on this port (0: off);
# PROMETHEUS_MULTIPROC_DIR must be set for a prefork pool (places.metrics).
CELERY_METRICS_PORT = env.int("CELERY_METRICS_PORT", default=0)
CELERY_METRICS_ADDRESS = env.str("CELERY_METRICS_ADDRESS", default="127.0.0.1")
# /metrics reports backup ages from `pgbackrest info` for this stanza (empty: no backup
# metrics); PGBACKREST_CONFIG names its configuration file when not the default one.
PGBACKREST_STANZA = env.str("PGBACKREST_STANZA", default="")
PGBACKREST_CONFIG = env.str("PGBACKREST_CONFIG", default="")
# With PROMETHEUS_MULTIPROC_DIR set, every process writes its metrics into that folder from the
# first count on (a one-off manage.py in the web's container too), so it must exist; gunicorn
# and the Celery worker empty it when they start (places.metrics).
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
SPECTACULAR_SETTINGS = {
    "TITLE": "Places API",
    "DESCRIPTION": (
        "A gazetteer of places (first of all places of worship) with their regions and "
        "source datasets. Coordinates are WGS84 longitude/latitude (EPSG:4326)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI assets are served from our own static files: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Domain settings ---------------------------------------------------------------------
PLACES_API_PAGE_SIZE = env.int("PLACES_API_PAGE_SIZE", default=1000)
PLACES_API_MAX_PAGE_SIZE = env.int("PLACES_API_MAX_PAGE_SIZE", default=100_000)
# Anonymous clients get smaller pages: each uncached one is built from PostgreSQL, and a
# signed-in client is accountable for the big ones.
PLACES_API_ANON_MAX_PAGE_SIZE = env.int("PLACES_API_ANON_MAX_PAGE_SIZE", default=1_000)

# Edge nodes (ingestion.edge): limits of one batch of readings, the clock skew allowed
# before a reading counts as from the future, retention (0 keeps everything: archives are
# years old), when a quiet node is marked silent, partitions made ahead, and each node's rate.
EDGE_MAX_BATCH_BYTES = env.int("EDGE_MAX_BATCH_BYTES", default=8 * 1024 * 1024)
EDGE_MAX_BATCH_READINGS = env.int("EDGE_MAX_BATCH_READINGS", default=10_000)
EDGE_CLOCK_SKEW_SECONDS = env.int("EDGE_CLOCK_SKEW_SECONDS", default=300)
EDGE_RETENTION_DAYS = env.int("EDGE_RETENTION_DAYS", default=0)
# Readings before this year are refused as too old whatever the retention: each month of
# readings is a partition, and one batch must not be able to create centuries of them.
EDGE_EARLIEST_READING_YEAR = env.int("EDGE_EARLIEST_READING_YEAR", default=2000)
EDGE_SILENT_AFTER_SECONDS = env.int("EDGE_SILENT_AFTER_SECONDS", default=900)
EDGE_PARTITION_MONTHS_AHEAD = env.int("EDGE_PARTITION_MONTHS_AHEAD", default=2)
# New month partitions one batch may create (each locks the readings table a moment); 413
# beyond.
EDGE_MAX_NEW_MONTHS_PER_BATCH = env.int("EDGE_MAX_NEW_MONTHS_PER_BATCH", default=24)
EDGE_RATE = env.str("EDGE_RATE", default="120/m") or None
# Failed edge authentications per client address before its requests get 429 (the node's
# rate applies only once a key is known); empty switches it off.
EDGE_AUTH_FAILURE_RATE = env.str("EDGE_AUTH_FAILURE_RATE", default="30/m") or None

# Downloads (analytics.downloads): selections up to DOWNLOADS_SYNC_MAX_PLACES places are
# written in the request, bigger ones by a task on the replica, DOWNLOADS_CHUNK_ROWS rows per
# fetch and Parquet row group (a row costs about 1.6 KB in Python until its chunk is Arrow:
# 10,000 hold some 16 MB, whatever the selection's size). A pending or running job silent
# for DOWNLOADS_STALE_SECONDS is queued again (longer than any build); a file whose data
# version passed is kept DOWNLOADS_KEEP_SECONDS after it was built (downloads under way),
# and expired or failed jobs are forgotten after DOWNLOADS_FORGET_DAYS.
DOWNLOADS_SYNC_MAX_PLACES = env.int("DOWNLOADS_SYNC_MAX_PLACES", default=10_000)
DOWNLOADS_CHUNK_ROWS = env.int("DOWNLOADS_CHUNK_ROWS", default=10_000)
DOWNLOADS_STALE_SECONDS = env.int("DOWNLOADS_STALE_SECONDS", default=3600)
DOWNLOADS_KEEP_SECONDS = env.int("DOWNLOADS_KEEP_SECONDS", default=3600)
DOWNLOADS_FORGET_DAYS = env.int("DOWNLOADS_FORGET_DAYS", default=30)
# Jobs pending or running at once; a request for another selection gets 429 beyond.
DOWNLOADS_MAX_ACTIVE_JOBS = env.int("DOWNLOADS_MAX_ACTIVE_JOBS", default=20)
# Data-quality flags of datasets changed by imports or region upkeep (edits flag at once).
CELERY_BEAT_SCHEDULE["quality-flags-refresh"] = {
    "task": "places.tasks.quality_flags_refresh_due",
    "schedule": crontab(minute="*/10"),
}
CELERY_BEAT_SCHEDULE["downloads-maintain"] = {
    "task": "analytics.tasks.downloads_maintain",
    "schedule": crontab(minute="*/10"),
}

# The map's basemap: a MapLibre style URL (e.g. an OpenStreetMap-based vector style) a
# deployment serves or pays for; empty draws the offline Natural Earth basemap we ship. The
# style's origin, and MAP_STYLE_ORIGINS (its tiles', glyphs' and sprites' hosts), are allowed
# by the Content-Security-Policy.
MAP_STYLE_URL = env.str("MAP_STYLE_URL", default="")
MAP_STYLE_ORIGINS = env.list("MAP_STYLE_ORIGINS", default=[])
if MAP_STYLE_URL:
    _style = urlsplit(MAP_STYLE_URL)
    _directives: dict[str, list[str]] = CONTENT_SECURITY_POLICY["DIRECTIVES"]  # type: ignore[assignment]
    for _origin in [f"{_style.scheme}://{_style.netloc}", *MAP_STYLE_ORIGINS]:
        for _directive in ("connect-src", "img-src"):
            _directives[_directive].append(_origin)

# --- Logging and errors ------------------------------------------------------------------
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "config.logging.RequestIdFilter"}},
    "formatters": {
        "json": {"()": "config.logging.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "celery": {"level": LOG_LEVEL},
    },
}

SENTRY_DSN = secret("SENTRY_DSN", "") or ""
SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", default="development")
SENTRY_TRACES_SAMPLE_RATE = env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0)
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=SENTRY_ENVIRONMENT,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
        send_default_pii=False,
    )

# Runtime state of a checkout (beat schedule, collected static, uploads) lives in .run/.
os.makedirs(BASE_DIR / ".run" / "staticfiles", exist_ok=True)
