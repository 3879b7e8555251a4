"""Regions kept by one service: whoever writes a region goes through here.

The boundary loader (``ingestion.services.regions``) writes many regions at once and calls
``regions_refresh``; a curator's edit in the admin calls ``region_save``. Either way, in the
same transaction as the write:

- a region whose boundary or level changed (or that is new) is cut again into pieces of at
  most ``SUBDIVIDE_MAX_VERTICES`` vertices (``RegionPart``, what point in polygon reads) and
  its geodesic area is measured again;
- regions below country level without a parent get the country that holds a point inside
  them (else the nearest); when a country's boundary changed, every such link is made again;
- every region written or relinked moves its ``updated_at`` (clock time), which moves
  ``selectors.region_version``;
- the places inside the old or the new boundary, and those in a region that moved to another
  country, are located again (``places.locate``); each place whose region or country
  changes is updated with its version up by one and an ``update`` entry in the change log
  (source ``system``, the comment naming the region change).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from places.locate import points_locate
from places.locks import AdvisoryLock
from places.models import Region

# Pieces of at most this many vertices: 64 was 2x faster than 256 for the GB sample's
# district assignment, at 1,100 instead of 688 pieces.
SUBDIVIDE_MAX_VERTICES = 64

# A boundary that comes back from the admin's map (through Web Mercator) within this many
# degrees of every stored vertex (about a centimetre) has not been moved.
BOUNDARY_TOLERANCE = 1e-7

# Region writers hold it exclusively until they commit; writers of places that run point in
# polygon hold it shared, so that no place is located against pieces being replaced, and
# none is moved while its region's places are being re-assigned.
LOCK = "SELECT pg_advisory_xact_lock(%(lock)s)"
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%(lock)s)"

DROP_WORK = (
    "DROP TABLE IF EXISTS pg_temp.region_parents, pg_temp.region_places, "
    "pg_temp.region_points, pg_temp.region_located"
)

# Parents as they were, to tell which regions the relinking moved to another country.
REMEMBER_PARENTS = """
CREATE TEMP TABLE region_parents ON COMMIT DROP AS
SELECT id, parent_id FROM places_region WHERE level <> 'country'
"""

# Ids of the places to locate again (a place may be listed more than once).
CREATE_PLACES = "CREATE TEMP TABLE region_places (id bigint) ON COMMIT DROP"

# Places inside the regions' pieces: run before re-cutting (the old boundaries, as point in
# polygon saw them until now) and after (the new ones). Each piece looks up the places'
# points in their spatial index.
PLACES_IN_PIECES = """
INSERT INTO region_places
SELECT p.id FROM places_regionpart rp JOIN places_place p ON ST_Intersects(rp.geom, p.location)
WHERE rp.region_id = ANY(%(ids)s)
"""

# Whether any of the regions is, or was until now, a country (its pieces say what it was).
WAS_COUNTRY = """
SELECT EXISTS (SELECT 1 FROM places_region WHERE id = ANY(%(ids)s) AND level = 'country')
    OR EXISTS (SELECT 1 FROM places_regionpart WHERE region_id = ANY(%(ids)s)
               AND level = 'country')
"""

DELETE_PIECES = "DELETE FROM places_regionpart WHERE region_id = ANY(%(ids)s)"

SUBDIVIDE = """
INSERT INTO places_regionpart (region_id, level, geom)
SELECT id, level, ST_Subdivide(geom, %(vertices)s) FROM places_region WHERE id = ANY(%(ids)s)
"""

# Geodesic area; clock time, not transaction start, for the version: it must move past a
# version read earlier in this transaction, and it keys the region tiles' caches.
MEASURE = """
UPDATE places_region SET area_km2 = ST_Area(geom::geography) / 1e6,
                         updated_at = clock_timestamp()
WHERE id = ANY(%(ids)s)
"""

TOUCH = "UPDATE places_region SET updated_at = clock_timestamp() WHERE id = ANY(%(ids)s)"

# New country outlines may change which country holds each lower region.
UNLINK = "UPDATE places_region SET parent_id = NULL WHERE level <> 'country'"

# A region's parent is the country that holds a point inside it (regions below country).
LINK_PARENTS = """
UPDATE places_region r SET parent_id = (
    SELECT p.region_id FROM places_regionpart p
    WHERE p.level = 'country' AND ST_Intersects(p.geom, ST_PointOnSurface(r.geom))
    ORDER BY p.region_id LIMIT 1)
