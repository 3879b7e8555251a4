"""Migrations build the schema from nothing, reverse to nothing, and match the models."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command


@pytest.fixture
def empty_database() -> str:
    name = f"places_migrations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True
    ) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": f"postgis://postgres@127.0.0.1:5432/{database}",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_migrations_apply_from_zero_and_reverse(empty_database):
    forward = _manage(empty_database, "migrate", "--noinput")
    assert forward.returncode == 0, forward.stderr
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=empty_database) as conn:
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'places_placeattribute'::regclass"
        ).fetchone()[0]
        assert partitions > 10
    backward = _manage(empty_database, "migrate", "places", "zero", "--noinput")
    assert backward.returncode == 0, backward.stderr


@pytest.mark.django_db
def test_models_and_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
