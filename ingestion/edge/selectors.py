"""The edge change feed: the places of a node's region, as a snapshot and then as changes.

A node's region holds the places whose country is it (a region of level ``country``), or
(any other level) whose region is it or one of its descendants by ``Region.parent``: a
place's region is its most detailed one (``places.locate``), so the places of a first-level
region mostly sit in its districts. The set of region ids is read once per request.

**Snapshot** (no cursor): the region's active places in pages by id. Its start is the change
feed's horizon at the first page (``pg_snapshot_xmin``): every change before it is visible
to every later page, every change after it is in the feed after it. Pages are read at
different times, so a place changed meanwhile may be sent by a page and again by the feed;
applying is idempotent, and once the feed is applied up to its end the copy is consistent.
The last snapshot page therefore says ``has_more``: the client goes on into the feed.

**Feed**: ``places.selectors.place_change_feed`` (gapless: it never hands out a change that
an older open transaction could still precede). Each change of the region's places becomes
the place's *current* state: ``upsert`` while it is active in the region, a ``delete``
tombstone when it is retired or merged (``superseded_by`` names the place it was merged
into), or when the change moved it out of the region (its logged old region or country was
in the node's set and the place is no longer in it). One entry per place per page. The
feed is global, so one request scans at most ``SCAN_QUERIES`` pages of the log; a page may
then be empty with ``has_more`` true.

The cursor is opaque to clients: version, region, feed position and (while in the snapshot)
the last place id sent, in URL-safe base64. A cursor of another region (the node was moved)
or a malformed one is refused (``CursorInvalid``) and the client starts again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from django.contrib.gis.db.models import FloatField
from django.db import connection
from django.db.models import F, Func, Q, QuerySet

from ingestion.edge.models import EdgeNode
from places.models import Place, PlaceChange, PlaceStatus, Region, RegionLevel
from places.selectors import FeedCursor, place_change_feed

DEFAULT_LIMIT = 1000
MAX_LIMIT = 5000
# The log is global: one request reads at most SCAN_QUERIES pages of at most SCAN_PAGE
# changes, whatever share of them is the region's.
SCAN_PAGE = 2000
SCAN_QUERIES = 10
CURSOR_VERSION = "1"
HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
# The region and every region below it; UNION (not ALL) ends even on a cycle of parents.
REGION_TREE = f"""
WITH RECURSIVE tree(id) AS (
    SELECT %s::bigint
    UNION
    SELECT r.id FROM {Region._meta.db_table} r JOIN tree ON r.parent_id = tree.id
)
SELECT id FROM tree
"""  # nosec B608 # table name is a constant; values are bound


class CursorInvalid(Exception):
    pass


@dataclass(frozen=True)
class ChangeCursor:
    region_id: int
    feed: FeedCursor
    # Snapshot mode: the last place id sent (0 before the first); None once in the feed.
    after_place: int | None = None

    def encode(self) -> str:
        after = "" if self.after_place is None else str(self.after_place)
        text = f"{CURSOR_VERSION}:{self.region_id}:{self.feed}:{after}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> ChangeCursor:
        try:
            if len(text) > 200:
                raise ValueError("too long")
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
            version, region, feed, after = raw.split(":")
            if version != CURSOR_VERSION:
                raise ValueError("version")
            cursor = cls(
                region_id=int(region),
                feed=FeedCursor.parse(feed),
                after_place=int(after) if after else None,
            )
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise CursorInvalid(
                "The cursor is not one this server gave out; start again without a cursor."
            ) from None
        if min(cursor.region_id, cursor.feed.xact_id, cursor.feed.seq, cursor.after_place or 0) < 0:
            raise CursorInvalid("The cursor is not one this server gave out.")
        return cursor


@dataclass(frozen=True)
class ChangesPage:
    cursor: str
    has_more: bool
    snapshot: bool
    changes: list[dict[str, Any]]

    def body(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "has_more": self.has_more,
            "snapshot": self.snapshot,
            "changes": self.changes,
        }


def changes_etag(*, node: EdgeNode, cursor: str) -> str:
    """The ETag of an answer: its cursor for this node. A request at that cursor that finds
    nothing newer answers 304 to it."""
    digest = hashlib.sha256(f"{node.pk}:{cursor}".encode()).hexdigest()[:32]
    return f'"{digest}"'


@dataclass(frozen=True)
class _Scope:
    """Which places are the node's: ``field`` (a place column) holding one of ``ids``."""

    region: Region
    field: str
    ids: frozenset[int]

    @classmethod
    def of(cls, region: Region) -> _Scope:
        if region.level == RegionLevel.COUNTRY:
            return cls(region=region, field="country_id", ids=frozenset({region.pk}))
        with connection.cursor() as db:
            db.execute(REGION_TREE, [region.pk])
            ids = frozenset(row[0] for row in db.fetchall())
        return cls(region=region, field="region_id", ids=ids)

    @property
    def q(self) -> Q:
        if len(self.ids) == 1:
            return Q(**{self.field: next(iter(self.ids))})
        return Q(**{f"{self.field}__in": sorted(self.ids)})


def _place_rows(q: Q) -> QuerySet[Any, Any]:
    """The places matching ``q`` with what an entry shows, by id."""
    return (
        Place.objects.filter(q)
        .annotate(
            lon=Func(F("location"), function="ST_X", output_field=FloatField()),
            lat=Func(F("location"), function="ST_Y", output_field=FloatField()),
            dataset_slug=F("dataset__slug"),
        )
        .values(
            "id",
            "version",
            "name",
            "religion",
            "denominations",
            "dataset_slug",
            "source_key",
            "lon",
            "lat",
            "status",
            "merged_into_id",
        )
        .order_by("id")
    )


