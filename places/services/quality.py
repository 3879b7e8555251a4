"""Data-quality flags of places, and the bulk fixes of the common ones.

Flags are stored (``PlaceFlag``: one row per flagged place and flag), not computed per
request: two of them are spatial joins (is the point inside the region it is assigned to;
does another place of the dataset stand on the same coordinates), which over a million places
take seconds, while the changelist's filter on a stored flag is one index range on
(flag, dataset). They are kept up to date in two ways:

- the services that write a place (``place_create``, ``place_update``, ``places_retire``)
  refresh that place's flags in the same transaction, and those of the places at its old and
  new coordinates (whose "duplicate coordinates" flag it may change);
- writes in bulk (imports, region maintenance) are set-based SQL that calls no service: beat's
  ``quality_flags_refresh_due`` recomputes every dataset whose change log has such entries
  since its last computation (``QualityRefresh``), set-based, in one statement per dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.contrib.gis.geos import Point
from django.db import connection, transaction
from django.db.models import Count, Max

from places import access
from places.access import Action
from places.models import ChangeSource, Dataset, Place, PlaceChange, Religion
from places.models_curation import PlaceFlag, QualityFlag, QualityRefresh

# Denominations a curator may leave as they are: OpenStreetMap's documented values of
# ``denomination=*`` (normalised as imports normalise them). Anything else is flagged so a
# curator can map it to one of these (``places_denomination_replace``).
KNOWN_DENOMINATIONS: frozenset[str] = frozenset(
    {
        "adventist",
        "african_methodist_episcopal",
        "alliance",
        "anglican",
        "apostolic",
        "armenian_apostolic",
        "assemblies_of_god",
        "baptist",
        "brethren",
        "buddhist",
        "catholic",
        "christ_scientist",
        "christian",
        "church_of_god",
        "church_of_scotland",
        "congregational",
        "coptic_orthodox",
        "dutch_reformed",
        "evangelical",
        "evangelical_covenant",
        "greek_catholic",
        "greek_orthodox",
        "ibadi",
        "iglesia_ni_cristo",
        "jehovahs_witness",
        "lutheran",
        "mahayana",
        "mennonite",
        "methodist",
        "mormon",
        "new_apostolic",
        "nondenominational",
        "old_catholic",
        "orthodox",
        "pentecostal",
        "presbyterian",
        "protestant",
        "quaker",
        "reform",
        "reformed",
        "roman_catholic",
        "romanian_orthodox",
        "russian_orthodox",
        "salvation_army",
        "serbian_orthodox",
        "seventh_day_adventist",
        "shia",
        "sunni",
        "theravada",
        "conservative",
        "orthodox_jewish",
        "liberal",
        "united",
        "united_church_of_christ",
        "united_methodist",
        "united_reformed",
        "uniting",
        "vajrayana",
        "zen",
    }
)

# The flags of the chosen places (``{chosen}``: a condition on ``p``), one row per flag.
# Merged places are left out: they are redirects, not places to fix. "Start after end" reads
# the years written in the raw dates as well, since the stored dates cannot disagree (a check
# constraint) and an import keeps a contradicting pair only as text.
FLAGS_COMPUTE = r"""
SELECT c.id, c.dataset_id, f.flag
FROM (SELECT p.id, p.dataset_id, p.name, p.religion, p.denominations, p.location,
             p.region_id, p.start_date, p.end_date, p.start_date_raw, p.end_date_raw
      FROM places_place p WHERE p.status <> 'merged' AND ({chosen})) c
CROSS JOIN LATERAL (VALUES
    ('no_name', c.name = ''),
    ('unknown_religion', c.religion = %(unknown)s),
    ('unrecognised_denomination', NOT (c.denominations <@ %(known)s::text[])),
    ('start_after_end', COALESCE(
        c.start_date > c.end_date,
        substring(c.start_date_raw FROM '[0-9]{{4}}')::int
            > substring(c.end_date_raw FROM '[0-9]{{4}}')::int,
        false)),
    ('outside_region', c.region_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM places_regionpart rp
        WHERE rp.region_id = c.region_id AND ST_Intersects(rp.geom, c.location))),
    ('duplicate_coordinates', EXISTS (
        SELECT 1 FROM places_place o
        WHERE o.location ~= c.location AND ST_Equals(o.location, c.location)
          AND o.id <> c.id AND o.dataset_id = c.dataset_id AND o.status = 'active'))
) AS f(flag, hit)
WHERE f.hit
"""

FLAGS_DELETE = "DELETE FROM places_placeflag WHERE place_id = ANY(%(ids)s)"
ANALYZE_FLAGS = "ANALYZE places_placeflag"
FLAGS_INSERT = "INSERT INTO places_placeflag (place_id, dataset_id, flag) "
# An edit's refresh and beat's may overlap: the flag is there either way.
ON_CONFLICT = " ON CONFLICT DO NOTHING"

# The places of the same dataset standing exactly where any of the given points are.
PLACES_AT = """
SELECT p.id FROM places_place p, unnest(%(points)s::text[]) AS at(ewkt)
WHERE p.location ~= ST_GeomFromEWKT(at.ewkt) AND p.dataset_id = %(dataset)s
"""


def _params() -> dict[str, Any]:
    return {"unknown": Religion.UNKNOWN.value, "known": sorted(KNOWN_DENOMINATIONS)}


def place_flags_refresh(
    *, place_ids: Sequence[int], dataset_id: int, also_at: Iterable[Point | None] = ()
) -> None:
    """Compute again the flags of ``place_ids`` (all of ``dataset_id``) and of the places
    standing at their coordinates or at ``also_at`` (the old coordinates of a moved place),
    whose "duplicate coordinates" flag they may have changed. In the caller's transaction."""
    ids = set(place_ids)
    points = [
        p.ewkt
        for p in (
            *Place.objects.filter(pk__in=ids).values_list("location", flat=True),
            *also_at,
        )
        if p is not None
    ]
    with connection.cursor() as cursor:
        if points:
            cursor.execute(PLACES_AT, {"points": points, "dataset": dataset_id})
            ids.update(row[0] for row in cursor.fetchall())
        chosen = sorted(ids)
        cursor.execute(
            "DELETE FROM places_placeflag WHERE place_id = ANY(%(ids)s)", {"ids": chosen}
        )
        cursor.execute(
            FLAGS_INSERT + FLAGS_COMPUTE.format(chosen="p.id = ANY(%(ids)s)") + ON_CONFLICT,
            {**_params(), "ids": chosen},
        )


