"""Read-only statistics for researchers (computed on the replica, cached per data version)."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from analytics import selectors
from config.routers import REPLICA
from places import selectors as places_selectors
from places.models import RegionLevel
from places.serving.params import QueryParams
from places.serving.responses import PublicBytesView, QueryParamsGuard, cached_bytes_response

# Every key holds the versions the figures follow, so this bounds memory, not staleness.
STATS_TTL = 24 * 3600


class RegionStatsQuery(QueryParams):
    level = serializers.ChoiceField(choices=RegionLevel.choices, default=RegionLevel.DISTRICT)


@extend_schema(
    summary="Places per region, per 100,000 people and per 1,000 km²",
    description=(
        "Computed on the read replica and cached until a place or a region changes; "
        "responses carry an ETag (send `If-None-Match` for a 304)."
    ),
    parameters=[OpenApiParameter("level", OpenApiTypes.STR, enum=RegionLevel.values)],
    responses={
        200: inline_serializer(
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
        304: None,
    },
)
class RegionStatsApi(QueryParamsGuard, PublicBytesView):
    """The figures follow every place and region: the key holds both versions, read on the
    replica before the figures are, so a lagging replica's answer is never cached under a
    newer version than the data it shows."""

    def get(self, request: Request) -> HttpResponse:
        query = RegionStatsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        level = query.validated_data["level"]
        versions = (
            places_selectors.data_version(using=REPLICA),
            places_selectors.region_version(using=REPLICA),
        )
        key = f"stats:regions:{level}:{versions[0]}:{versions[1]}"

        def build() -> bytes:
            return JSONRenderer().render(selectors.region_place_counts(level=level))

        return cached_bytes_response(
            request,
            key=key,
            ttl=STATS_TTL,
            build=build,
            content_type="application/json",
            canonical=True,
        )