WHERE r.level <> 'country' AND r.parent_id IS NULL
"""

# Offshore pieces can miss Natural Earth's generalised coasts; take the nearest country.
LINK_NEAREST = """
UPDATE places_region r SET parent_id = (
    SELECT c.id FROM places_region c WHERE c.level = 'country'
    ORDER BY c.geom <-> ST_PointOnSurface(r.geom) LIMIT 1)
WHERE r.level <> 'country' AND r.parent_id IS NULL
"""

# Regions whose parent the relinking changed; they count as written (version moves).
REGROUPED = """
WITH moved AS (
    SELECT r.id FROM places_region r JOIN region_parents b USING (id)
    WHERE r.parent_id IS DISTINCT FROM b.parent_id
)
UPDATE places_region r SET updated_at = clock_timestamp()
FROM moved WHERE r.id = moved.id
RETURNING r.id
"""

# Their region stays; their country may not (it is the region's parent).
PLACES_OF_REGIONS = """
INSERT INTO region_places SELECT id FROM places_place WHERE region_id = ANY(%(ids)s)
"""

POINTS = """
CREATE TEMP TABLE region_points ON COMMIT DROP AS
SELECT p.id AS sid, p.location AS geom FROM places_place p
WHERE p.id IN (SELECT id FROM region_places)
"""

# Places whose region or country differs from point in polygon's answer now, written and
# logged in one statement, as imports write theirs. Rows are locked first (and re-read if
# a concurrent edit changed them), so the log records the values actually replaced.
REASSIGN = """
WITH moved AS (
    SELECT p.id, p.region_id AS old_region, p.country_id AS old_country,
           l.region_id, l.country_id
    FROM region_located l JOIN places_place p ON p.id = l.sid
    WHERE (p.region_id, p.country_id) IS DISTINCT FROM (l.region_id, l.country_id)
    FOR UPDATE OF p
), upd AS (
    UPDATE places_place p SET region_id = m.region_id, country_id = m.country_id,
        version = p.version + 1, updated_at = now()
    FROM moved m WHERE p.id = m.id
    RETURNING p.id, p.dataset_id, p.version, m.old_region, m.old_country,
              m.region_id AS new_region, m.country_id AS new_country
)
INSERT INTO places_placechange (place_id, dataset_id, operation, changes, place_version,
                                source, device_id, comment)
SELECT id, dataset_id, 'update',
       CASE WHEN old_region IS DISTINCT FROM new_region
            THEN jsonb_build_object('region_id',
                     jsonb_build_object('old', old_region, 'new', new_region))
            ELSE '{}'::jsonb END
       || CASE WHEN old_country IS DISTINCT FROM new_country
               THEN jsonb_build_object('country_id',
                        jsonb_build_object('old', old_country, 'new', new_country))
               ELSE '{}'::jsonb END,
       version, 'system', '', %(comment)s
FROM upd ORDER BY id
"""

# How many regions a change-log comment names before it says "and N more".
COMMENT_NAMES = 5


@dataclass(frozen=True)
class RegionsRefreshed:
    """What keeping the regions changed."""

    recut: int = 0  # regions cut into pieces again
    pieces: int = 0  # pieces those regions now have
    relinked: int = 0  # regions that moved to another country (or got their first)
    places_reassigned: int = 0  # places whose region or country changed (each logged)


def regions_hold_for_locating() -> None:
    """Hold the regions still until the caller's transaction ends (a shared lock: many
    place writers at once, none while a region is being written). Call it before locking
    the place rows, as region maintenance takes this lock first and place rows second."""
    with connection.cursor() as cursor:
        cursor.execute(LOCK_SHARED, {"lock": AdvisoryLock.REGIONS.value})


def regions_hold_for_writing() -> None:
    """Hold the regions for the caller's transaction alone (exclusive): taken first by every
    region writer, before any region row, so that two writers always lock in one order."""
    with connection.cursor() as cursor:
        cursor.execute(LOCK, {"lock": AdvisoryLock.REGIONS.value})


def region_save(*, region: Region) -> RegionsRefreshed:
    """Save one region written by hand (the admin) and keep everything that follows from
    it, as the loader does (see the module docstring).

    A boundary that differs from the stored one by less than ``BOUNDARY_TOLERANCE`` is kept
    as stored: a form's map sends it back through Web Mercator, which is no move. Checks
    of the values themselves (a valid polygon) are the caller's, as in any model form.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(LOCK, {"lock": AdvisoryLock.REGIONS.value})
        # No key update: imports that name the region (FOR KEY SHARE) need not be waited for.
        stored = (
            Region.objects.select_for_update(no_key=True)
            .filter(pk=region.pk)
            .values("geom", "level", "parent_id")
            .first()
            if region.pk
            else None
        )
        recut, regrouped = True, False
        if stored is not None:
            if stored["geom"].equals_exact(region.geom, tolerance=BOUNDARY_TOLERANCE):
                region.geom = stored["geom"]
                recut = stored["level"] != region.level
            regrouped = stored["parent_id"] != region.parent_id
        region.save()
        done = _refresh(
            cursor,
            recut_ids=[region.pk] if recut else [],
            touched_ids=[region.pk],
            regrouped_ids=[region.pk] if regrouped else [],
        )
    region.refresh_from_db(fields=["area_km2", "parent", "updated_at"])
    return done