@transaction.atomic
def quality_flags_refresh(*, dataset_id: int) -> int:
    """Compute every flag of one dataset again, set-based; returns how many places are
    flagged. Records the change log's position first, so a change committed meanwhile is
    seen by the next refresh rather than missed."""
    last = PlaceChange.objects.filter(dataset_id=dataset_id).aggregate(seq=Max("seq"))["seq"] or 0
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM places_placeflag WHERE dataset_id = %s", [dataset_id])
        cursor.execute(
            FLAGS_INSERT + FLAGS_COMPUTE.format(chosen="p.dataset_id = %(dataset)s") + ON_CONFLICT,
            {**_params(), "dataset": dataset_id},
        )
        # Fresh statistics for the flags the list filters by: after a dataset's flags were
        # rewritten the planner still counted the old ones (162 rows for 59,583 on the
        # million-place set) and planned the list by flag with another filter as a join of
        # every flagged place followed by a sort. ANALYZE reads a sample of at most 30,000 rows.
        cursor.execute(ANALYZE_FLAGS)
    QualityRefresh.objects.update_or_create(dataset_id=dataset_id, defaults={"last_seq": last})
    return PlaceFlag.objects.filter(dataset_id=dataset_id).values("place_id").distinct().count()


def quality_flags_refresh_due() -> list[int]:
    """Refresh the datasets whose change log has entries since their last refresh that no
    service flagged as it wrote them (imports, region maintenance, system steps). Returns
    their ids."""
    done: list[int] = []
    for dataset_id in Dataset.objects.values_list("pk", flat=True):
        state = QualityRefresh.objects.filter(dataset_id=dataset_id).first()
        since = state.last_seq if state else 0
        unflagged = (
            PlaceChange.objects.filter(dataset_id=dataset_id, seq__gt=since)
            .exclude(source__in=[ChangeSource.USER, ChangeSource.DEVICE])
            .exists()
        )
        if unflagged or state is None:
            quality_flags_refresh(dataset_id=dataset_id)
            done.append(dataset_id)
    return done


def quality_flag_counts(*, user: Any) -> dict[int, dict[str, int]]:
    """Dataset id → flag → number of places, for the datasets ``user`` may view (an
    index-only count over the flags' (flag, dataset) index)."""
    rows = PlaceFlag.objects.values("dataset_id", "flag").annotate(n=Count("*"))
    ids = access.dataset_ids_for(user, Action.VIEW)
    if ids is not None:
        rows = rows.filter(dataset_id__in=ids)
    counts: dict[int, dict[str, int]] = {}
    for row in rows.order_by():
        counts.setdefault(row["dataset_id"], {})[row["flag"]] = row["n"]
    return counts


def places_set_religion(
    *, place_ids: Sequence[int], religion: str, user: Any, comment: str = ""
) -> int:
    """Set ``religion`` on each place through ``place_update`` (each logged, each checked
    for ``user``'s right to edit its dataset); returns how many changed."""
    from places.services.places import place_update

    if religion not in Religion.values:
        raise ValueError(f"religion: {religion!r} is not in the vocabulary")
    changed = 0
    with transaction.atomic():
        for place in Place.objects.filter(pk__in=place_ids).only("id", "dataset_id", "religion"):
            access.require(user, Action.EDIT, place.dataset_id)
            if place.religion != religion:
                place_update(place=place, data={"religion": religion}, user=user, comment=comment)
                changed += 1
    return changed


def places_denomination_replace(
    *, place_ids: Sequence[int], old: str, new: str, user: Any, comment: str = ""
) -> int:
    """Replace the denomination ``old`` by ``new`` (kept once, in place) on each place that
    has it, through ``place_update``; returns how many changed."""
    from places.services.places import place_update

    old, new = old.strip(), new.strip()
    if not old:
        raise ValueError("old: give the denomination to replace")
    changed = 0
    with transaction.atomic():
        places = Place.objects.filter(pk__in=place_ids, denominations__contains=[old]).only(
            "id", "dataset_id", "denominations"
        )
        for place in places:
            access.require(user, Action.EDIT, place.dataset_id)
            values: list[str] = []
            for value in place.denominations:
                value = new if value == old else value
                if value and value not in values:
                    values.append(value)
            place_update(place=place, data={"denominations": values}, user=user, comment=comment)
            changed += 1
    return changed


__all__ = [
    "KNOWN_DENOMINATIONS",
    "QualityFlag",
    "place_flags_refresh",
    "places_denomination_replace",
    "places_set_religion",
    "quality_flag_counts",
    "quality_flags_refresh",
    "quality_flags_refresh_due",
]
