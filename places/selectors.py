"""Reads of places, regions, datasets and the change log."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django.core.paginator import Page, Paginator
from django.db import connection, connections
from django.db.models import Exists, Func, Model, OuterRef, Q, QuerySet, TextField, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Upper
from django.utils.text import smart_split, unescape_string_literal

from places import version_watch
from places.geo import BBox
from places.locate import LOCATE_POINT
from places.models import AREA_CELL_DEGREES, Dataset, Place, PlaceChange, Region


class _Unaccent(Func):
    # places_unaccent (migration 0023): unaccent() made IMMUTABLE, so an index can use it.
    function = "places_unaccent"
    output_field = TextField()


def place_name_search(queryset: QuerySet[Place], term: str) -> QuerySet[Place]:
    """Places whose name holds every word of ``term``, case and accents ignored ("sao
    paulo" finds "São Paulo"): LIKE on the upper-cased, unaccented name, which the trigram
    index of migration 0023 answers. Both sides are unaccented by PostgreSQL, so the rules
    are its own; Django escapes the word's % and _."""
    queryset = queryset.alias(_search_name=Upper(_Unaccent("name")))
    for word in smart_split(term):
        if word[:1] in {'"', "'"} and word[-1:] == word[:1]:
            word = unescape_string_literal(word)
        if word:
            queryset = queryset.filter(_search_name__contains=Upper(_Unaccent(Value(word))))
    return queryset


def place_detail_queryset() -> QuerySet[Place]:
    """Places with everything a detail view shows (footprint included, boundaries not)."""
    return Place.objects.select_related("dataset", "country", "region").defer(
        "country__geom", "region__geom"
    )


def regions_for_point(*, lon: float, lat: float) -> tuple[int | None, int | None]:
    """(region id, country id) holding a point: the one point-in-polygon rule
    (``places.locate``), as imports and region maintenance apply it to sets of points."""
    with connection.cursor() as cursor:
        cursor.execute(LOCATE_POINT, {"lon": lon, "lat": lat})
        _sid, _geom, region_id, country_id = cursor.fetchone()
    return region_id, country_id


def region_list(*, level: str | None = None, code: str | None = None) -> QuerySet[Region]:
    qs = Region.objects.select_related("parent").defer("geom", "parent__geom")
    if level:
        qs = qs.filter(level=level)
    if code:
        qs = qs.filter(code=code)
    # The id breaks ties between namesakes, so offset pages neither repeat nor skip one.
    return qs.order_by("level", "name", "id")


def region_detail_queryset() -> QuerySet[Region]:
    """Regions with their boundary and their parent's summary (not the parent's boundary)."""
    return Region.objects.select_related("parent").defer("parent__geom")


def dataset_list() -> QuerySet[Dataset]:
    return Dataset.objects.order_by("slug")


def dataset_list_with_places() -> QuerySet[Dataset]:
    """Datasets that hold places (of any status), by slug: the map's layers. Datasets of
    regions alone are left out, as switching them would change nothing there."""
    return dataset_list().filter(Exists(Place.objects.filter(dataset_id=OuterRef("pk"))))


def dataset_attributions(*, dataset_ids: Sequence[int] | None = None) -> list[str]:
    """The datasets' attribution texts that are not empty (every dataset's when
    ``dataset_ids`` is None), each once, sorted."""
    datasets = Dataset.objects.exclude(attribution="")
    if dataset_ids is not None:
        datasets = datasets.filter(pk__in=dataset_ids)
    return sorted(set(datasets.values_list("attribution", flat=True)))


def query_row_estimate(
    *, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None, using: str = "default"
) -> int:
    """The planner's estimate of the rows ``sql`` returns (``EXPLAIN``, nothing is run).

    Costs a plan, not a scan: the one way large counts are estimated (the places list's
    ``numberMatched``, the admin's changelist counts). Only as good as the statistics.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    # Django's psycopg setup may hand json back as text.
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def table_row_estimate(*, model: type[Model]) -> int:
    """Planner's row estimate for a table: instant, unlike COUNT(*) on millions of rows.

    A table never analysed has no estimate (-1); it is then counted exactly.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [model._meta.db_table],
        )
        row = cursor.fetchone()
    if row is None or row[0] < 0:
        return model._default_manager.count()
    return int(row[0])


