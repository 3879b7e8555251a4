"""Read-only statistics for researchers (computed on the replica)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import selectors
from places.models import RegionLevel


class RegionStatsQuery(serializers.Serializer):
    level = serializers.ChoiceField(choices=RegionLevel.choices, default=RegionLevel.DISTRICT)


@extend_schema(
    summary="Places per region, per 100,000 people and per 1,000 km²",
    parameters=[OpenApiParameter("level", OpenApiTypes.STR, enum=RegionLevel.values)],
    responses=inline_serializer(
        "RegionStats",
        fields={
            "region_id": serializers.IntegerField(),
            "code": serializers.CharField(),
            "name": serializers.CharField(),
            "places": serializers.IntegerField(),
            "by_religion": serializers.DictField(child=serializers.IntegerField()),
            "per_100k_people": serializers.FloatField(allow_null=True),
            "per_1000_km2": serializers.FloatField(allow_null=True),
        },
        many=True,
    ),
)
class RegionStatsApi(APIView):
    def get(self, request: Request) -> Response:
        query = RegionStatsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(selectors.region_place_counts(level=query.validated_data["level"]))
