"""Vector tiles, their TileJSON and the viewport: cached as compressed bytes in Redis.

See ``places.responses`` for how data versions key the cache and the ETags.
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpResponse
from django.utils.html import escape
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from places import selectors, tiles, viewport
from places.geo import BBox, BBoxError, parse_bbox
from places.models import Dataset, PlaceStatus, RegionLevel
from places.responses import (
    BytesNegotiation,
    PublicBytesView,
    QueryParamsGuard,
    cached_bytes_response,
    places_version,
)
from places.serializers import PlaceFiltersQuery

MVT_TYPE = "application/vnd.mapbox-vector-tile"


def tile_ttl(z: int) -> int:
    """Seconds a tile may be cached: low zooms change little per edit and cost most to build."""
    return 24 * 3600 if z < 6 else 3600 if z < 10 else 600


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


class PlaceTileQuery(PlaceFiltersQuery):
    """The places filters; maps show active places unless asked otherwise."""

    status = serializers.ChoiceField(choices=PlaceStatus.choices, default=PlaceStatus.ACTIVE)


class RegionTileQuery(serializers.Serializer):
    level = serializers.ChoiceField(choices=RegionLevel.choices, default=RegionLevel.DISTRICT)


TILE_PARAMETERS = [
    OpenApiParameter("z", OpenApiTypes.INT, OpenApiParameter.PATH, description="Zoom, 0–22."),
    OpenApiParameter("x", OpenApiTypes.INT, OpenApiParameter.PATH, description="0 … 2^z − 1."),
    OpenApiParameter("y", OpenApiTypes.INT, OpenApiParameter.PATH, description="0 … 2^z − 1."),
]


@extend_schema(
    summary="Places as a Mapbox Vector Tile",
    description=(
        f"Below zoom {tiles.CLUSTER_BELOW_ZOOM}: layer `clusters` (count, religion = most "
        f"common). From there: layer `places` (id, name, religion, dataset_id), at most "
        f"{tiles.MAX_FEATURES} per tile, thinned by a stable priority. Gzip-encoded when "
        "the client accepts it; ETag and If-None-Match supported."
    ),
    parameters=[*TILE_PARAMETERS, PlaceTileQuery],
    responses={(200, MVT_TYPE): OpenApiTypes.BINARY, 304: None},
)
class PlaceTileApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    def get(self, request: Request, z: str, x: str, y: str) -> HttpResponse:
        tz, tx, ty = parse_tile(z, x, y)
        query = PlaceTileQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = query.place_query()
        version = places_version(filters.dataset_id, bbox=tiles.tile_bbox(z=tz, x=tx, y=ty))
        key = f"places:{version}:{filters.key()}:{tz}/{tx}/{ty}"
        return cached_bytes_response(
            request,
            key=key,
            ttl=tile_ttl(tz),
            build=lambda: tiles.place_tile(z=tz, x=tx, y=ty, filters=filters),
            content_type=MVT_TYPE,
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
            ttl=tile_ttl(tz),
            build=lambda: tiles.region_tile(z=tz, x=tx, y=ty, level=level),
            content_type=MVT_TYPE,
        )


def _tilejson(
    request: Request, path: str, layers: list[dict[str, Any]], version: str
) -> dict[str, Any]:
    # The tile URLs carry the data version, so clients and CDNs may cache tiles for good;
    # the TileJSON itself is revalidated on every use.
    query = request.GET.copy()
    query["v"] = version
    # Joined by hand: build_absolute_uri would percent-encode the {z}/{x}/{y} placeholders.
    template = request.build_absolute_uri("/").rstrip("/") + path + "?" + query.urlencode()
    # MapLibre renders attribution as HTML: dataset text must not be able to inject markup.
    attribution = "; ".join(
        sorted({escape(a) for a in Dataset.objects.values_list("attribution", flat=True) if a})
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
    parameters=[PlaceTileQuery],
    responses=OpenApiTypes.OBJECT,
)
class PlaceTileJsonApi(QueryParamsGuard, APIView):
    def get(self, request: Request) -> Response:
        query = PlaceTileQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        layers = [
            {
                "id": "places",
                "minzoom": tiles.CLUSTER_BELOW_ZOOM,
                "fields": {"name": "String", "religion": "String", "dataset_id": "Number"},
            },
            {
                "id": "clusters",
                "maxzoom": tiles.CLUSTER_BELOW_ZOOM - 1,
                "fields": {"count": "Number", "religion": "String (most common)"},
            },
        ]
        version = places_version(query.place_query().dataset_id)
        return Response(
            _tilejson(request, "/tiles/places/{z}/{x}/{y}.pbf", layers, version),
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
        layers = [
            {"id": "regions", "fields": {"name": "String", "code": "String", "level": "String"}}
        ]
        return Response(
            _tilejson(
                request, "/tiles/regions/{z}/{x}/{y}.pbf", layers, selectors.region_version()
            ),
            headers={"Cache-Control": "no-cache"},
        )


BIN_TYPE = "application/vnd.places.viewport"


class ViewportQuery(PlaceTileQuery):
    """The places filters plus the view."""

    bbox = serializers.CharField(
        help_text="minLon,minLat,maxLon,maxLat; may cross the antimeridian."
    )
    zoom = serializers.IntegerField(min_value=0, max_value=tiles.MAX_ZOOM)
    format = serializers.ChoiceField(choices=["json", "bin"], required=False)

    def validate_bbox(self, value: str) -> BBox:
        try:
            return parse_bbox(value)
        except BBoxError as exc:
            raise serializers.ValidationError(f"Invalid bbox: {exc}.") from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not viewport.box_fits_zoom(attrs["bbox"], attrs["zoom"]):
            raise serializers.ValidationError(
                {
                    "bbox": [
                        f"too large for zoom {attrs['zoom']}: a view spans at most "
                        f"{viewport.MAX_TILES_ACROSS} tiles; lower the zoom or the box"
                    ]
                }
            )
        return attrs


@extend_schema(
    summary="One map view: clusters or every point, as columnar JSON or binary",
    description=(
        "Below zoom 10, or when the box holds more than 250,000 places: clusters whose "
        "counts add up to the places in the box (position, count, count per religion, "
        "bounds). Otherwise every place (ids, lon, lat, religion codes into `legend`). "
        "`format=bin` (or `Accept: application/vnd.places.viewport`) gives the "
        "little-endian layout documented in README. Cached per data version; ETag/304."
    ),
    parameters=[ViewportQuery],
    responses={
        (200, "application/json"): OpenApiTypes.OBJECT,
        (200, BIN_TYPE): OpenApiTypes.BINARY,
    },
    examples=[
        OpenApiExample("Central London", value="bbox=-0.2,51.45,0.0,51.55&zoom=12"),
    ],
)
class ViewportApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    def get(self, request: Request) -> HttpResponse:
        query = ViewportQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        fmt = data.get("format") or (
            "bin" if BIN_TYPE in request.headers.get("Accept", "") else "json"
        )
        zoom = data["zoom"]
        filters = query.place_query(bbox=data["bbox"])
        version = places_version(filters.dataset_id, bbox=filters.bbox)
        key = f"viewport:{version}:{filters.key()}:{zoom}:{fmt}"

        def build() -> bytes:
            view = viewport.viewport_query(query=filters, zoom=zoom)
            return viewport.viewport_binary(view) if fmt == "bin" else viewport.viewport_json(view)

        return cached_bytes_response(
            request,
            key=key,
            ttl=tile_ttl(zoom),
            build=build,
            content_type=BIN_TYPE if fmt == "bin" else "application/json",
            vary="Accept-Encoding, Accept",
        )