@dataclass(frozen=True)
class FeedCursor:
    xact_id: int
    seq: int

    def __str__(self) -> str:
        return f"{self.xact_id}.{self.seq}"

    @classmethod
    def parse(cls, text: str) -> FeedCursor:
        xact, _, seq = text.partition(".")
        return cls(int(xact), int(seq))


def place_change_feed(
    *, after: FeedCursor | None = None, limit: int = 1000, dataset_id: int | None = None
) -> tuple[list[PlaceChange], FeedCursor | None]:
    """Changes after ``after``, in a stable order no later commit can insert into.

    Only changes written by transactions older than every transaction still open are handed
    out (``xact_id < pg_snapshot_xmin``). A change that appears later therefore always sorts
    after any cursor already given out, so a reader that follows the cursor misses nothing
    and sees nothing twice. Returns the page and the cursor to resume from.
    """
    qs = PlaceChange.objects.filter(
        xact_id__lt=RawSQL("pg_snapshot_xmin(pg_current_snapshot())::text::bigint", [])
    )
    if after is not None:
        qs = qs.filter(Q(xact_id__gt=after.xact_id) | Q(xact_id=after.xact_id, seq__gt=after.seq))
    if dataset_id is not None:
        qs = qs.filter(dataset_id=dataset_id)
    page = list(qs.order_by("xact_id", "seq")[:limit])
    cursor = FeedCursor(page[-1].xact_id, page[-1].seq) if page else after
    return page, cursor


MAX_AREA_CELLS = 64


def area_cells(bbox: BBox) -> list[int] | None:
    """The version cells a box touches (``AreaVersion``); None when there are more than
    ``MAX_AREA_CELLS`` and the dataset-wide version is the cheaper key."""
    cells: list[int] = []
    for x0, y0, x1, y1 in bbox.parts():
        columns = range(_cell_index(x0 + 180, 255), _cell_index(x1 + 180, 255) + 1)
        rows = range(_cell_index(y0 + 90, 127), _cell_index(y1 + 90, 127) + 1)
        if len(cells) + len(columns) * len(rows) > MAX_AREA_CELLS:
            return None
        cells += [row * 256 + column for row in rows for column in columns]
    return sorted(set(cells))


def _cell_index(offset: float, last: int) -> int:
    # Same arithmetic as the SQL function places_area_cell (migration 0011).
    return min(last, max(0, math.floor(offset / AREA_CELL_DEGREES)))


def data_version(
    *, dataset_ids: list[int] | None = None, bbox: BBox | None = None, using: str = "default"
) -> str:
    """A short token that changes with every commit that changed the datasets' places
    (inside ``bbox``, when given and small enough: see ``area_cells``).

    For several datasets it hashes every (dataset, version) pair rather than taking the
    largest: a slower commit can hold a lower number than one already visible. Versions move
    at commit; the pending marks of the caller's own open transaction count too, so a
    transaction that wrote sees its own change. Read it ``using`` the connection that will
    read the data, so a lagging replica's answer is keyed on the replica's version.

    In a web process, outside a transaction, a version read once is remembered until
    PostgreSQL tells of a commit that moves versions (``places.version_watch``).
    """
    cells = area_cells(bbox) if bbox is not None else None
    if (
        using == "default"
        and version_watch.enabled()
        and connection.get_autocommit()
        and not connection.in_atomic_block
    ):
        # Outside a transaction there are no own pending writes to see: the version read
        # since the last commit anywhere is still the version (places.version_watch).
        key = (
            tuple(dataset_ids) if dataset_ids is not None else None,
            tuple(cells) if cells is not None else None,
        )
        return version_watch.WATCH.version(
            key, lambda: _data_version_read(dataset_ids=dataset_ids, cells=cells, using=using)
        )
    return _data_version_read(dataset_ids=dataset_ids, cells=cells, using=using)


