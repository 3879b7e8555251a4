"""Read-only statistics for researchers: one view per operation.

``RegionStatsApi`` aggregates live on the replica; the others answer from stored results
(``analytics.models``, written by the analytics tasks), cached per results version.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from analytics import selectors
from analytics.models import RegionSummary
from analytics.selectors import RANKING_ORDERS, RELIGION_ORDERS
from analytics.serving import csv_bytes, results_response, summary_flat, summary_json
from config.routers import REPLICA
from ingestion.edge.models import Parameter, Sensor
from places import selectors as places_selectors
from places.models import RegionLevel, Religion
from places.serving.params import QueryParams
from places.serving.responses import (
    BytesNegotiation,
    PublicBytesView,
    QueryParamsGuard,
    cached_bytes_response,
)

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


# --- Stored results: summaries, comparisons, rankings, time series --------------------------

SUMMARY_LEVELS = [("country", "Country"), ("admin1", "First-level subdivision")]
SUMMARY_LEVELS += [("district", "District")]
FORMAT_CHOICES = ["json", "csv"]
MAX_COMPARE = 50
BIGINT = 2**63  # a path id past PostgreSQL's bigint names nothing (404, not a server error)
SERIES_INTERVALS = ["hour", "day", "decade"]

SUMMARY_EXAMPLE = {
    "region": {"id": 540, "code": "E09000033", "name": "Westminster", "level": "district"},
    "places": 129,
    "population": 204300,
    "area_km2": 21.49,
    "per_1000_km2": 6002.8,
    "per_100k_people": 63.14,
    "by_religion": {"christian": 108, "muslim": 10, "jewish": 7, "buddhist": 3, "hindu": 1},
    "religion_shares": {"christian": 0.837209, "muslim": 0.077519},
    "by_denomination": {"anglican": 41, "roman_catholic": 17},
    "diversity": {"shannon": 0.6123, "simpson": 0.2876},
    "dated_places": 2,
    "founding_decades": {"1850": 1, "1960": 1},
    "quality": {
        "unnamed": {"count": 3, "rate": 0.023256},
        "unknown_religion": {"count": 0, "rate": 0.0},
        "outside_region": {"count": 0, "rate": 0.0},
        "duplicate_coordinates": {"count": 2, "rate": 0.015504},
    },
    "computed": {
        "on": "replica",
        "data_version": "3f1c2a9b8d7e6f50",
        "region_version": "9a8b7c6d5e4f3a2b",
        "at": "2026-12-04T05:00:00+00:00",
    },
}
CACHING = (
    " Read from stored results (recomputed by the analytics tasks, never on request) and "
    "cached until they change; responses carry an ETag (send `If-None-Match` for a 304). "
    "`format=csv` gives the same figures as CSV."
)


class FormatQuery(QueryParams):
    format = serializers.ChoiceField(choices=FORMAT_CHOICES, default="json")


class SummaryListQuery(FormatQuery):
    level = serializers.ChoiceField(choices=SUMMARY_LEVELS, default="district")


class CompareQuery(FormatQuery):
    regions = serializers.CharField(
        help_text=f"Region ids separated by commas (at most {MAX_COMPARE}), e.g. `540,541`."
    )

    def validate_regions(self, value: str) -> list[int]:
        try:
            ids = [int(part) for part in value.split(",")]
        except ValueError:
            raise serializers.ValidationError("must be region ids separated by commas") from None
        if not 1 <= len(ids) <= MAX_COMPARE or min(ids) < 1 or max(ids) >= BIGINT:
            raise serializers.ValidationError(f"must name 1 to {MAX_COMPARE} region ids")
        return list(dict.fromkeys(ids))


class RankingQuery(FormatQuery):
    level = serializers.ChoiceField(choices=SUMMARY_LEVELS, default="district")
    order = serializers.ChoiceField(choices=sorted(RANKING_ORDERS), default="per_100k_people")
    religion = serializers.ChoiceField(
        choices=Religion.choices,
        required=False,
        help_text="Count only places of this religion (orders places, per_100k_people, "
        "per_1000_km2 and share).",
    )
    direction = serializers.ChoiceField(choices=["desc", "asc"], default="desc")
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("religion") and attrs["order"] not in RELIGION_ORDERS:
            raise serializers.ValidationError(
                {"religion": [f"only with order {', '.join(sorted(RELIGION_ORDERS))}"]}
            )
        return attrs


class SeriesQuery(FormatQuery):
    interval = serializers.ChoiceField(choices=SERIES_INTERVALS, default="day")
    parameter = serializers.SlugRelatedField(
        slug_field="code",
        queryset=Parameter.objects.all(),
        required=False,
        help_text="Measured parameter for hour and day (default `pm2_5`).",
    )
    since = serializers.DateTimeField(required=False, help_text="From this time (ISO 8601).")
    until = serializers.DateTimeField(required=False, help_text="Before this time.")

    def validate(self, attrs: dict) -> dict:
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be after since"]})
        return attrs


class SensorSeriesQuery(SeriesQuery):
    interval = serializers.ChoiceField(choices=["hour", "day"], default="day")


def _parameter(data: dict) -> Parameter:
    found = data.get("parameter") or Parameter.objects.filter(code="pm2_5").first()
    if found is None:
        raise NotFound("no pm2_5 parameter")
    return found


def _results_schema(summary: str, description: str, example: Any, query: type) -> Any:
    return extend_schema(
        summary=summary,
        description=description + CACHING,
        parameters=[query],
        responses={
            (200, "application/json"): OpenApiResponse(
                OpenApiTypes.OBJECT, examples=[OpenApiExample("Example", value=example)]
            ),
            (200, "text/csv"): OpenApiTypes.STR,
            304: None,
        },
    )


@_results_schema(
    "Summaries of every region of a level (for a choropleth)",
    "Places by religion and denomination, shares, Shannon and Simpson diversity over known "
    "religions, densities per 1,000 km² and per 100,000 people, founding decades and "
    "data-quality counts and rates, for each region of `level`, by code.",
    {"level": "district", "count": 1, "results": [SUMMARY_EXAMPLE]},
    SummaryListQuery,
)
class RegionSummaryListApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="stats_summaries_list")
    def get(self, request: Request) -> HttpResponse:
        query = SummaryListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data

        def rows() -> list[RegionSummary]:
            return selectors.region_summaries(level=data["level"])

        def build_json() -> dict[str, Any]:
            found = rows()
            return {
                "level": data["level"],
                "count": len(found),
                "results": [summary_json(s) for s in found],
            }

        return results_response(
            request,
            name="summaries",
            params=data,
            fmt=data["format"],
            build_json=build_json,
            build_csv=lambda: csv_bytes(summary_flat(s) for s in rows()),
            canonical=True,
        )


def _region_summary_or_404(region_id: int) -> Any:
    """The stored summary of one region; 404 when it has none (or the id cannot be one)."""
    found = selectors.region_summaries(region_ids=[region_id]) if region_id < BIGINT else []
    if not found:
        raise NotFound("no summary for this region")
    return found[0]


@_results_schema(
    "One region's summary",
    "The figures of one region (see the summaries list); 404 when the region has none yet.",
    SUMMARY_EXAMPLE,
    FormatQuery,
)
class RegionSummaryApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="stats_summary")
    def get(self, request: Request, region_id: int) -> HttpResponse:
        query = FormatQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        summary = _region_summary_or_404(region_id)
        return results_response(
            request,
            name=f"summary:{region_id}",
            params=data,
            fmt=data["format"],
            build_json=lambda: summary_json(summary),
            build_csv=lambda: csv_bytes([summary_flat(summary)]),
            canonical=True,
        )


@_results_schema(
    "Several regions side by side",
    "The summaries of the regions named by `regions`, in that order; ids without a summary "
    "are listed under `missing`.",
    {"results": [SUMMARY_EXAMPLE], "missing": []},
    CompareQuery,
)
class RegionCompareApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="stats_compare")
    def get(self, request: Request) -> HttpResponse:
        query = CompareQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        ids = data["regions"]

        def build_json() -> dict:
            found = selectors.region_summaries(region_ids=ids)
            have = {s.region_id for s in found}
            return {
                "results": [summary_json(s) for s in found],
                "missing": [rid for rid in ids if rid not in have],
            }

        return results_response(
            request,
            name="compare",
            params=data,
            fmt=data["format"],
            build_json=build_json,
            build_csv=lambda: csv_bytes(
                summary_flat(s) for s in selectors.region_summaries(region_ids=ids)
            ),
        )


@_results_schema(
    "Regions ranked by a figure",
    "Regions of `level` by `order`, highest first (`direction=asc` for lowest); regions "
    "whose figure is unknown (no population, no area) come last. With `religion`, the "
    "place counts behind `places`, `per_100k_people`, `per_1000_km2` and `share` are those "
    "of that religion: `order=per_100k_people&religion=muslim` ranks districts by mosques "
    "and other Muslim places per 100,000 people.",
    {
        "level": "district",
        "order": "per_100k_people",
        "religion": "muslim",
        "results": [
            {
                "rank": 1,
                "region": {"id": 540, "code": "E09000033", "name": "Westminster"},
                "value": 4.89,
                "places": 129,
                "population": 204300,
                "area_km2": 21.49,
            }
        ],
    },
    RankingQuery,
)
class RegionRankingApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="stats_rankings")
    def get(self, request: Request) -> HttpResponse:
        query = RankingQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data

        def rows() -> list[dict[str, Any]]:
            ranked = selectors.region_ranking(
                level=data["level"],
                order=data["order"],
                religion=data.get("religion"),
                descending=data["direction"] == "desc",
                limit=data["limit"],
            )
            return [
                {
                    "rank": n,
                    "region": {"id": s.region_id, "code": s.code, "name": s.name},
                    "value": value,
                    "places": s.places,
                    "population": s.population,
                    "area_km2": s.area_km2,
                }
                for n, (s, value) in enumerate(ranked, start=1)
            ]

        def flat() -> bytes:
            return csv_bytes(
                {
                    "rank": r["rank"],
                    "region_id": r["region"]["id"],
                    "code": r["region"]["code"],
                    "name": r["region"]["name"],
                    "value": r["value"],
                    "places": r["places"],
                    "population": r["population"],
                    "area_km2": r["area_km2"],
                }
                for r in rows()
            )

        return results_response(
            request,
            name="rankings",
            params=data,
            fmt=data["format"],
            build_json=lambda: {
                "level": data["level"],
                "order": data["order"],
                "religion": data.get("religion"),
                "results": rows(),
            },
            build_csv=flat,
        )


def _points_csv(points: list[dict[str, Any]]) -> bytes:
    return csv_bytes(points)


@_results_schema(
    "A region's time series: sensor means by hour or day, or founding decades",
    "`interval=hour` or `day`: the mean of the region's sensors' means of `parameter` "
    "(default PM2.5) in each hour or day (UTC), with the number of sensors and readings; "
    "`since`/`until` bound it. `interval=decade`: places founded per decade, from dated "
    "places (`t` is the decade's first year).",
    {
        "region": {"id": 540, "code": "E09000033", "name": "Westminster"},
        "interval": "day",
        "parameter": "pm2_5",
        "unit": "µg/m³",
        "points": [{"t": "2026-03-02T00:00:00Z", "mean": 12.4, "sensors": 2, "readings": 285}],
    },
    SeriesQuery,
)
class RegionSeriesApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="stats_region_series")
    def get(self, request: Request, region_id: int) -> HttpResponse:
        query = SeriesQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        summary = _region_summary_or_404(region_id)
        region = {"id": summary.region_id, "code": summary.code, "name": summary.name}
        interval = data["interval"]
        parameter = None if interval == "decade" else _parameter(data)

        def points() -> list[dict[str, Any]]:
            if parameter is None:
                return [
                    {"t": decade, "places": n}
                    for decade, n in sorted(summary.founding_decades.items(), key=_decade)
                ]
            rows = selectors.region_sensor_series(
                region_id=region_id,
                parameter_id=parameter.pk,
                interval=interval,
                since=data.get("since"),
                until=data.get("until"),
            )
            return [
                {"t": _time(r.bucket), "mean": r.mean, "sensors": r.sensors, "readings": r.readings}
                for r in rows
            ]

        return results_response(
            request,
            name=f"region-series:{region_id}",
            params={k: str(v) for k, v in data.items()},
            fmt=data["format"],
            build_json=lambda: {
                "region": region,
                "interval": interval,
                "parameter": parameter.code if parameter else None,
                "unit": parameter.unit if parameter else None,
                "points": points(),
            },
            build_csv=lambda: _points_csv(points()),
        )


@_results_schema(
    "A sensor's hourly or daily rollups",
    "Count, min, max, mean, median, 98th percentile and coverage (readings received over "
    "those expected from the sensor's typical interval) of `parameter` (default PM2.5) per "
    "hour or day (UTC).",
    {
        "sensor": {"id": 7, "external_id": "aq-1", "kind": "SDS011"},
        "interval": "hour",
        "parameter": "pm2_5",
        "unit": "µg/m³",
        "points": [
            {
                "t": "2026-03-02T09:00:00Z",
                "count": 3,
                "min": 4.5,
                "max": 18.5,
                "mean": 11.2,
                "median": 10.5,
                "p98": 18.3,
                "expected": 6,
                "coverage": 0.5,
            }
        ],
    },
    SensorSeriesQuery,
)
class SensorSeriesApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="stats_sensor_series")
    def get(self, request: Request, sensor_id: int) -> HttpResponse:
        query = SensorSeriesQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        sensor = Sensor.objects.filter(pk=sensor_id).first() if sensor_id < BIGINT else None
        if sensor is None:
            raise NotFound("no such sensor")
        parameter = _parameter(data)

        def points() -> list[dict[str, Any]]:
            rows = selectors.sensor_series(
                sensor_id=sensor_id,
                parameter_id=parameter.pk,
                interval=data["interval"],
                since=data.get("since"),
                until=data.get("until"),
            )
            return [
                {
                    "t": _time(r.bucket),
                    "count": r.count,
                    "min": r.min,
                    "max": r.max,
                    "mean": r.mean,
                    "median": r.median,
                    "p98": r.p98,
                    "expected": r.expected,
                    "coverage": r.coverage,
                }
                for r in rows
            ]

        return results_response(
            request,
            name=f"sensor-series:{sensor_id}",
            params={k: str(v) for k, v in data.items()},
            fmt=data["format"],
            build_json=lambda: {
                "sensor": {"id": sensor.pk, "external_id": sensor.external_id, "kind": sensor.kind},
                "interval": data["interval"],
                "parameter": parameter.code,
                "unit": parameter.unit,
                "points": points(),
            },
            build_csv=lambda: _points_csv(points()),
        )


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _decade(item: tuple[str, Any]) -> int:
    return int(item[0])
