"""The collections ``/ogc/`` serves, their queryables, sortables and extents.

==================  =====================================================================
collection id       what it holds
==================  =====================================================================
``places``          every place (the ``places`` fast path: ``PlaceQuery`` and its SQL)
``places-<slug>``   the places of one dataset (the same, with ``dataset_id`` set)
``regions``         the regions (countries, their subdivisions and districts)
``sensors``         the edge nodes' sensors (``places.ogc.sensors``)
==================  =====================================================================

Place collections show active places unless a request names a status (``status=any`` for
every one), as the rest of the API does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django.db import connection
from django.db.models import Exists, OuterRef

from ingestion.edge.sensor_map import sensor_map_version
from places import selectors
from places.models import Dataset, Place, PlaceStatus, RegionLevel, Religion
from places.ogc import sensors
from places.ogc.cql import Queryable
from places.serving.query import ANY_STATUS

PLACES = "places"
REGIONS = "regions"
SENSORS = "sensors"
DATASET_PREFIX = "places-"


def _queryables(*items: Queryable) -> dict[str, Queryable]:
    return {q.name: q for q in items}


PLACE_QUERYABLES = _queryables(
    Queryable("geometry", "p.location", "geometry", "The place's representative point."),
    Queryable("id", "p.id", "integer"),
    Queryable("name", "p.name", "string", "Empty when the source has no name."),
    Queryable("religion", "p.religion", "string", enum=tuple(Religion.values)),
    Queryable(
        "denominations",
        "p.denominations",
        "array",
        "Normalised denominations; `denominations = 'anglican'` means one of them is.",
    ),
    Queryable(
        "dataset",
        "(SELECT ds.slug FROM places_dataset ds WHERE ds.id = p.dataset_id)",
        "string",
        "The source dataset's slug.",
    ),
    Queryable("source_key", "p.source_key", "string"),
    Queryable(
        "country",
        "(SELECT cr.code FROM places_region cr WHERE cr.id = p.country_id)",
        "string",
        "Country code (Natural Earth ADM0_A3).",
    ),
    Queryable(
        "status",
        "p.status",
        "string",
        f"`{PlaceStatus.ACTIVE.value}` unless a filter or parameter names it.",
        enum=tuple(PlaceStatus.values),
    ),
    Queryable("start_date", "p.start_date", "date"),
    Queryable("end_date", "p.end_date", "date"),
    Queryable("version", "p.version", "integer"),
    Queryable("updated_at", "p.updated_at", "date-time"),
)
REGION_QUERYABLES = _queryables(
    Queryable("geometry", "r.geom", "geometry", "The region's boundary."),
    Queryable("id", "r.id", "integer"),
    Queryable("name", "r.name", "string"),
    Queryable("level", "r.level", "string", enum=tuple(RegionLevel.values)),
    Queryable("code", "r.code", "string"),
    Queryable("code_system", "r.code_system", "string"),
    Queryable("parent", "r.parent_id", "integer", "The id of the region it lies in."),
    Queryable("population", "r.population", "integer"),
    Queryable("area_km2", "r.area_km2", "number"),
    Queryable("updated_at", "r.updated_at", "date-time"),
)
# Sorting is keyset paging on (key, id): only columns that are never null.
PLACE_SORTABLES = ("id", "name", "religion", "status", "version", "updated_at")
REGION_SORTABLES = ("id", "name", "level", "code", "updated_at")
REGION_PROPERTIES = (
    "name",
    "level",
    "code",
    "code_system",
    "parent",
    "population",
    "area_km2",
    "updated_at",
)


@dataclass(frozen=True)
class Collection:
    id: str
    title: str
    description: str
    kind: str  # PLACES, REGIONS or SENSORS
    dataset: Dataset | None = None
    # The sensors' queryables, read from the parameters table when the collection is built.
    sensor_queryables: tuple[Queryable, ...] = ()

    @property
    def queryables(self) -> dict[str, Queryable]:
        if self.kind == SENSORS:
            return {q.name: q for q in self.sensor_queryables}
        return PLACE_QUERYABLES if self.kind == PLACES else REGION_QUERYABLES

    @property
    def sortables(self) -> tuple[str, ...]:
        if self.kind == SENSORS:
            return sensors.SORTABLES
        return PLACE_SORTABLES if self.kind == PLACES else REGION_SORTABLES

    @property
    def has_tiles(self) -> bool:
        """Sensors have no tiles of their own (the map draws them from their GeoJSON)."""
        return self.kind != SENSORS

    @property
    def dataset_id(self) -> int | None:
        return self.dataset.pk if self.dataset is not None else None


def _dataset_collection(dataset: Dataset) -> Collection:
    text = f"The places of the dataset {dataset.name or dataset.slug}."
    if dataset.attribution:
        text += f" {dataset.attribution}"
    if dataset.licence:
        text += f" Licence: {dataset.licence}."
    return Collection(
        id=f"{DATASET_PREFIX}{dataset.slug}",
        title=dataset.name or dataset.slug,
        description=text,
        kind=PLACES,
        dataset=dataset,
    )


ALL_PLACES = Collection(
    id=PLACES,
    title="Places",
    description=(
        "Every place of every dataset (places of worship first of all): active ones unless "
        f"`status` names another or `{ANY_STATUS}`."
    ),
    kind=PLACES,
)
ALL_REGIONS = Collection(
    id=REGIONS,
    title="Regions",
    description="Countries, their subdivisions and districts, with their boundaries.",
    kind=REGIONS,
)


def _sensors_collection() -> Collection:
    return Collection(
        id=SENSORS,
        title="Sensors",
        description=(
            "The edge nodes' sensors, with their node and the values of their newest reading "
            "(one property per measured parameter). `datetime` selects the sensors with a "
            "reading in the interval."
        ),
        kind=SENSORS,
        sensor_queryables=tuple(sensors.sensor_queryables().values()),
    )


def collection_list() -> list[Collection]:
    """All places, one collection per dataset (by slug), the regions, then the sensors."""
    # Datasets of regions only (boundaries) hold no places: no collection of their own.
    having = Place.objects.filter(dataset_id=OuterRef("pk"))
    datasets = [_dataset_collection(d) for d in selectors.dataset_list().filter(Exists(having))]
    return [ALL_PLACES, *datasets, ALL_REGIONS, _sensors_collection()]


def collection_get(*, collection_id: str) -> Collection | None:
    if collection_id == PLACES:
        return ALL_PLACES
    if collection_id == REGIONS:
        return ALL_REGIONS
    if collection_id == SENSORS:
        return _sensors_collection()
    if collection_id.startswith(DATASET_PREFIX):
        slug = collection_id.removeprefix(DATASET_PREFIX)
        dataset = selectors.dataset_list().filter(slug=slug).first()
        if dataset is not None:
            return _dataset_collection(dataset)
    return None


@dataclass(frozen=True)
class Extent:
    bbox: tuple[float, float, float, float] | None
    # ISO dates of the dated places' first start and last end (None: open); for sensors the
    # times of the first and the newest reading.
    start: str | None
    end: str | None

    def as_json(self) -> dict[str, Any]:
        spatial = {
            "bbox": [list(self.bbox) if self.bbox else [-180.0, -90.0, 180.0, 90.0]],
            "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
        }
        found: dict[str, Any] = {"spatial": spatial}
        if self.start or self.end:
            found["temporal"] = {
                "interval": [[self.start, self.end]],
                "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian",
            }
        return found


PLACE_EXTENT = """
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e), s, f
FROM (
    SELECT ST_Extent(p.location) AS e, min(p.start_date)::text AS s,
           -- A dated place without an end date is still standing: the extent is open.
           CASE WHEN bool_or(p.start_date IS NOT NULL AND p.end_date IS NULL) THEN NULL
                ELSE greatest(max(p.end_date), max(p.start_date))::text END AS f
    FROM places_place p
    WHERE (%(dataset_id)s::bigint IS NULL OR p.dataset_id = %(dataset_id)s::bigint)
      AND p.status = %(status)s
) found
"""
REGION_EXTENT = """
SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e), NULL, NULL
FROM (SELECT ST_Extent(r.geom) AS e FROM places_region r) found
"""
EXTENT_TTL = 24 * 3600


def collection_extent(*, collection: Collection) -> Extent:
    """The collection's box and, for places, the span of the dated places' dates (for
    sensors, of their readings).

    One scan of the collection, cached per data version: a write to the collection's places
    (or to any region, or a batch of readings) makes the next request read it again.
    """
    if collection.kind == PLACES:
        ids = [collection.dataset_id] if collection.dataset_id is not None else None
        version = selectors.data_version(dataset_ids=ids)
        sql, params = (
            PLACE_EXTENT,
            {
                "dataset_id": collection.dataset_id,
                "status": PlaceStatus.ACTIVE.value,
            },
        )
    elif collection.kind == SENSORS:
        version = sensor_map_version()
    else:
        version = selectors.region_version()
        sql, params = REGION_EXTENT, {}
    key = f"ogc:extent:{collection.id}:{version}"
    found = cache.get(key)
    if found is None:
        if collection.kind == SENSORS:
            x0, y0, x1, y1, start, end = sensors.sensor_extent_row()
        else:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                x0, y0, x1, y1, start, end = cursor.fetchone()
        box = (x0, y0, x1, y1) if x0 is not None else None
        found = Extent(bbox=box, start=start, end=end)
        cache.set(key, found, timeout=EXTENT_TTL)
    return found