def _upsert(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "op": "upsert",
        "id": row["id"],
        "version": row["version"],
        "place": {
            "id": row["id"],
            "name": row["name"],
            "religion": row["religion"],
            "denominations": row["denominations"],
            "dataset": row["dataset_slug"],
            "source_key": row["source_key"],
            "lon": row["lon"],
            "lat": row["lat"],
            "status": row["status"],
        },
    }


def _delete(place_id: int, reason: str, superseded_by: int | None = None) -> dict[str, Any]:
    return {"op": "delete", "id": place_id, "reason": reason, "superseded_by": superseded_by}


def edge_changes_list(
    *, node: EdgeNode, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> ChangesPage:
    """One page of the node's region: the snapshot without a cursor, the feed after one.

    Raises ``CursorInvalid`` for a cursor this server did not give out for this region.
    """
    limit = max(1, min(limit, MAX_LIMIT))
    region = node.region
    if cursor is None:
        with connection.cursor() as db:
            db.execute(HORIZON)
            horizon = int(db.fetchone()[0])
        start = ChangeCursor(region_id=region.pk, feed=FeedCursor(horizon, 0), after_place=0)
        return _snapshot_page(scope=_Scope.of(region), at=start, limit=limit)
    at = ChangeCursor.decode(cursor)
    if at.region_id != region.pk:
        raise CursorInvalid(
            "The cursor belongs to another region (the node's region changed); "
            "start again without a cursor."
        )
    if at.after_place is not None:
        return _snapshot_page(scope=_Scope.of(region), at=at, limit=limit)
    return _feed_page(scope=_Scope.of(region), at=at, limit=limit)


def _snapshot_page(*, scope: _Scope, at: ChangeCursor, limit: int) -> ChangesPage:
    region, in_region = scope.region, scope.q
    after = at.after_place or 0
    rows = list(_place_rows(in_region & Q(status=PlaceStatus.ACTIVE, id__gt=after))[: limit + 1])
    more_places = len(rows) > limit
    rows = rows[:limit]
    if more_places:
        following = ChangeCursor(region_id=region.pk, feed=at.feed, after_place=rows[-1]["id"])
    else:
        # The snapshot is done: the feed continues from where the snapshot began, and the
        # client reads it at once (has_more) so that its copy ends consistent.
        following = ChangeCursor(region_id=region.pk, feed=at.feed)
    return ChangesPage(
        cursor=following.encode(),
        has_more=True,
        snapshot=True,
        changes=[_upsert(row) for row in rows],
    )


def _feed_page(*, scope: _Scope, at: ChangeCursor, limit: int) -> ChangesPage:
    region = scope.region
    position: FeedCursor | None = at.feed
    entries: dict[int, dict[str, Any]] = {}
    exhausted = False
    for _ in range(SCAN_QUERIES):
        # Each change yields at most one entry: asking for no more than the room left keeps
        # the page within ``limit`` and the cursor exactly after the last change used.
        wanted = min(SCAN_PAGE, limit - len(entries))
        page, position = place_change_feed(after=position, limit=wanted)
        if page:
            _apply(entries, page, scope=scope)
        if len(page) < wanted:
            exhausted = True
            break
        if len(entries) >= limit:
            break
    # place_change_feed hands back the cursor it was given when nothing was newer.
    end = position if position is not None else at.feed
    return ChangesPage(
        cursor=ChangeCursor(region_id=region.pk, feed=end).encode(),
        has_more=not exhausted,
        snapshot=False,
        changes=list(entries.values()),
    )


def _apply(
    entries: dict[int, dict[str, Any]],
    page: list[PlaceChange],
    *,
    scope: _Scope,
) -> None:
    """Turn one scanned page of the global log into entries for this region's places."""
    moved_out: set[int] = set()
    candidates: set[int] = set()
    for change in page:
        logged = change.changes.get(scope.field) if isinstance(change.changes, dict) else None
        old = logged.get("old") if isinstance(logged, dict) else None
        if isinstance(old, int) and old in scope.ids:
            # Moved out only if it is no longer in the set: checked against ``current``.
            moved_out.add(change.place_id)
        candidates.add(change.place_id)
    # The current state of the places the page touched that are in the region now.
    current = {row["id"]: row for row in _place_rows(scope.q & Q(id__in=candidates))}
    merged_logged: dict[int, int] = {}
    for change in page:
        pid = change.place_id
        if pid not in current and pid not in moved_out:
            continue
        row = current.get(pid)
        if row is None:
            entry = _delete(pid, "moved_out")
        elif row["status"] == PlaceStatus.ACTIVE:
            entry = _upsert(row)
        elif row["status"] == PlaceStatus.MERGED:
            logged = change.changes.get("merged_into_id") if change.changes else None
            if isinstance(logged, dict) and isinstance(logged.get("new"), int):
                merged_logged[pid] = logged["new"]
            superseded = row["merged_into_id"] or merged_logged.get(pid)
            entry = _delete(pid, "merged", superseded)
        else:
            entry = _delete(pid, "retired")
        # One entry per place, at the place of its newest change: feed order is kept.
        entries.pop(pid, None)
        entries[pid] = entry
