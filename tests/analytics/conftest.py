"""Fixtures of the analytics tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from config.routers import REPLICA


@pytest.fixture
def replica_caught_up() -> Iterator[None]:
    """The replica alias reads through the primary's connection, as a replica that has
    replayed everything would (the test's own transaction is never committed, so a second
    connection could not see it)."""
    replica = connections[REPLICA]
    connections[REPLICA] = connections["default"]
    try:
        yield
    finally:
        connections[REPLICA] = replica
