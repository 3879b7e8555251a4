"""Migrations build the schema from nothing, reverse to nothing, and match the models."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from tests.db import database_kwargs, database_url

OUR_APPS = {"places", "ingestion", "analytics"}


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"places_migrations_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**database_kwargs(dbname="postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(**database_kwargs(dbname="postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": database_url(dbname=database),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_migrations_apply_from_zero_and_reverse(empty_database):
    forward = _manage(empty_database, "migrate", "--noinput")
    assert forward.returncode == 0, forward.stderr
    with psycopg.connect(**database_kwargs(dbname=empty_database)) as conn:
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'places_placeattribute'::regclass"
        ).fetchone()[0]
        assert partitions > 10
    backward = _manage(empty_database, "migrate", "places", "zero", "--noinput")
    assert backward.returncode == 0, backward.stderr


@pytest.mark.django_db
def test_models_and_migrations_agree():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def _app_dependencies() -> set[tuple[str, str]]:
    """(app, app it depends on) for every migration of ours that depends on another app's."""
    graph = MigrationLoader(connection, ignore_no_migrations=True).graph
    return {
        (child[0], parent[0])
        for child, node in graph.node_map.items()
        if child[0] in OUR_APPS
        for parent in (p.key for p in node.parents)
        if parent[0] != child[0] and parent[0] in OUR_APPS
    }


@pytest.mark.django_db
def test_no_two_apps_migrations_depend_on_each_other():
    # given the migration graph as Django loads it
    dependencies = _app_dependencies()

    # then ingestion builds on places, and no pair of apps depends both ways
    assert ("ingestion", "places") in dependencies
    both_ways = {tuple(sorted(pair)) for pair in dependencies if pair[::-1] in dependencies}
    assert not both_ways, f"migrations depend on each other both ways: {both_ways}"