def _data_version_read(
    *, dataset_ids: list[int] | None, cells: list[int] | None, using: str
) -> str:
    clauses, params = [], []
    if dataset_ids is not None:
        clauses.append("dataset_id = ANY(%s)")
        params.append(dataset_ids)
    if cells is None:
        sql = (
            "SELECT dataset_id, version::text FROM places_dataversion {where} "
            "UNION ALL SELECT dataset_id, 'pending:' || xact || ':' || marks "
            "FROM places_dataversion_pending {pending} "
            "ORDER BY 1, 2"
        )
    else:
        clauses.append("cell = ANY(%s)")
        params.append(cells)
        sql = (
            "SELECT dataset_id, cell || ':' || version FROM places_areaversion {where} "
            "UNION ALL SELECT dataset_id, cell || ':pending:' || xact || ':' || marks "
            "FROM places_areaversion_pending {pending} "
            "ORDER BY 1, 2"
        )
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    # Pending marks are deleted by the commit that wrote them, so the only ones any reader
    # can see are its own transaction's: asking for them by transaction id is the same
    # answer, read from the primary key instead of a scan of a table every write churns
    # (a scan of its dead rows took 20 ms after a big import, longer than a cached answer).
    pending = " AND ".join(["xact = txid_current_if_assigned()", *clauses])
    with connections[using].cursor() as cursor:
        cursor.execute(sql.format(where=where, pending="WHERE " + pending), params * 2)
        pairs = ",".join(f"{d}:{v}" for d, v in cursor.fetchall())
    scope = "area" if cells is not None else "all"
    return hashlib.sha1(f"{scope}|{pairs}".encode(), usedforsecurity=False).hexdigest()[:16]


# Region writes go through places.services.regions, which moves updated_at (clock time)
# under one advisory lock: the latest updated_at therefore belongs to the last commit.
# Counts and top ids catch inserts and deletes, of regions and of their pieces alike.
REGION_VERSION = """
SELECT md5(concat_ws('|', r.n, r.top, r.last, p.n, p.top))
FROM (SELECT count(*) AS n, max(id) AS top, max(updated_at) AS last FROM places_region) r,
     (SELECT count(*) AS n, max(id) AS top FROM places_regionpart) p
"""


def region_version(*, using: str = "default") -> str:
    """A short text that changes whenever a region is added, removed or rewritten (name,
    figures, boundary, parent) or its pieces change, and only then.

    It keys the caches of the region tiles, the region list and the region statistics and,
    in every imported row's fingerprint, tells a re-import whether point in polygon may give
    another answer than last time.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(REGION_VERSION)
        return cursor.fetchone()[0][:16]


# --- The public map and place page -------------------------------------------------------

PLACE_DENOMINATIONS = """
SELECT d FROM places_place, unnest(denominations) AS d
WHERE status = 'active'
GROUP BY d ORDER BY count(*) DESC, d LIMIT %s
"""

# Nearest first by the GiST index (KNN on the planar distance), then measured on the sphere.
PLACES_NEARBY = """
SELECT id, ST_DistanceSphere(location, %(point)s) AS metres
FROM places_place
WHERE status = 'active' AND id <> %(id)s
ORDER BY location <-> %(point)s
LIMIT %(limit)s
"""

# What the public change history shows of a change: the field, and its old and new values
# only for the fields the public API shows anyway (free tags and source values are named).
PUBLIC_CHANGE_FIELDS = frozenset(
    {
        "name",
        "religion",
        "denominations",
        "location",
        "status",
        "start_date",
        "end_date",
        "start_date_raw",
        "end_date_raw",
        "merged_into_id",
        "country_id",
        "region_id",
    }
)


def _public_value(value: Any) -> Any:
    """A logged value as a reader takes it: a point as latitude, longitude, lists joined."""
    if isinstance(value, dict) and value.get("type") == "Point":
        lon, lat = value["coordinates"][:2]
        return f"{lat:.5f}, {lon:.5f}"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return value


DENOMINATIONS_CACHE_SECONDS = 600


def place_denominations(*, limit: int = 200) -> list[str]:
    """The most common normalised denominations of active places, most common first; kept
    in the cache for ten minutes (it reads every place, and the map page asks on each load
    for the suggestions of its denomination box, which may lag that long)."""

    def read() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute(PLACE_DENOMINATIONS, [limit])
            return [row[0] for row in cursor.fetchall()]

    found = cache.get_or_set(f"map:denominations:{limit}", read, DENOMINATIONS_CACHE_SECONDS)
    return list(found or [])


def place_public_get(*, place_id: int) -> Place | None:
    """One place with its dataset, country and region, or None."""
    return place_detail_queryset().filter(pk=place_id).first()


@dataclass(frozen=True)
class NearbyPlace:
    place: Place
    metres: float

    @property
    def distance(self) -> str:
        """Metres below a kilometre, else kilometres to one decimal."""
        return f"{self.metres:.0f} m" if self.metres < 1000 else f"{self.metres / 1000:.1f} km"


def place_nearby_list(*, place: Place, limit: int = 10) -> list[NearbyPlace]:
    """The ``limit`` active places nearest to ``place`` (itself excluded), nearest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            PLACES_NEARBY, {"point": place.location.ewkt, "id": place.pk, "limit": limit}
        )
        rows = cursor.fetchall()
    found = Place.objects.select_related("dataset").in_bulk([row[0] for row in rows])
    return [NearbyPlace(place=found[pk], metres=metres) for pk, metres in rows if pk in found]


