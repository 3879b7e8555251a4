"""Read API for places, regions and datasets (one view per operation)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from places import selectors
from places.filters import PlaceFilter, RegionFilter
from places.models import Dataset, Place, Region
from places.pagination import GeoJsonCursorPagination
from places.serializers import (
    DatasetSerializer,
    PlaceDetailSerializer,
    PlaceSerializer,
    RegionGeoSerializer,
    RegionSerializer,
)


class QueryParamsGuard:
    """Refuse query parameters holding NUL characters: PostgreSQL cannot store or compare them."""

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        bad = sorted(
            {k for k, values in request.query_params.lists() for v in values if "\x00" in v}
        )
        if bad:
            raise ValidationError({name: ["must not contain NUL characters"] for name in bad})
        super().initial(request, *args, **kwargs)  # type: ignore[misc]


LIMIT_PARAMETER = OpenApiParameter(
    "limit", OpenApiTypes.INT, description="Features per page (default 1000, maximum 10000)."
)
BBOX_PARAMETER = OpenApiParameter(
    "bbox",
    OpenApiTypes.STR,
    description=(
        "minLon,minLat,maxLon,maxLat (WGS84). minLon > maxLon crosses the antimeridian. "
        "A malformed box is answered with HTTP 400 naming `bbox`."
    ),
    examples=[OpenApiExample("Central London", value="-0.15,51.49,-0.07,51.53")],
)


@extend_schema(
    summary="Places as GeoJSON, filtered and paged by cursor",
    parameters=[BBOX_PARAMETER, LIMIT_PARAMETER],
)
class PlaceListApi(QueryParamsGuard, generics.ListAPIView):
    serializer_class = PlaceSerializer
    filterset_class = PlaceFilter
    pagination_class = GeoJsonCursorPagination

    def get_queryset(self) -> QuerySet[Place]:
        # The filterset replaces this with the selector's filtered queryset.
        return selectors.place_list()


@extend_schema(summary="One place with its footprint")
class PlaceDetailApi(QueryParamsGuard, generics.RetrieveAPIView):
    serializer_class = PlaceDetailSerializer

    def get_queryset(self) -> QuerySet[Place]:
        return selectors.place_detail_queryset()


@extend_schema(summary="Regions (without geometry)")
class RegionListApi(QueryParamsGuard, generics.ListAPIView):
    serializer_class = RegionSerializer
    filterset_class = RegionFilter

    def get_queryset(self) -> QuerySet[Region]:
        return selectors.region_list()


@extend_schema(summary="One region as a GeoJSON Feature with its boundary")
class RegionDetailApi(QueryParamsGuard, generics.RetrieveAPIView):
    serializer_class = RegionGeoSerializer

    def get_queryset(self) -> QuerySet[Region]:
        return Region.objects.select_related("parent").defer("parent__geom")


@extend_schema(summary="Source datasets with licence and attribution")
class DatasetListApi(QueryParamsGuard, generics.ListAPIView):
    serializer_class = DatasetSerializer
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[Dataset]:
        return selectors.dataset_list()


@extend_schema(summary="One dataset")
class DatasetDetailApi(QueryParamsGuard, generics.RetrieveAPIView):
    serializer_class = DatasetSerializer
    lookup_field = "slug"
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[Dataset]:
        return selectors.dataset_list()
