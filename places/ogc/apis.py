"""The ``/ogc/`` operations: OGC API – Features (Parts 1 and 3) and Tiles, one view each.

Features pages are written by PostgreSQL (``places.ogc.items``) and answered through the
same Redis cache and ETags as the places list, keyed by the data version of what they show;
tiles are the ``/tiles/`` path's own tiles, under the same cache keys, so a tile built for
the map serves a GIS client and the other way round.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from django.http import Http404, HttpResponse, HttpResponseBase, QueryDict
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.request import Request

from ingestion.edge.sensor_map import sensor_map_version
from places import selectors
from places.models import RegionLevel
from places.ogc import documents, sensors
from places.ogc.collections import (
    PLACES,
    SENSORS,
    Collection,
    collection_extent,
    collection_get,
    collection_list,
)
from places.ogc.documents import GEOJSON, HTML, JSON, MVT, WEB_MERCATOR_QUAD
from places.ogc.items import ItemsQuery, Page, item_get, items_page
from places.ogc.params import (
    ITEMS_PARAMS,
    PLACE_LIMITS,
    REGION_LIMITS,
    OgcError,
    collection_properties,
    items_query,
    one,
    output_format,
    parse_properties,
    refuse_unknown,
)
from places.serving import tiles
from places.serving.query import PlaceQuery, dataset_ids_of
from places.serving.responses import (
    BytesNegotiation,
    PublicBytesView,
    cached_bytes_response,
    places_version,
    zoom_ttl,
)
from places.serving.tile_apis import parse_tile

ITEMS_TTL = 3600
# Documents answered as JSON or HTML by the Accept header: a cache must keep them apart.
NEGOTIATED = {"Cache-Control": "no-cache", "Vary": "Accept"}
TILE_NAMES = {"z": "tileMatrix", "x": "tileCol", "y": "tileRow"}


class OgcApi(BytesNegotiation, PublicBytesView):
    # Errors in the standard's exception body ({"code", "description"}), naming the parameter.

    def handle_exception(self, exc: Exception) -> HttpResponseBase:  # type: ignore[override]
        if isinstance(exc, OgcError):
            return _error(exc.status, exc.code, exc.description, exc.parameter)
        if isinstance(exc, Http404):
            return _error(404, "NotFound", str(exc) or "Not found.", None)
        if isinstance(exc, APIException) and not isinstance(exc, ValidationError):
            response = super().handle_exception(exc)
            return _error(response.status_code, type(exc).__name__, str(exc.detail), None)
        return super().handle_exception(exc)

    def url(self, path: str) -> str:
        """An absolute URL of a path under /ogc/ (query strings kept as written)."""
        return self.request.build_absolute_uri(reverse("ogc-landing")) + path

    def fmt(self, known: set[str] | None = None) -> str:
        params = self.request.query_params
        refuse_unknown(params, (known or set()) | {"f"})
        return output_format(params, self.request.headers.get("Accept", ""))

    def answer(
        self, document: dict[str, Any], *, fmt: str, title: str, json_type: str = JSON
    ) -> HttpResponse:
        if fmt == "html":
            return _html(self.request, title=title, document=document)
        return HttpResponse(
            json.dumps(document, separators=(",", ":")),
            content_type=json_type,
            headers=NEGOTIATED,
        )


def _error(status: int, code: str, description: str, parameter: str | None) -> HttpResponse:
    body: dict[str, Any] = {"code": code, "description": description}
    if parameter:
        body["parameter"] = parameter
    return HttpResponse(json.dumps(body), status=status, content_type=JSON)


def _html(
    request: Request, *, title: str, document: dict[str, Any], features: Any = None
) -> HttpResponse:
    config = {
        "basemap": {
            "land": static("places/basemap/ne_50m_land.geojson"),
            "borders": static("places/basemap/ne_50m_borders.geojson"),
            "towns": static("places/basemap/ne_50m_places.geojson"),
        },
        "features": features,
        "bbox": ((document.get("extent") or {}).get("spatial") or {}).get("bbox", [None])[0],
    }
    links = [
        item
        for item in document.get("links", [])
        if item.get("type") != MVT and not item.get("templated")
    ]
    context = {
        "title": title,
        "document": document,
        "pretty": json.dumps(
            {k: v for k, v in document.items() if k not in ("links", "features")}, indent=2
        ),
        "links": links,
        "features": (features or {}).get("features", []) if features else [],
        "map_config": config,
        "has_map": features is not None,
    }
    response = render(request._request, "ogc/page.html", context)
    for name, value in NEGOTIATED.items():
        response[name] = value
    return response


def _collection(collection_id: str) -> Collection:
    found = collection_get(collection_id=collection_id)
    if found is None:
        raise Http404(f"No collection {collection_id[:60]!r}.")
    return found


def _tiled_collection(collection_id: str) -> Collection:
    found = _collection(collection_id)
    if not found.has_tiles:
        raise Http404(f"The collection {found.id!r} has no tiles.")
    return found


OGC_ERROR = {
    "type": "object",
    "properties": {
        "code": {"type": "string"},
        "description": {"type": "string"},
        "parameter": {"type": "string"},
    },
    "required": ["code", "description"],
}
F_PARAM = OpenApiParameter(
    "f",
    OpenApiTypes.STR,
    enum=["json", "html"],
    description="The format (the Accept header when left out: `text/html` first is HTML).",
)
COLLECTION_ID = OpenApiParameter(
    "collection_id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="`places`, `places-<dataset slug>`, `regions` or `sensors`.",
)


def _responses(json_type: str = JSON, extra: dict | None = None) -> dict:
    found: dict[Any, Any] = {
        (200, json_type): OpenApiTypes.OBJECT,
        (200, HTML): OpenApiTypes.STR,
        400: OpenApiResponse(OGC_ERROR, description="A parameter is invalid (named)."),
        404: OpenApiResponse(OGC_ERROR, description="No such collection or feature."),
    }
    return found | (extra or {})


@extend_schema(
    summary="OGC API landing page",
    tags=["ogc"],
    parameters=[F_PARAM],
    responses=_responses(),
)
class LandingApi(OgcApi):
    @extend_schema(operation_id="ogc_landing")
    def get(self, request: Request) -> HttpResponse:
        fmt = self.fmt()
        schema_url = self.url("api")
        docs_url = request.build_absolute_uri(reverse("api-docs"))
        document = documents.landing(self.url, schema_url=schema_url, docs_url=docs_url)
        return self.answer(document, fmt=fmt, title="Places — OGC API")


@extend_schema(
    summary="Conformance classes this API implements",
    tags=["ogc"],
    parameters=[F_PARAM],
    responses=_responses(),
)
class ConformanceApi(OgcApi):
    @extend_schema(operation_id="ogc_conformance")
    def get(self, request: Request) -> HttpResponse:
        fmt = self.fmt()
        document = {
            "links": documents.self_links(self.url, "conformance"),
            "conformsTo": documents.CONFORMANCE,
        }
        return self.answer(document, fmt=fmt, title="Conformance")


@extend_schema(
    summary="The collections: all places, the places of each dataset, the regions",
    tags=["ogc"],
    parameters=[F_PARAM],
    responses=_responses(),
)
class CollectionsApi(OgcApi):
    @extend_schema(operation_id="ogc_collections")
    def get(self, request: Request) -> HttpResponse:
        fmt = self.fmt()
        found = [
            documents.collection(self.url, c, collection_extent(collection=c))
            for c in collection_list()
        ]
        document = {"links": documents.self_links(self.url, "collections"), "collections": found}
        return self.answer(document, fmt=fmt, title="Collections")


@extend_schema(
    summary="One collection with its extent",
    tags=["ogc"],
    parameters=[COLLECTION_ID, F_PARAM],
    responses=_responses(),
)
class CollectionApi(OgcApi):
    @extend_schema(operation_id="ogc_collection")
    def get(self, request: Request, collection_id: str) -> HttpResponse:
        fmt = self.fmt()
        found = _collection(collection_id)
        document = documents.collection(self.url, found, collection_extent(collection=found))
        return self.answer(document, fmt=fmt, title=found.title)


@extend_schema(
    summary="The properties a collection's filters may name (JSON Schema)",
    tags=["ogc"],
    parameters=[COLLECTION_ID, F_PARAM],
    responses=_responses("application/schema+json"),
)
class QueryablesApi(OgcApi):
    @extend_schema(operation_id="ogc_queryables")
    def get(self, request: Request, collection_id: str) -> HttpResponse:
        fmt = self.fmt()
        found = _collection(collection_id)
        return self.answer(
            documents.queryables(self.url, found),
            fmt=fmt,
            title=f"{found.title}: queryables",
            json_type="application/schema+json",
        )


ITEMS_PARAMETERS = [
    COLLECTION_ID,
    OpenApiParameter("f", OpenApiTypes.STR, enum=["json", "html"], description="GeoJSON or HTML."),
    OpenApiParameter(
        "bbox",
        OpenApiTypes.STR,
        description=(
            "minLon,minLat,maxLon,maxLat (or six numbers with heights, not used); "
            "minLon > maxLon crosses the antimeridian. Latitude first when `bbox-crs` is EPSG:4326."
        ),
    ),
    OpenApiParameter(
        "bbox-crs",
        OpenApiTypes.STR,
        enum=[
            "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
            "http://www.opengis.net/def/crs/EPSG/0/4326",
        ],
    ),
    OpenApiParameter(
        "datetime",
        OpenApiTypes.STR,
        description=(
            "A date, date-time or interval (`1900-01-01/..`). Places: the dated places (with "
            "a start date) whose span from start_date to end_date (or start_date alone) meets it. "
            "Sensors: those with a reading in it (a date is the whole UTC day)."
        ),
    ),
    OpenApiParameter(
        "limit",
        # Clients read the page size they may ask for here (GDAL's OAPIF driver does).
        {"type": "integer", "minimum": 1, "maximum": PLACE_LIMITS[1], "default": PLACE_LIMITS[0]},
        description=(
            f"Features per page: places 1–{PLACE_LIMITS[1]:,} (default {PLACE_LIMITS[0]}), "
            f"regions 1–{REGION_LIMITS[1]} (default {REGION_LIMITS[0]}), "
            f"sensors 1–{sensors.LIMITS[1]:,} (default {sensors.LIMITS[0]})."
        ),
    ),
    OpenApiParameter("cursor", OpenApiTypes.STR, description="Opaque: follow the `next` link."),
    OpenApiParameter(
        "filter",
        OpenApiTypes.STR,
        description=(
            "CQL2 text on the queryables: comparisons, LIKE, BETWEEN, IN, IS NULL, AND/OR/NOT "
            "and the spatial functions (S_INTERSECTS, S_WITHIN, … with WKT or BBOX in CRS84)."
        ),
    ),
    OpenApiParameter("filter-lang", OpenApiTypes.STR, enum=["cql2-text"]),
    OpenApiParameter(
        "filter-crs", OpenApiTypes.STR, enum=["http://www.opengis.net/def/crs/OGC/1.3/CRS84"]
    ),
    OpenApiParameter(
        "properties", OpenApiTypes.STR, description="Comma-separated properties to return."
    ),
    OpenApiParameter(
        "sortby",
        OpenApiTypes.STR,
        description="One sortable (`name`, `-updated_at`, …; `-` descending); id breaks ties.",
    ),
    OpenApiParameter("name", OpenApiTypes.STR, description="Equal to (any queryable works)."),
    OpenApiParameter("religion", OpenApiTypes.STR, description="Places: equal to."),
    OpenApiParameter(
        "status", OpenApiTypes.STR, description="Places: active by default; `any` for all."
    ),
    OpenApiParameter("level", OpenApiTypes.STR, description="Regions: equal to."),
]


@extend_schema(
    summary="A collection's features (GeoJSON), filtered, paged by `next` links",
    description=(
        "Pages follow the sort order (id unless `sortby`) by keyset: follow the `next` link "
        "until there is none. `numberMatched` is exact up to 10,000 places and the query "
        "planner's estimate above that (`numberMatchedExact: false`). Property filters: any "
        "queryable as `name=value` (see `/queryables`). Cached per data version, with an ETag."
    ),
    tags=["ogc"],
    parameters=ITEMS_PARAMETERS,
    responses=_responses(GEOJSON, {304: None}),
)
class ItemsApi(OgcApi):
    @extend_schema(operation_id="ogc_items")
    def get(self, request: Request, collection_id: str) -> HttpResponseBase:
        found = _collection(collection_id)
        fmt = output_format(request.query_params, request.headers.get("Accept", ""))
        query, after = items_query(request.query_params, collection=found)
        if found.kind == PLACES:
            version = places_version(dataset_ids_of(found.dataset_id), bbox=query.bbox)
        elif found.kind == SENSORS:
            version = sensor_map_version()
        else:
            version = selectors.region_version()
        items_url = self.url(f"collections/{found.id}/items")

        def page_url(params: QueryDict, fmt_: str) -> str:
            params = params.copy()
            params["f"] = fmt_
            return f"{items_url}?{params.urlencode()}"

        def build() -> bytes:
            page = items_page(query=query, after=after)
            return _feature_collection(request, query, page, page_url)

        key = f"ogc:{version}:{query.key()}:{after}:{items_url}:{request.GET.urlencode()}"
        if fmt == "html":
            body = json.loads(build())
            return _html(
                request,
                title=f"{found.title}: features",
                document={
                    "links": body["links"],
                    "numberMatched": body["numberMatched"],
                    "numberReturned": body["numberReturned"],
                },
                features=body,
            )
        return cached_bytes_response(
            request,
            key=key,
            ttl=ITEMS_TTL,
            build=build,
            content_type=GEOJSON,
            vary="Accept-Encoding, Accept",
        )


def _feature_collection(request: Request, query: ItemsQuery, page: Page, page_url: Any) -> bytes:
    params = request.GET.copy()
    params.pop("cursor", None)
    params.pop("f", None)
    here = request.GET.copy()
    here.pop("f", None)
    links = [
        documents.link(page_url(here, "json"), "self", GEOJSON, "This page"),
        documents.link(page_url(here, "html"), "alternate", HTML, "This page as HTML"),
    ]
    if page.cursor:
        params["cursor"] = page.cursor
        links.append(documents.link(page_url(params, "json"), "next", GEOJSON, "Next page"))
    head = json.dumps(
        {
            "type": "FeatureCollection",
            "numberMatched": page.matched,
            "numberMatchedExact": page.exact,
            "numberReturned": page.returned,
            "links": links,
        },
        separators=(",", ":"),
    )
    # The features are already JSON text: spliced in, never parsed again.
    return (head[:-1] + ',"features":[' + page.features + "]}").encode()


@extend_schema(
    summary="One feature of a collection",
    tags=["ogc"],
    parameters=[
        COLLECTION_ID,
        OpenApiParameter("feature_id", OpenApiTypes.INT, OpenApiParameter.PATH),
        F_PARAM,
        OpenApiParameter("properties", OpenApiTypes.STR, description="Comma-separated."),
    ],
    responses=_responses(GEOJSON),
)
class ItemApi(OgcApi):
    @extend_schema(operation_id="ogc_item")
    def get(self, request: Request, collection_id: str, feature_id: str) -> HttpResponse:
        fmt = self.fmt({"properties"})
        found = _collection(collection_id)
        if not feature_id.isdigit() or len(feature_id) > 18:
            raise Http404("No such feature.")
        text = one(request.query_params, "properties")
        properties = (
            parse_properties(text, found) if text is not None else collection_properties(found)
        )
        feature = item_get(collection=found, feature_id=int(feature_id), properties=properties)
        if feature is None:
            raise Http404("No such feature in this collection.")
        document = json.loads(feature)
        base = f"collections/{found.id}"
        document["links"] = [
            *documents.self_links(self.url, f"{base}/items/{feature_id}", json_type=GEOJSON),
            documents.link(self.url(base), "collection", JSON, "The collection"),
        ]
        if fmt == "html":
            name = document["properties"].get("name") or f"Feature {feature_id}"
            return _html(
                request,
                title=name,
                document={"links": document["links"], **document["properties"]},
                features={"type": "FeatureCollection", "features": [document]},
            )
        return HttpResponse(json.dumps(document), content_type=GEOJSON, headers=NEGOTIATED)


@extend_schema(
    summary="Tile matrix sets (WebMercatorQuad)",
    tags=["ogc"],
    parameters=[F_PARAM],
    responses=_responses(),
)
class TileMatrixSetsApi(OgcApi):
    @extend_schema(operation_id="ogc_tile_matrix_sets")
    def get(self, request: Request) -> HttpResponse:
        fmt = self.fmt()
        tms = documents.WEB_MERCATOR_QUAD
        document = {
            "links": documents.self_links(self.url, "tileMatrixSets"),
            "tileMatrixSets": [
                {
                    "id": tms,
                    "title": "Google Maps Compatible for the World",
                    "uri": documents.WEB_MERCATOR_QUAD_URI,
                    "links": [documents.link(self.url(f"tileMatrixSets/{tms}"), "self", JSON, tms)],
                }
            ],
        }
        return self.answer(document, fmt=fmt, title="Tile matrix sets")


TMS_ID = OpenApiParameter(
    "tile_matrix_set_id", OpenApiTypes.STR, OpenApiParameter.PATH, enum=[WEB_MERCATOR_QUAD]
)


def _tms(tile_matrix_set_id: str) -> None:
    if tile_matrix_set_id != WEB_MERCATOR_QUAD:
        raise Http404(
            f"No tile matrix set {tile_matrix_set_id[:60]!r}; there is {WEB_MERCATOR_QUAD}."
        )


@extend_schema(
    summary="A tile matrix set's definition",
    tags=["ogc"],
    parameters=[TMS_ID, F_PARAM],
    responses=_responses(),
)
class TileMatrixSetApi(OgcApi):
    @extend_schema(operation_id="ogc_tile_matrix_set")
    def get(self, request: Request, tile_matrix_set_id: str) -> HttpResponse:
        fmt = self.fmt()
        _tms(tile_matrix_set_id)
        return self.answer(documents.tile_matrix_set(), fmt=fmt, title=WEB_MERCATOR_QUAD)


@extend_schema(
    summary="A collection's vector tilesets",
    tags=["ogc"],
    parameters=[COLLECTION_ID, F_PARAM],
    responses=_responses(),
)
class TilesetListApi(OgcApi):
    @extend_schema(operation_id="ogc_tilesets")
    def get(self, request: Request, collection_id: str) -> HttpResponse:
        fmt = self.fmt()
        found = _tiled_collection(collection_id)
        return self.answer(documents.tileset_list(self.url, found), fmt=fmt, title="Tilesets")


@extend_schema(
    summary="A collection's vector tileset in WebMercatorQuad",
    tags=["ogc"],
    parameters=[COLLECTION_ID, TMS_ID, F_PARAM],
    responses=_responses(),
)
class TilesetApi(OgcApi):
    @extend_schema(operation_id="ogc_tileset")
    def get(self, request: Request, collection_id: str, tile_matrix_set_id: str) -> HttpResponse:
        fmt = self.fmt()
        found = _tiled_collection(collection_id)
        _tms(tile_matrix_set_id)
        return self.answer(documents.tileset(self.url, found), fmt=fmt, title="Tileset")


REGION_LEVEL = OpenApiParameter(
    "level",
    OpenApiTypes.STR,
    description="Regions: the level the tile draws (default district).",
)


@extend_schema(
    summary="A vector tile of a collection (Mapbox Vector Tile)",
    description=(
        f"The `/tiles/` path's tiles: below zoom {tiles.CLUSTER_BELOW_ZOOM} the places "
        "tiles carry layer `clusters`, from there layer `places`. Cached per data version, "
        "with an ETag."
    ),
    tags=["ogc"],
    parameters=[
        COLLECTION_ID,
        TMS_ID,
        OpenApiParameter(
            "tile_matrix", OpenApiTypes.INT, OpenApiParameter.PATH, description="Zoom, 0–22."
        ),
        OpenApiParameter("tile_row", OpenApiTypes.INT, OpenApiParameter.PATH, description="y."),
        OpenApiParameter("tile_col", OpenApiTypes.INT, OpenApiParameter.PATH, description="x."),
        OpenApiParameter("f", OpenApiTypes.STR, enum=["mvt"]),
        REGION_LEVEL,
    ],
    responses={
        (200, MVT): OpenApiTypes.BINARY,
        304: None,
        400: OpenApiResponse(OGC_ERROR, description="A parameter is invalid (named)."),
        404: OpenApiResponse(OGC_ERROR, description="No such collection."),
    },
)
class TileApi(OgcApi):
    @extend_schema(operation_id="ogc_tile")
    def get(
        self,
        request: Request,
        collection_id: str,
        tile_matrix_set_id: str,
        tile_matrix: str,
        tile_row: str,
        tile_col: str,
    ) -> HttpResponse:
        found = _tiled_collection(collection_id)
        _tms(tile_matrix_set_id)
        params = request.query_params
        refuse_unknown(params, {"f", "level"} if found.kind != PLACES else {"f"})
        if one(params, "f") not in (None, "mvt"):
            raise OgcError("must be mvt", parameter="f")
        try:
            z, x, y = parse_tile(tile_matrix, tile_col, tile_row)
        except ValidationError as exc:
            detail: dict[str, Any] = dict(exc.detail)  # type: ignore[arg-type]
            name = next(iter(detail))
            raise OgcError(str(next(iter(detail[name]))), parameter=TILE_NAMES[name]) from None
        if found.kind == PLACES:
            # The same query and cache key as /tiles/places/ (PlaceTileApi): one cached tile.
            filters = PlaceQuery(dataset_ids=dataset_ids_of(found.dataset_id))
            version = places_version(filters.dataset_ids, bbox=tiles.tile_bbox(z=z, x=x, y=y))
            key = f"places:{version}:{filters.key()}:{z}/{x}/{y}"

            def build() -> bytes:
                return tiles.place_tile(z=z, x=x, y=y, filters=filters)

        else:
            level = one(params, "level") or "district"
            if level not in RegionLevel.values:
                raise OgcError(f"must be one of {', '.join(RegionLevel.values)}", parameter="level")
            key = f"regions:{selectors.region_version()}:{level}:{z}/{x}/{y}"

            def build() -> bytes:
                return tiles.region_tile(z=z, x=x, y=y, level=level)

        return cached_bytes_response(
            request, key=key, ttl=zoom_ttl(z), build=build, content_type=MVT, canonical=True
        )


OPENAPI_TYPE = "application/vnd.oai.openapi+json;version=3.0"


@functools.cache
def _whole_schema() -> dict[str, Any]:
    # Built once per process (a second or more): the code, not the data, decides it.
    return SchemaGenerator().get_schema(request=None, public=True)


@extend_schema(exclude=True)
class ApiDefinitionApi(OgcApi):
    """The landing page's ``service-desc``: the OpenAPI definition of the ``/ogc/`` paths,
    relative to ``/ogc/`` (its server), with each collection's items path written out with
    that collection's queryables as parameters, where clients look for them (GDAL sends a
    filter on a property it finds there to the server instead of reading everything)."""

    def get(self, request: Request) -> HttpResponse:
        self.fmt()
        schema = copy.deepcopy(_whole_schema())
        prefix = reverse("ogc-landing").rstrip("/")
        paths = {
            path.removeprefix(prefix) or "/": item
            for path, item in schema["paths"].items()
            if path.startswith(prefix + "/")
        }
        template = paths.get("/collections/{collection_id}/items", {}).get("get")
        for found in collection_list() if template else []:
            operation = {k: v for k, v in template.items() if k != "operationId"}
            operation["operationId"] = f"ogc_items_{found.id}"
            operation["parameters"] = [
                p for p in template["parameters"] if p["name"] in ITEMS_PARAMS
            ] + [
                {"in": "query", "name": name, "schema": q.json_schema(), "required": False}
                for name, q in found.queryables.items()
                if q.kind != "geometry"
            ]
            paths[f"/collections/{found.id}/items"] = {"get": operation}
        schema["paths"] = paths
        schema["servers"] = [{"url": self.url("").rstrip("/")}]
        return HttpResponse(
            json.dumps(schema, default=str),
            content_type=OPENAPI_TYPE,
            headers={"Cache-Control": "no-cache"},
        )
