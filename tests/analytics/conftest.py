"""Fixtures of the analytics tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.db import connections

from config.routers import REPLICA
from ingestion.edge.services.batches import SensorDeclaration
from places.models import Region
from tests.ingestion.edge.factories import ingest, node_make, reading

DAY = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


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


@pytest.fixture
def sensors(gb_import, replica_caught_up) -> dict:
    """Two PM2.5 sensors in Westminster, every 10 minutes through one day; the first misses
    half of its 09:00 hour."""
    westminster = Region.objects.get(code="E09000033")
    spot = westminster.geom.point_on_surface
    node = node_make(region=westminster)
    declared = [
        SensorDeclaration(external_id=f"aq-{n}", kind="SDS011", lon=spot.x + n * 1e-3, lat=spot.y)
        for n in (1, 2)
    ]
    values: dict[str, list[tuple[dt.datetime, float]]] = {"aq-1": [], "aq-2": []}
    items = []
    for step in range(144):
        time = DAY + dt.timedelta(minutes=10 * step)
        for n, name in enumerate(values):
            if name == "aq-1" and time.hour == 9 and time.minute >= 30:
                continue
            value = float((step * 7 + n * 13) % 40) + 0.5
            values[name].append((time, value))
            items.append(reading(len(items), name, time, value=value, parameter="pm2_5"))
    ingest(node, items, sensors=declared)
    return {"values": values, "westminster": westminster, "spot": spot}
