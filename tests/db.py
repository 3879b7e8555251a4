"""Addresses of the services tests talk to, read from settings, never written into a test.

Tests that open their own PostgreSQL session (a second writer, a fresh database, a worker
process) build it from ``settings.DATABASES`` here, so the suite runs against whatever
``DATABASE_URL`` points at.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import psycopg
from django.conf import settings


def database_kwargs(*, dbname: str | None = None, alias: str = "default") -> dict[str, Any]:
    """psycopg.connect() keyword arguments for the alias's server, to its database or another.

    Under pytest-django the alias's NAME is the test database once it is set up.
    """
    database = settings.DATABASES[alias]
    kwargs = {
        "host": database.get("HOST"),
        "port": database.get("PORT"),
        "user": database.get("USER"),
        "password": database.get("PASSWORD"),
        "dbname": dbname or database["NAME"],
    }
    return {key: value for key, value in kwargs.items() if value not in ("", None)}


def database_url(*, dbname: str | None = None, alias: str = "default") -> str:
    """A DATABASE_URL for a child process: the alias's server, its database or another."""
    database = settings.DATABASES[alias]
    user = quote(database.get("USER") or "", safe="")
    password = database.get("PASSWORD")
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    host = database.get("HOST") or ""
    port = f":{database['PORT']}" if database.get("PORT") else ""
    at = "@" if credentials else ""
    return f"postgis://{credentials}{at}{host}{port}/{dbname or database['NAME']}"


def replica_caught_up(*, timeout: float = 30.0) -> None:
    """Wait until the streaming replica (when REPLICA_DATABASE_URL is set) has replayed all
    the primary has written so far: data a session fixture committed is then there for the
    tests that read it through the replica alias."""
    if not settings.REPLICA_DATABASE_URL:
        return
    with psycopg.connect(**database_kwargs(), autocommit=True) as primary:
        lsn = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with psycopg.connect(**database_kwargs(alias="replica"), autocommit=True) as replica:
        deadline = time.monotonic() + timeout
        while not replica.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [str(lsn)]
        ).fetchone()[0]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica had not replayed {lsn} after {timeout} s")
            time.sleep(0.02)