@dataclass(frozen=True)
class PublicChange:
    at: Any
    operation: str
    source: str
    place_version: int
    fields: list[tuple[str, Any, Any, bool]]  # name, old, new, values shown


def place_public_history(*, place: Place, limit: int = 50) -> list[PublicChange]:
    """The place's changes, newest first, without who made them (user, device, import job):
    what changed and when, the values only for fields the public API shows."""
    changes = PlaceChange.objects.filter(place=place).order_by("-seq")[:limit]
    history = []
    for change in changes:
        fields = []
        for name, values in sorted((change.changes or {}).items()):
            shown = name in PUBLIC_CHANGE_FIELDS and isinstance(values, dict)
            old = _public_value(values.get("old")) if shown else None
            new = _public_value(values.get("new")) if shown else None
            fields.append((name, old, new, shown))
        history.append(
            PublicChange(
                at=change.at,
                operation=change.get_operation_display(),
                source=change.get_source_display(),
                place_version=change.place_version,
                fields=fields,
            )
        )
    return history


@dataclass(frozen=True)
class HistoryPage:
    """One page of a place's change log, newest first, with what reverted each change."""

    page: Page
    reverted_by: dict[int, list[int]]
    region_names: dict[int, str]


def place_history_page(
    *,
    place_id: int,
    page: Any = 1,
    per_page: int = 50,
    field: str = "",
    source: str = "",
) -> HistoryPage:
    """A page of the place's changes (newest first), with their users, the reverts and
    restores that went back on them, and the names of the regions they mention; only the
    changes of one field (by its log key) or one kind of author (``source``) when given.

    Reads one page through the (place, seq) index, so a place with thousands of changes
    costs what one with fifty does.
    """
    changes = PlaceChange.objects.filter(place_id=place_id).select_related("user").order_by("-seq")
    if field:
        changes = changes.filter(changes__has_key=field)
    if source:
        changes = changes.filter(source=source)
    shown = Paginator(changes, per_page).get_page(page)
    return HistoryPage(
        page=shown,
        reverted_by=changes_reverted_by(seqs=[c.seq for c in shown]),
        region_names=region_names_in(changes=list(shown)),
    )


def changes_reverted_by(*, seqs: list[int]) -> dict[int, list[int]]:
    """For each of these changes that a revert or restore went back on, those changes."""
    reverted_by: dict[int, list[int]] = {}
    undone = PlaceChange.objects.filter(reverts_id__in=seqs).order_by("seq")
    for reverted, seq in undone.values_list("reverts_id", "seq"):
        reverted_by.setdefault(reverted, []).append(seq)
    return reverted_by


def region_names_in(*, changes: Sequence[PlaceChange]) -> dict[int, str]:
    """Names of the regions and countries these changes logged (by id), in one query."""
    region_ids = {
        value
        for change in changes
        for key in ("region_id", "country_id")
        if isinstance(change.changes.get(key), dict)
        for value in change.changes[key].values()
        if isinstance(value, int)
    }
    return dict(Region.objects.filter(pk__in=region_ids).values_list("pk", "name"))


def change_later_touching(*, change: PlaceChange) -> dict[str, list[int]]:
    """Fields of ``change`` that later changes of its place touched too, with those
    changes' numbers: what a revert of ``change`` would overwrite."""
    keys = list(change.changes)
    later: dict[str, list[int]] = {}
    if not keys:
        return later
    touching = PlaceChange.objects.filter(
        place_id=change.place_id,
        place_version__gt=change.place_version,
        changes__has_any_keys=keys,
    ).order_by("seq")
    for seq, changes in touching.values_list("seq", "changes"):
        for key in keys:
            if key in changes:
                later.setdefault(key, []).append(seq)
    return later
