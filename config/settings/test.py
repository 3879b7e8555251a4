"""Test settings: real PostGIS and real Redis, kept apart from development data."""

import tempfile

from config.settings.base import *  # noqa: F403
from config.settings.base import CACHES, env

DEBUG = False
SECRET_KEY = "test-only-key"  # nosec B105 # the test settings' own key
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_USE_FINDERS = True

# Separate Redis databases so that a test run never flushes a developer's cache or queue: the
# cache's on the cache Redis (6380), the broker's on the broker Redis (6379), as deployed.
CACHES["default"]["LOCATION"] = env.str("TEST_REDIS_URL", default="redis://127.0.0.1:6380/14")
CACHES["default"]["KEY_PREFIX"] = "places-test"
CELERY_BROKER_URL = env.str("TEST_CELERY_BROKER_URL", default="redis://127.0.0.1:6379/15")
# Stored import copies go to a fresh folder per run (a worker started by a test is given the
# same folder through MEDIA_ROOT).
MEDIA_ROOT = env.str("MEDIA_ROOT", default="") or tempfile.mkdtemp(prefix="places-test-media-")
DATABASES["default"]["TEST"] = {"TEMPLATE": "template0", "CHARSET": "UTF8"}  # noqa: F405

# One apply connection: a test's own transaction (never committed) holds the staged rows,
# which other connections cannot see. Tests of the parallel apply commit for real, or run a
# worker process, and set it themselves.
IMPORT_APPLY_WORKERS = env.int("IMPORT_APPLY_WORKERS", default=1)
