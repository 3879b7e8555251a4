"""Reads about a selection of places: its versions, its size, its extents and datasets, all
inside one read snapshot of the source the file is built from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from django.db import connections, transaction

from places import selectors as places_selectors
from places.geo import BBox
from places.serving.query import PlaceQuery, dataset_ids_of

SELECTION_FACTS = """
SELECT count(*),
       ST_XMin(ST_Extent(p.location)), ST_YMin(ST_Extent(p.location)),
       ST_XMax(ST_Extent(p.location)), ST_YMax(ST_Extent(p.location)),
       ST_XMin(ST_Extent(p.footprint)), ST_YMin(ST_Extent(p.footprint)),
       ST_XMax(ST_Extent(p.footprint)), ST_YMax(ST_Extent(p.footprint)),
       coalesce(array_agg(DISTINCT p.dataset_id), '{}')
FROM places_place p WHERE {where}
"""
DATASETS = """
SELECT slug, name, licence, attribution, source_url
FROM places_dataset WHERE id = ANY(%(ids)s) ORDER BY slug
"""


def where_in(sql: str, where: str) -> str:
    # Not str.format: the CSV cells hold braces of their own (``#>> '{}'``).
    return sql.replace("{where}", where)


@dataclass(frozen=True)
class Selection:
    """A ``PlaceQuery`` in JSON primitives, so a task can take it and a job can store it."""

    query: PlaceQuery

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for f in fields(self.query):
            value = getattr(self.query, f.name)
            if isinstance(value, BBox):
                value = [value.min_lon, value.min_lat, value.max_lon, value.max_lat]
            elif isinstance(value, datetime):
                value = value.isoformat()
            found[f.name] = value
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        values = dict(data)
        if values.get("bbox") is not None:
            values["bbox"] = BBox(*values["bbox"])
        if values.get("updated_since") is not None:
            values["updated_since"] = datetime.fromisoformat(values["updated_since"])
        # Jobs stored before several datasets could be asked for hold one ``dataset_id``.
        if "dataset_id" in values:
            values["dataset_ids"] = dataset_ids_of(values.pop("dataset_id"))
        if values.get("dataset_ids") is not None:
            values["dataset_ids"] = tuple(values["dataset_ids"])
        return cls(query=PlaceQuery(**values))

    def key(self) -> str:
        """Names the selection in the job's natural key (``PlaceQuery.key``: its filters)."""
        return self.query.key()


def selection_versions(*, query: PlaceQuery, using: str) -> tuple[str, str]:
    """The data and region versions a file of ``query`` shows, as ``using`` sees them: the
    places of its datasets (all when none) inside its box, and every region (each row names
    its country and region)."""
    data = places_selectors.data_version(
        dataset_ids=list(query.dataset_ids) if query.dataset_ids is not None else None,
        bbox=query.bbox,
        using=using,
    )
    return data, places_selectors.region_version(using=using)


def selection_count_capped(*, query: PlaceQuery, cap: int, using: str = "default") -> int:
    """How many places ``query`` matches, counted up to ``cap + 1`` at most: enough to tell
    a selection that is written at once from one that needs a task, at the cost of ``cap``
    rows, never of the whole selection."""
    where, params = query.where()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM places_place p WHERE {where} "  # nosec B608 # WHERE from PlaceQuery; values bound
            "LIMIT %(cap_plus_one)s) AS capped",
            {**params, "cap_plus_one": cap + 1},
        )
        return int(cursor.fetchone()[0])


@dataclass(frozen=True)
class SelectionFacts:
    rows: int
    bbox: list[float] | None  # of the points; None when the selection is empty
    footprint_bbox: list[float] | None  # None when no place in it has a footprint
    datasets: list[dict[str, str]]  # slug, name, licence, attribution, source_url


def selection_facts(*, query: PlaceQuery, using: str) -> SelectionFacts:
    """What the file says about itself, in one pass over the selection: its size, the
    extents of its two geometry columns and the datasets it draws on."""
    where, params = query.where()
    with connections[using].cursor() as cursor:
        cursor.execute(where_in(SELECTION_FACTS, where), params)
        rows, *extents, dataset_ids = cursor.fetchone()
        cursor.execute(DATASETS, {"ids": list(dataset_ids)})
        names = ("slug", "name", "licence", "attribution", "source_url")
        datasets = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    points, footprints = extents[:4], extents[4:]
    return SelectionFacts(
        rows=int(rows),
        bbox=[float(v) for v in points] if points[0] is not None else None,
        footprint_bbox=[float(v) for v in footprints] if footprints[0] is not None else None,
        datasets=datasets,
    )


@contextmanager
def read_snapshot(using: str) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction on ``using``, so the versions, the facts and
    every row are read as of one moment. Inside a transaction already open (a test's) that
    one is used as it is."""
    connection = connections[using]
    opened = not connection.in_atomic_block
    with transaction.atomic(using=using):
        if opened:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
