"""Nodes, keys and readings for the edge tests, made through the real services."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json

from django.contrib.gis.geos import MultiPolygon, Polygon

from ingestion.edge.models import EdgeNode
from ingestion.edge.services import batches
from ingestion.edge.services.batches import BatchOutcome, ReadingIn, SensorDeclaration
from ingestion.edge.services.keys import edge_node_create
from places.models import Region

_numbers = itertools.count(1)


def region_make(code: str | None = None, *, code_system: str = "edge-test") -> Region:
    code = code or f"E{next(_numbers):05d}"
    return Region.objects.create(
        name=f"Region {code}",
        level="district",
        code=code,
        code_system=code_system,
        geom=MultiPolygon(Polygon.from_bbox((-3, 57, -2, 58))),
    )


def node_make(name: str | None = None, *, region: Region | None = None) -> EdgeNode:
    return edge_node_create(name=name or f"node-{next(_numbers)}", region=region or region_make())


def reading(
    index: int, sensor: str, time: dt.datetime, value: float = 12.3, parameter: str = "pm10"
) -> ReadingIn:
    return ReadingIn(index=index, sensor=sensor, parameter=parameter, time=time, value=value)


def declare(external_id: str, kind: str = "SDS011") -> SensorDeclaration:
    return SensorDeclaration(external_id=external_id, kind=kind, lon=-2.09, lat=57.15)


def ingest(
    node: EdgeNode,
    readings: list[ReadingIn],
    *,
    key: str | None = None,
    sensors: list[SensorDeclaration] | None = None,
    item_errors: list[batches.ItemError] | None = None,
    body: str | None = None,
) -> BatchOutcome:
    """One batch; the body's hash stands for what a client would send (the readings)."""
    body = body if body is not None else json.dumps([repr(r) for r in readings])
    return batches.observation_batch_ingest(
        node=node,
        idempotency_key=key or f"k-{next(_numbers)}",
        body_sha256=hashlib.sha256(body.encode()).hexdigest(),
        sensors=sensors or [],
        readings=readings,
        item_errors=item_errors or [],
    )