def regions_refresh(
    *, recut_ids: Collection[int], touched_ids: Collection[int] = ()
) -> RegionsRefreshed:
    """Keep regions the caller has just written (in its transaction), set-based: re-cut and
    measure ``recut_ids`` (new regions, changed boundaries or levels) and re-assign the
    places inside their old and new boundaries; move the version of ``touched_ids`` (any
    other change, e.g. a name) too. See the module docstring for the whole rule.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(LOCK, {"lock": AdvisoryLock.REGIONS.value})
        return _refresh(cursor, recut_ids=recut_ids, touched_ids=touched_ids, regrouped_ids=())


def _refresh(
    cursor: CursorWrapper,
    *,
    recut_ids: Collection[int],
    touched_ids: Collection[int],
    regrouped_ids: Collection[int],
) -> RegionsRefreshed:
    """The maintenance itself; the caller holds the regions lock in a transaction."""
    recut = sorted(set(recut_ids))
    cursor.execute(DROP_WORK)
    cursor.execute(REMEMBER_PARENTS)
    cursor.execute(CREATE_PLACES)
    pieces, was_country = 0, False
    if recut:
        cursor.execute(PLACES_IN_PIECES, {"ids": recut})
        cursor.execute(WAS_COUNTRY, {"ids": recut})
        was_country = cursor.fetchone()[0]
        cursor.execute(DELETE_PIECES, {"ids": recut})
        cursor.execute(SUBDIVIDE, {"ids": recut, "vertices": SUBDIVIDE_MAX_VERTICES})
        pieces = cursor.rowcount
        cursor.execute(MEASURE, {"ids": recut})
        cursor.execute(PLACES_IN_PIECES, {"ids": recut})
    touched = sorted(set(touched_ids) - set(recut))
    if touched:
        cursor.execute(TOUCH, {"ids": touched})
    if was_country:
        cursor.execute(UNLINK)
    cursor.execute(LINK_PARENTS)
    cursor.execute(LINK_NEAREST)
    cursor.execute(REGROUPED)
    relinked = {row[0] for row in cursor.fetchall()}
    regrouped = sorted(relinked | set(regrouped_ids))
    reassigned = 0
    if recut or regrouped:
        if regrouped:
            cursor.execute(PLACES_OF_REGIONS, {"ids": regrouped})
        cursor.execute(POINTS)
        points_locate(cursor=cursor, points_table="region_points", located_table="region_located")
        cursor.execute(REASSIGN, {"comment": _comment(changed=[*recut, *regrouped])})
        reassigned = cursor.rowcount
    cursor.execute(DROP_WORK)
    return RegionsRefreshed(
        recut=len(recut), pieces=pieces, relinked=len(relinked), places_reassigned=reassigned
    )


def _comment(*, changed: list[int]) -> str:
    """The change-log comment of re-assigned places: which regions changed."""
    ids = list(dict.fromkeys(changed))
    regions = Region.objects.filter(pk__in=ids[:COMMENT_NAMES]).defer("geom").order_by("pk")
    names = ", ".join(f"{r.name} ({r.code_system} {r.code})" for r in regions)
    more = f" and {len(ids) - COMMENT_NAMES} more" if len(ids) > COMMENT_NAMES else ""
    noun = "regions" if len(ids) > 1 else "region"
    return f"point in polygon again after a change to {noun} {names}{more}"
