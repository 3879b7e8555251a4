"""Finding likely duplicates among places, in SQL, and remembering curators' decisions.

A pair of active places is proposed (``DuplicateCandidate``) for any of these reasons:

==================  ==========================================================================
reason              rule
==================  ==========================================================================
same_source_key     the same source key (``osm:way/1``) in two datasets
exact_coordinates   the same point, whatever else differs
point_in_footprint  one's point lies inside the other's footprint, religions compatible
near_similar_name   within the distance of their kind (``KIND_DISTANCE_M``, or a footprint's
                    size), names alike (trigram similarity ≥ ``NAME_SIMILARITY``, accents
                    and case ignored) and religions compatible
==================  ==========================================================================

Religions are compatible when equal, or when either is unknown, other or multifaith. The
score (0-1) is the best reason's (``REASON_SCORE``, raised by the names' similarity), plus a
little per further reason, halved when the religions are not compatible.

One statement finds, scores and upserts the pairs of a set of places (every active place,
or those an import changed: the change log names them) against all active places, using the
GiST and B-tree indexes of ``places_place``. A pair is its natural key: a run again updates
the open pairs it finds, drops the open pairs of the set it no longer finds, and never
touches a decided pair (merged, "not a duplicate"): those are never proposed again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from places import access
from places.access import Action
from places.locks import AdvisoryLock
from places.models_duplicates import DuplicateCandidate, DuplicateStatus

logger = logging.getLogger(__name__)

# Metres within which two places of a kind may be one, by the kind a tag gives
# (``building``, ``historic``, ``amenity`` or ``place_of_worship``; the larger of the pair's).
# A place with a footprint reaches as far as the footprint's own size, if that is more.
KIND_DISTANCE_M: dict[str, int] = {
    "cathedral": 250,
    "monastery": 250,
    "temple": 150,
    "mosque": 150,
    "church": 100,
    "synagogue": 100,
    "chapel": 60,
    "wayside_shrine": 25,
    "wayside_cross": 25,
    "shrine": 25,
}
DEFAULT_DISTANCE_M = 100
# The index probe's reach: no kind's distance is larger (a footprint's may be; its point
# inside the footprint is found by point_in_footprint then).
MAX_DISTANCE_M = max([DEFAULT_DISTANCE_M, *KIND_DISTANCE_M.values()])
NAME_SIMILARITY = 0.5
REASON_SCORE = {
    "same_source_key": "0.9",
    "exact_coordinates": "0.55 + 0.4 * sim",
    "point_in_footprint": "0.5 + 0.45 * sim",
    "near_similar_name": "0.3 + 0.4 * sim + 0.2 * (1 - least(dist / reach, 1))",
}
# Religions that match any other.
OPEN_RELIGIONS = ("unknown", "other", "multifaith")
ACTIVE = "active"


def _kind_distance(alias: str) -> str:
    """SQL: the metres a place (``alias``) reaches, by its kind and its footprint."""
    tags = " WHEN ".join(
        f"'{kind}' THEN {metres}" for kind, metres in sorted(KIND_DISTANCE_M.items())
    )
    kind = (
        f"COALESCE({alias}.tags ->> 'building', {alias}.tags ->> 'historic', "
        f"{alias}.tags ->> 'place_of_worship', {alias}.tags ->> 'amenity')"
    )
    size = (
        f"CASE WHEN {alias}.footprint IS NULL THEN 0 "
        f"ELSE sqrt(ST_Area({alias}.footprint::geography) / pi()) + 30 END"
    )
    return f"greatest(CASE {kind} WHEN {tags} ELSE {DEFAULT_DISTANCE_M} END, {size})"


_OPEN = ", ".join(f"'{r}'" for r in OPEN_RELIGIONS)
_SCORE = " ".join(f"WHEN '{reason}' THEN {sql}" for reason, sql in REASON_SCORE.items())

# %(everything)s: seed with every active place; else %(seeds)s, an array of place ids. The
# pairs are (seed, other) with any active other; ordered (a < b) once scored.
FIND_AND_STORE = f"""
WITH seeds AS (
    SELECT p.* FROM places_place p
    WHERE p.status = '{ACTIVE}' AND (%(everything)s OR p.id = ANY(%(seeds)s))
), raw AS (
    SELECT s.id AS s, o.id AS o, 'same_source_key' AS reason
    FROM seeds s JOIN places_place o
      ON o.source_key = s.source_key AND o.dataset_id <> s.dataset_id AND o.status = '{ACTIVE}'

    UNION ALL
    SELECT s.id, o.id, 'point_in_footprint'
    FROM seeds s JOIN places_place o
      ON o.footprint IS NOT NULL AND ST_Intersects(o.footprint, s.location)
     AND o.id <> s.id AND o.status = '{ACTIVE}'
    UNION ALL
    SELECT s.id, o.id, 'point_in_footprint'
    FROM seeds s JOIN places_place o
      ON s.footprint IS NOT NULL AND ST_Intersects(s.footprint, o.location)
     AND o.id <> s.id AND o.status = '{ACTIVE}'
    UNION ALL
    -- Near, and at the same point: one probe (degrees of longitude shrink with latitude, so
    -- its reach is widened to match).
    SELECT s.id, o.id, 'near'
    FROM seeds s JOIN places_place o
      ON ST_DWithin(o.location, s.location,
                    {MAX_DISTANCE_M} / (111320 * cos(radians(least(abs(ST_Y(s.location)), 85)))))
     AND o.id <> s.id AND o.status = '{ACTIVE}'
), measured AS (
    SELECT least(r.s, r.o) AS a, greatest(r.s, r.o) AS b, r.reason,
           ST_Equals(x.location, y.location) AS same_point,
           ST_Distance(x.location::geography, y.location::geography) AS dist,
           greatest({_kind_distance("x")}, {_kind_distance("y")}) AS reach,
           CASE WHEN x.name = '' OR y.name = '' THEN 0
                ELSE similarity(unaccent(x.name), unaccent(y.name)) END AS sim,
           (x.religion = y.religion OR x.religion IN ({_OPEN}) OR y.religion IN ({_OPEN}))
               AS compatible,
           x.dataset_id AS dataset_a, y.dataset_id AS dataset_b
    FROM raw r
    JOIN places_place x ON x.id = least(r.s, r.o)
    JOIN places_place y ON y.id = greatest(r.s, r.o)
), reasoned AS (
    -- A near pair is at the same point, alike in name within its reach, both or neither.
    SELECT m.*, r.reason AS why FROM measured m
    CROSS JOIN LATERAL unnest(CASE WHEN m.reason <> 'near' THEN ARRAY[m.reason] ELSE ARRAY[
        CASE WHEN m.same_point THEN 'exact_coordinates' END,
        CASE WHEN m.dist <= m.reach AND m.sim >= {NAME_SIMILARITY} THEN 'near_similar_name' END]
        END) AS r(reason)
), kept AS (
    SELECT m.a, m.b, m.dist, m.sim, m.compatible, m.dataset_a, m.dataset_b, m.why AS reason,
           CASE m.why {_SCORE} END AS reason_score
    FROM reasoned m
    WHERE m.why IN ('same_source_key', 'exact_coordinates')
       OR (m.why IN ('point_in_footprint', 'near_similar_name') AND m.compatible)
), scored AS (
    SELECT a, b, min(dataset_a) AS dataset_a, min(dataset_b) AS dataset_b,
           array_agg(DISTINCT reason ORDER BY reason) AS reasons,
           min(dist) AS dist, max(sim) AS sim,
           least(1.0, max(reason_score) + 0.05 * (count(DISTINCT reason) - 1))
               * CASE WHEN bool_and(compatible) THEN 1.0 ELSE 0.5 END AS score
    FROM kept GROUP BY a, b
), stored AS (
    INSERT INTO places_duplicatecandidate AS c (
        place_a_id, place_b_id, dataset_a_id, dataset_b_id, score, reasons, distance_m,
        name_similarity, status, merge_changes)
    SELECT a, b, dataset_a, dataset_b, round(score::numeric, 3), reasons, round(dist::numeric, 1),
           round(sim::numeric, 3), '{DuplicateStatus.OPEN}', '{{}}'
    FROM scored ORDER BY a, b
    ON CONFLICT (place_a_id, place_b_id) DO UPDATE SET
        score = EXCLUDED.score, reasons = EXCLUDED.reasons, distance_m = EXCLUDED.distance_m,
        name_similarity = EXCLUDED.name_similarity, updated_at = now()
    WHERE c.status = '{DuplicateStatus.OPEN}'
    RETURNING c.place_a_id, c.place_b_id
), dropped AS (
    -- Open pairs of the seeds (any status: a retired seed's pairs go) not found again.
    DELETE FROM places_duplicatecandidate c
    WHERE c.status = '{DuplicateStatus.OPEN}'
      AND (%(everything)s OR c.place_a_id = ANY(%(seeds)s) OR c.place_b_id = ANY(%(seeds)s))
      AND NOT EXISTS (SELECT 1 FROM scored f WHERE f.a = c.place_a_id AND f.b = c.place_b_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM stored), (SELECT count(*) FROM dropped)
"""  # nosec B608 # SQL from this module's constants; values are bound

LOCK = "SELECT pg_advisory_xact_lock(%(lock)s)"

# The places an import job created or changed (its survivors of merged keys included).
JOB_PLACES = """
SELECT DISTINCT place_id FROM places_placechange
WHERE import_job_id = %(job)s AND operation IN ('create', 'update')
"""


@dataclass(frozen=True)
class DuplicatesFound:
    stored: int  # pairs written or refreshed (open ones; decided pairs are left alone)
    dropped: int  # open pairs of the places looked at that are no longer found
    places: int | None  # how many places were looked at; None: all of them


@transaction.atomic
def duplicates_find(*, place_ids: Sequence[int] | None = None) -> DuplicatesFound:
    """Find and store the likely duplicates of ``place_ids`` (all active places when None).

    Idempotent: a second run with the same data changes nothing but the pairs' times. One
    run at a time (an advisory lock): two would race on the same pairs.
    """
    seeds = list(place_ids) if place_ids is not None else []
    if place_ids is not None and not seeds:
        return DuplicatesFound(stored=0, dropped=0, places=0)
    with connection.cursor() as cursor:
        cursor.execute(LOCK, {"lock": AdvisoryLock.DUPLICATES.value})
        cursor.execute(FIND_AND_STORE, {"everything": place_ids is None, "seeds": seeds})
        stored, dropped = cursor.fetchone()
    logger.info("duplicates: %s pairs stored, %s dropped", stored, dropped)
    return DuplicatesFound(
        stored=stored, dropped=dropped, places=None if place_ids is None else len(seeds)
    )


def duplicates_find_for_job(*, job_id: int) -> DuplicatesFound:
    """Find again the duplicates of the places one import job created or changed: the
    change log names them (``import_job_id``), so an import costs a search of its own
    places only."""
    with connection.cursor() as cursor:
        cursor.execute(JOB_PLACES, {"job": job_id})
        ids = [row[0] for row in cursor.fetchall()]
    return duplicates_find(place_ids=ids)


class DuplicateDecisionError(Exception):
    """A decision on a pair that cannot be taken; the message says why, for a curator."""


def duplicate_mark_not_duplicate(*, candidate: DuplicateCandidate, user: Any) -> DuplicateCandidate:
    """Remember that the two places are distinct: the pair is never proposed again (the
    finder leaves decided pairs alone). Needs the merge right in both places' datasets."""
    for dataset in {candidate.dataset_a_id, candidate.dataset_b_id}:
        access.require(user, Action.MERGE, dataset)
    with transaction.atomic():
        locked = DuplicateCandidate.objects.select_for_update().get(pk=candidate.pk)
        if locked.status == DuplicateStatus.MERGED:
            raise DuplicateDecisionError(
                f"Pair {locked} was merged; undo the merge before marking it not a duplicate."
            )
        locked.status = DuplicateStatus.NOT_DUPLICATE
        locked.decided_by = user
        locked.decided_at = locked.updated_at = timezone.now()
        locked.save(update_fields=["status", "decided_by", "decided_at", "updated_at"])
    return locked
