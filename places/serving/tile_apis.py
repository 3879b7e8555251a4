"""Vector tiles and their TileJSON; tiles are cached as compressed bytes in Redis.

See ``places.serving.responses`` for how data versions key the cache and the ETags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from django.http import HttpResponse
from django.utils.html import escape
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from places import selectors
from places.serving import tiles
from places.serving.fields import TILE_COLUMNS
from places.serving.params import (
    PlaceFiltersQuery,
    RegionTileQuery,
    request_filters_validated,
)
from places.serving.responses import (
    BytesNegotiation,
    PublicBytesView,
    QueryParamsGuard,
    cached_bytes_response,
    places_version,
    zoom_ttl,
)

MVT_TYPE = "application/vnd.mapbox-vector-tile"


def parse_tile(z: str, x: str, y: str) -> tuple[int, int, int]:
    """Tile coordinates as integers inside the zoom's grid, else HTTP 400 naming the part."""
    values: dict[str, int] = {}
    for name, text in (("z", z), ("x", x), ("y", y)):
        # Plain ASCII digits only: int() would also take "1_0" or other scripts' digits and
        # make alias URLs for one tile.
        if not re.fullmatch(r"-?[0-9]{1,9}", text):
            raise ValidationError({name: [f"must be an integer, got {text[:20]!r}"]})
        values[name] = int(text)
    if not 0 <= values["z"] <= tiles.MAX_ZOOM:
        raise ValidationError({"z": [f"must be between 0 and {tiles.MAX_ZOOM}"]})
    size = 2 ** values["z"]
    for name in ("x", "y"):
        if not 0 <= values[name] < size:
            raise ValidationError(
                {name: [f"must be between 0 and {size - 1} at zoom {values['z']}"]}
            )
    return values["z"], values["x"], values["y"]


PLACE_TILE_FIELDS = ", ".join(["id", *(column.name for column in TILE_COLUMNS)])
TILE_PARAMETERS = [
    OpenApiParameter("z", OpenApiTypes.INT, OpenApiParameter.PATH, description="Zoom, 0–22."),
    OpenApiParameter("x", OpenApiTypes.INT, OpenApiParameter.PATH, description="0 … 2^z − 1."),
    OpenApiParameter("y", OpenApiTypes.INT, OpenApiParameter.PATH, description="0 … 2^z − 1."),
]


@extend_schema(
    summary="Places as a Mapbox Vector Tile",
    description=(
        f"Below zoom {tiles.CLUSTER_BELOW_ZOOM}: layer `clusters` (count, religion = most "
        f"common). From there: layer `places` ({PLACE_TILE_FIELDS}), at most "
        f"{tiles.MAX_FEATURES} per tile, thinned by a stable priority. Gzip-encoded when "
        "the client accepts it; ETag and If-None-Match supported."
    ),
    parameters=[*TILE_PARAMETERS, PlaceFiltersQuery],
    responses={(200, MVT_TYPE): OpenApiTypes.BINARY, 304: None},
)
class PlaceTileApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    def get(self, request: Request, z: str, x: str, y: str) -> HttpResponse:
        tz, tx, ty = parse_tile(z, x, y)
        filters = request_filters_validated(PlaceFiltersQuery, request._request).filters
        version = places_version(filters.dataset_ids, bbox=tiles.tile_bbox(z=tz, x=tx, y=ty))
        key = f"places:{version}:{filters.key()}:{tz}/{tx}/{ty}"
        return cached_bytes_response(
            request,
            key=key,
            ttl=zoom_ttl(tz),
            build=lambda: tiles.place_tile(z=tz, x=tx, y=ty, filters=filters),
            content_type=MVT_TYPE,
            canonical=True,
        )


@extend_schema(
    summary="Region boundaries as a Mapbox Vector Tile (layer `regions`)",
    parameters=[*TILE_PARAMETERS, RegionTileQuery],
    responses={(200, MVT_TYPE): OpenApiTypes.BINARY, 304: None},
)
class RegionTileApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    def get(self, request: Request, z: str, x: str, y: str) -> HttpResponse:
        tz, tx, ty = parse_tile(z, x, y)
        query = RegionTileQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        level = query.validated_data["level"]
        key = f"regions:{selectors.region_version()}:{level}:{tz}/{tx}/{ty}"
        return cached_bytes_response(
            request,
            key=key,
            ttl=zoom_ttl(tz),
            build=lambda: tiles.region_tile(z=tz, x=tx, y=ty, level=level),
            content_type=MVT_TYPE,
            canonical=True,
        )


def _tilejson(
    request: Request,
    path: str,
    layers: list[dict[str, Any]],
    version: str,
    dataset_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    # The tile URLs carry the data version, so clients and CDNs may cache tiles for good;
    # the TileJSON itself is revalidated on every use.
    query = request.GET.copy()
    query["v"] = version
    # Joined by hand: build_absolute_uri would percent-encode the {z}/{x}/{y} placeholders.
    template = request.build_absolute_uri("/").rstrip("/") + path + "?" + query.urlencode()
    # MapLibre renders attribution as HTML: dataset text must not be able to inject markup.
    # Only the datasets shown are credited (every one when the request names none).
    attribution = "; ".join(
        sorted({escape(text) for text in selectors.dataset_attributions(dataset_ids=dataset_ids)})
    )
    return {
        "tilejson": "3.0.0",
        "tiles": [template],
        "minzoom": 0,
        "maxzoom": tiles.MAX_ZOOM,
        "bounds": [-180, -85.0511, 180, 85.0511],
        "attribution": attribution,
        "vector_layers": layers,
    }


@extend_schema(
    summary="TileJSON for the places tiles (MapLibre `source.url`)",
    parameters=[PlaceFiltersQuery],
    responses=OpenApiTypes.OBJECT,
)
class PlaceTileJsonApi(QueryParamsGuard, APIView):
    def get(self, request: Request) -> Response:
        query = PlaceFiltersQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        layers = tiles.place_vector_layers()
        dataset_ids = query.place_query().dataset_ids
        version = places_version(dataset_ids)
        return Response(
            _tilejson(request, "/tiles/places/{z}/{x}/{y}.pbf", layers, version, dataset_ids),
            headers={"Cache-Control": "no-cache"},
        )


@extend_schema(
    summary="TileJSON for the region boundary tiles",
    parameters=[RegionTileQuery],
    responses=OpenApiTypes.OBJECT,
)
class RegionTileJsonApi(QueryParamsGuard, APIView):
    def get(self, request: Request) -> Response:
        RegionTileQuery(data=request.query_params).is_valid(raise_exception=True)
        layers = tiles.region_vector_layers()
        return Response(
            _tilejson(
                request, "/tiles/regions/{z}/{x}/{y}.pbf", layers, selectors.region_version()
            ),
            headers={"Cache-Control": "no-cache"},
        )
