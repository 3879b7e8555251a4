"""Read API for places, regions and datasets (one view per operation)."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import generics

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
class PlaceListApi(generics.ListAPIView):
    serializer_class = PlaceSerializer
    filterset_class = PlaceFilter
    pagination_class = GeoJsonCursorPagination

    def get_queryset(self) -> QuerySet[Place]:
        # The filterset replaces this with the selector's filtered queryset.
        return selectors.place_list()


@extend_schema(summary="One place with its footprint")
class PlaceDetailApi(generics.RetrieveAPIView):
    serializer_class = PlaceDetailSerializer

    def get_queryset(self) -> QuerySet[Place]:
        return selectors.place_list()


@extend_schema(summary="Regions (without geometry)")
class RegionListApi(generics.ListAPIView):
    serializer_class = RegionSerializer
    filterset_class = RegionFilter

    def get_queryset(self) -> QuerySet[Region]:
        return selectors.region_list()


@extend_schema(summary="One region as a GeoJSON Feature with its boundary")
class RegionDetailApi(generics.RetrieveAPIView):
    serializer_class = RegionGeoSerializer

    def get_queryset(self) -> QuerySet[Region]:
        return Region.objects.select_related("parent")


@extend_schema(summary="Source datasets with licence and attribution")
class DatasetListApi(generics.ListAPIView):
    serializer_class = DatasetSerializer
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[Dataset]:
        return selectors.dataset_list()


@extend_schema(summary="One dataset")
class DatasetDetailApi(generics.RetrieveAPIView):
    serializer_class = DatasetSerializer
    lookup_field = "slug"
    filter_backends: list = []

    def get_queryset(self) -> QuerySet[Dataset]:
        return selectors.dataset_list()
