"""One set of place filters for every read path: the list API, the viewport and the tiles.

``PlaceQuery`` holds validated filter values and turns them into one SQL condition on the
alias ``p`` (``places_place``) with named parameters, so that the three endpoints can never
disagree about which places a filter means. The box test is exact (a place's point lies in
the box, edges included, as ``ST_Intersects`` says) and answered from the GiST index on
``location``; a box that crosses the antimeridian becomes two.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from places.geo import BBox
from places.models import PlaceStatus

# Every read path (the list, the viewport, the tiles) shows active places unless the request
# names a status; ``any`` asks for every status at once (incremental sync sees retirements).
DEFAULT_STATUS = PlaceStatus.ACTIVE.value
ANY_STATUS = "any"
STATUS_CHOICES = [*PlaceStatus.choices, (ANY_STATUS, "Any status")]


# Name search, the rule of places.selectors.place_name_search (case and accents ignored), as
# SQL on ``p``: the expression its trigram index place_name_unaccent_trgm holds, LIKE the
# text anywhere. LIKE's wildcards are escaped after unaccenting, as Django's ``contains``
# does: unaccent folds full-width ％ ＿ ＼ into % _ \, which escaped first would be wildcards.
NAME_CONTAINS = (
    "UPPER(places_unaccent(p.name)) LIKE '%%' || replace(replace(replace("
    "UPPER(places_unaccent(%(q)s)), '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%'"
)


def dataset_ids_of(dataset_id: int | None) -> tuple[int, ...] | None:
    """The ``dataset_ids`` filter for one dataset, or for all of them when None."""
    return None if dataset_id is None else (dataset_id,)


def bbox_condition(geometry: str, bbox: BBox) -> tuple[str, dict[str, Any]]:
    """``geometry`` (an SQL expression) meets the box, exactly and through its GiST index;
    a box across the antimeridian is tested as its two parts. Parameters ``bx0_0`` …"""
    parts, params = [], {}
    for i, (x0, y0, x1, y1) in enumerate(bbox.parts()):
        parts.append(
            f"ST_Intersects({geometry}, ST_MakeEnvelope("
            f"%(bx0_{i})s, %(by0_{i})s, %(bx1_{i})s, %(by1_{i})s, 4326))"
        )
        params.update({f"bx0_{i}": x0, f"by0_{i}": y0, f"bx1_{i}": x1, f"by1_{i}": y1})
    return "(" + " OR ".join(parts) + ")", params


def point_in_bbox_condition(point: str, bbox: BBox) -> tuple[str, dict[str, Any]]:
    """``point`` (an SQL expression of a point column) lies in the box, edges included: the
    places ``bbox_condition`` finds, found for two thirds of its cost (issue 14: the 100K
    box's places counted in 33 against 49 ms, the densest view 24 % faster;
    tests/benchmarks/results/session-2026-12-05.md, ab-point-in-box.md).

    ``&&`` picks the candidates from the GiST index, but compares boxes rounded outwards to
    single precision, so it also admits points a metre or so outside the box (a few metres
    near ±180°); comparing the coordinates in double precision then keeps exactly those
    ``ST_Intersects`` keeps (a point on an edge intersects the box), without its geometry
    machinery per row.

    The comparison is written as ``CASE … END <> 0`` for the planner: it takes that for
    true of 99.5 % of rows, so the estimate stays the GiST statistics' estimate of ``&&``, as
    with ``ST_Intersects``. Written as two ``BETWEEN``, it was estimated as true of one row
    in 40,000, and a ``CASE`` alone of half the rows; the places list's ``numberMatched``
    (above the exact limit) and the plans' sizes follow that estimate. Same parameters as
    ``bbox_condition``."""
    parts, params = [], {}
    for i, (x0, y0, x1, y1) in enumerate(bbox.parts()):
        parts.append(
            f"({point} && ST_MakeEnvelope("
            f"%(bx0_{i})s, %(by0_{i})s, %(bx1_{i})s, %(by1_{i})s, 4326)"
            f" AND CASE WHEN ST_X({point}) BETWEEN %(bx0_{i})s AND %(bx1_{i})s"
            f" AND ST_Y({point}) BETWEEN %(by0_{i})s AND %(by1_{i})s THEN 1 ELSE 0 END <> 0)"
        )
        params.update({f"bx0_{i}": x0, f"by0_{i}": y0, f"bx1_{i}": x1, f"by1_{i}": y1})
    return "(" + " OR ".join(parts) + ")", params


@dataclass(frozen=True)
class PlaceQuery:
    """Validated filters; ``status=None`` means places of any status, ``dataset_ids=None``
    places of every dataset.

    ``dataset_ids`` is kept sorted and without repeats, whatever order it was given in: the
    same set of datasets is the same query, with the same cache key.
    """

    bbox: BBox | None = None
    religion: str | None = None
    denomination: str | None = None
    dataset_ids: tuple[int, ...] | None = None
    country_id: int | None = None
    region_id: int | None = None
    status: str | None = DEFAULT_STATUS
    updated_since: datetime | None = None
    q: str | None = None

    def __post_init__(self) -> None:
        if self.dataset_ids is not None:
            # Frozen: the normal form is set once, here.
            object.__setattr__(self, "dataset_ids", tuple(sorted(set(self.dataset_ids))))

    def where(self, *, box: bool = True) -> tuple[str, dict[str, Any]]:
        """The condition on ``p`` and its parameters; ``box=False`` leaves the bbox to the
        caller (tiles test their own envelope)."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if box and self.bbox is not None:
            clause, box_params = point_in_bbox_condition("p.location", self.bbox)
            clauses.append(clause)
            params.update(box_params)
        simple = {
            "religion": "p.religion = %(religion)s",
            "country_id": "p.country_id = %(country_id)s",
            "region_id": "p.region_id = %(region_id)s",
            "status": "p.status = %(status)s",
            "updated_since": "p.updated_at >= %(updated_since)s",
        }
        for name, clause in simple.items():
            value = getattr(self, name)
            if value is not None:
                clauses.append(clause)
                params[name] = value
        if self.dataset_ids is not None:
            # One dataset keeps the plain equality of the hot single-dataset path; several
            # are one array parameter, so the statement is the same for any number of them.
            if len(self.dataset_ids) == 1:
                clauses.append("p.dataset_id = %(dataset_id)s")
                params["dataset_id"] = self.dataset_ids[0]
            else:
                clauses.append("p.dataset_id = ANY(%(dataset_ids)s)")
                params["dataset_ids"] = list(self.dataset_ids)
        if self.denomination is not None:
            clauses.append("p.denominations @> ARRAY[%(denomination)s]::text[]")
            params["denomination"] = self.denomination
        if self.q:
            clauses.append(NAME_CONTAINS)
            params["q"] = self.q
        return " AND ".join(clauses) or "true", params

    def key(self) -> str:
        """A short, stable text naming these filters, for cache keys."""
        # Worked out once per instance: validated filters are remembered per process
        # (places.serving.params) and asked for their key on every cached answer.
        known = self.__dict__.get("_key")
        if known is None:
            text = "|".join(f"{f.name}={getattr(self, f.name)!s}" for f in fields(self))
            if self.q is not None:
                # `q` ignores accents since 2026-12-04: answers cached under its old
                # meaning (case only) are not served for the new one.
                text += "|q:accents"
            known = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:20]
            self.__dict__["_key"] = known  # frozen: past the dataclass's __setattr__
        return known
