"""Settings come from the environment; production refuses to start when misconfigured."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECRET_KEY"))}
# What production accepts: 50 characters or more, of at least 5 different ones.
STRONG_KEY = secrets.token_urlsafe(50)
PRODUCTION_ENV = {"SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "places.example.org"}


def _load(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        env={**BASE_ENV, "DJANGO_SETTINGS_MODULE": module, **env},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_secret_key():
    result = _load("config.settings.production", ALLOWED_HOSTS="places.example.org")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_refuses_to_start_with_debug_on():
    result = _load(
        "config.settings.production",
        SECRET_KEY=STRONG_KEY,
        DEBUG="true",
        ALLOWED_HOSTS="places.example.org",
    )
    assert result.returncode != 0
    assert "DEBUG" in result.stderr


@pytest.mark.slow  # a new Python process with Django
def test_production_starts_when_configured(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(STRONG_KEY)
    result = _load(
        "config.settings.production",
        SECRET_KEY_FILE=str(secret),
        ALLOWED_HOSTS="places.example.org",
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


@pytest.mark.slow  # a new Python process with Django
@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("too-short-for-signing", "21 characters, fewer than 50"),
        ("django-insecure-" + "a1b2c3d4e5" * 5, "starts with 'django-insecure'"),
        ("ab" * 30, "2 different characters, fewer than 5"),
    ],
)
def test_production_refuses_a_weak_secret_key(key, reason):
    result = _load("config.settings.production", SECRET_KEY=key, ALLOWED_HOSTS="places.example.org")
    assert result.returncode != 0
    assert "SECRET_KEY is too weak for production" in result.stderr
    assert reason in result.stderr
    assert key not in result.stderr  # the error names the rule, never the secret


@pytest.mark.slow  # a new Python process with Django
@pytest.mark.parametrize("hosts", ["*", "places.example.org,*"])
def test_production_refuses_any_host(hosts):
    result = _load("config.settings.production", SECRET_KEY=STRONG_KEY, ALLOWED_HOSTS=hosts)
    assert result.returncode != 0
    assert "ALLOWED_HOSTS=* is refused in production" in result.stderr


@pytest.mark.slow  # a new Python process with Django
def test_production_passes_the_deploy_checks_without_a_warning():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={**BASE_ENV, "DJANGO_SETTINGS_MODULE": "config.settings.production", **PRODUCTION_ENV},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues (0 silenced)" in result.stdout


@pytest.mark.slow  # a new Python process with Django
def test_production_sends_hsts_for_a_year_with_subdomains_and_preload():
    probe = (
        "import django; django.setup(); from django.test import Client; "
        "r = Client().get('/health/live/', secure=True, headers={'host': 'places.example.org'}); "
        "print(r.headers['Strict-Transport-Security'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**BASE_ENV, "DJANGO_SETTINGS_MODULE": "config.settings.production", **PRODUCTION_ENV},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "max-age=31536000; includeSubDomains; preload"


@pytest.mark.slow  # a new Python process with Django
def test_development_needs_no_variables():
    result = _load("config.settings.local")
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_app_connections_run_with_jit_off():
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"


@pytest.mark.django_db(databases=["default", "replica"])
def test_app_connections_plan_parallel_query_only_for_big_queries():
    # Many short map queries at once: parallel workers would compete with other requests.
    from django.db import connections

    for alias in ("default", "replica"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SHOW parallel_setup_cost")
            assert cursor.fetchone()[0] == "50000"
            cursor.execute("SHOW max_parallel_workers_per_gather")
            assert cursor.fetchone()[0] == "2"


@pytest.mark.django_db(databases=["default", "replica"])
def test_replica_alias_is_read_only():
    from django.db import connections
    from django.db.utils import InternalError

    with connections["replica"].cursor() as cursor:
        cursor.execute("SHOW default_transaction_read_only")
        assert cursor.fetchone()[0] == "on"
        with pytest.raises(InternalError, match="read-only"):
            cursor.execute("CREATE TEMP TABLE should_fail (id int)")


def test_geodjango_uses_a_current_gdal():
    from django.contrib.gis.gdal import GDAL_VERSION

    assert GDAL_VERSION >= (3, 9)


@pytest.mark.slow
def test_production_static_files_collect_with_the_manifest_storage(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        env={
            **BASE_ENV,
            "DJANGO_SETTINGS_MODULE": "config.settings.production",
            **PRODUCTION_ENV,
            "STATIC_ROOT": str(tmp_path),
        },
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "staticfiles.json").exists()
    assert list(tmp_path.glob("vendor/ol/ol.*.js"))


@pytest.mark.slow
def test_sentry_is_off_without_dsn_and_sends_no_personal_data_with_one():
    probe = (
        "import django, sentry_sdk; django.setup(); c = sentry_sdk.get_client(); "
        "print(c.is_active(), c.options.get('send_default_pii'), "
        "sorted(c.integrations) if c.is_active() else [])"
    )
    without = subprocess.run(
        [sys.executable, "-c", probe],
        env={**BASE_ENV, "DJANGO_SETTINGS_MODULE": "config.settings.local", "SENTRY_DSN": ""},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert without.stdout.startswith("False"), without.stderr
    with_dsn = subprocess.run(
        [sys.executable, "-c", probe],
        env={
            **BASE_ENV,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "SENTRY_DSN": "https://public@sentry.invalid/1",
        },
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert with_dsn.stdout.startswith("True False"), with_dsn.stderr
    assert "celery" in with_dsn.stdout
    assert "django" in with_dsn.stdout


@pytest.mark.slow  # a new Python process with Django
def test_production_reads_pooler_and_key_rotation_settings():
    # given production settings as make prod gives its web (behind PgBouncer's transaction
    # pool) during a SECRET_KEY rotation
    old_key = secrets.token_urlsafe(50)
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS'], s.SECRET_KEY_FALLBACKS)"
    )

    def run(**env: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={**BASE_ENV, "DJANGO_SETTINGS_MODULE": "config.settings.production",
                 **PRODUCTION_ENV, **env},
            cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # when they are set, then no server-side cursors and the old key kept as a fallback
    assert run(DB_DISABLE_SERVER_SIDE_CURSORS="true", SECRET_KEY_FALLBACKS=old_key) == (
        f"True ['{old_key}']"
    )
    # and without them, server-side cursors and no fallback
    assert run() == "False []"
