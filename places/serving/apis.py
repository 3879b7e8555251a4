"""Read API for places, regions and datasets (one view per operation)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user
from django.db.models import QuerySet
from django.http import HttpResponse, HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from places import selectors
from places.models import Dataset, Place, PlaceStatus, Region
from places.serving import features
from places.serving.fields import PROPERTIES
from places.serving.filters import RegionFilter
from places.serving.params import PlaceListQuery
from places.serving.responses import (
    BytesNegotiation,
    PublicBytesView,
    QueryParamsGuard,
    Stream,
    cached_bytes_response,
    etag_matches,
    places_version,
    streamed_bytes_response,
)
from places.serving.serializers import (
    DatasetSerializer,
    PlaceDetailSerializer,
    RegionGeoSerializer,
    RegionSerializer,
)

ACCEPT_FORMATS = [
    ("application/geo+json-seq", "geojsonseq"),
    ("application/x-ndjson", "ndjson"),
    ("application/ndjson", "ndjson"),
    ("text/csv", "csv"),
    ("application/vnd.apache.parquet", "parquet"),
]
LIST_TTL = 3600
# One page holds about 230 KB of JSON; the sample's 600-odd regions fit in one.
REGION_PAGE_SIZE = 1000
# Bounded so that an offset past PostgreSQL's bigint is a 400, not a server error.
REGION_MAX_OFFSET = 10**9

FEATURE_EXAMPLE = {
    "type": "FeatureCollection",
    "numberMatched": 1,
    "numberMatchedExact": True,
    "numberReturned": 1,
    "truncated": False,
    "next": None,
    "features": [
        {
            "type": "Feature",
            "id": 1,
            "geometry": {"type": "Point", "coordinates": [-0.0984, 51.5138]},
            "properties": {
                "name": "St Paul's Cathedral",
                "religion": "christian",
                "denominations": ["anglican"],
                "dataset": "osm-gb",
                "status": "active",
            },
        }
    ],
}


def _format(request: Request, requested: str | None) -> str:
    if requested:
        return requested
    accept = request.headers.get("Accept", "")
    return next((fmt for media, fmt in ACCEPT_FORMATS if media in accept), "geojson")


@extend_schema(
    summary="Places as GeoJSON (or GeoJSONSeq, NDJSON, CSV), filtered, paged by cursor",
    description=(
        "Active places unless `status` names another status or `any` (the viewport and "
        "tiles share this default). "
        "Pages follow `id` order; follow `next` (also sent as a `Link: rel=next` header) "
        "until it is null. `truncated` says whether more pages follow. `numberMatched` is "
        f"exact up to {features.EXACT_COUNT_LIMIT:,} places and the query planner's estimate "
        "above that (`numberMatchedExact: false`): a full count would cost more than the "
        "page. The other formats carry these figures in `X-Number-Matched`, "
        "`X-Number-Matched-Exact` and `X-Truncated` headers. Responses are cached per data "
        "version (those over the server's size limit for stored answers are built anew) "
        "and carry an ETag (send `If-None-Match` for a 304). Pages of more than "
        f"{features.STREAM_ABOVE:,} features are sent as they are written (chunked, no "
        "Content-Length)."
    ),
    parameters=[PlaceListQuery],
    responses={
        (200, "application/geo+json"): OpenApiResponse(
            OpenApiTypes.OBJECT,
            examples=[OpenApiExample("One page", value=FEATURE_EXAMPLE)],
        ),
        (200, "application/geo+json-seq"): OpenApiTypes.STR,
        (200, "application/x-ndjson"): OpenApiTypes.STR,
        (200, "text/csv"): OpenApiTypes.STR,
        (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
        202: OpenApiTypes.OBJECT,
        303: OpenApiTypes.OBJECT,
        304: None,
        429: OpenApiTypes.OBJECT,
        503: OpenApiTypes.OBJECT,
    },
    examples=[
        OpenApiExample("Central London", value="bbox=-0.15,51.49,-0.07,51.53&limit=100"),
    ],
)
class PlaceListApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    @extend_schema(operation_id="places_list")
    def get(self, request: Request) -> HttpResponseBase:
        query = PlaceListQuery(
            data=request.query_params,
            # The view authenticates no one (public, cacheable answers): the session is read
            # only for a page above the anonymous maximum, which then varies by cookie.
            context={"signed_in": lambda: get_user(request._request).is_authenticated},
        )
        query.is_valid(raise_exception=True)
        data = query.validated_data
        filters = query.place_query(bbox=data.get("bbox"))
        properties = data.get("fields") or list(PROPERTIES)
        fmt = _format(request, data.get("format"))
        if fmt == "parquet":
            # A file of the whole selection: the downloads answer it. Imported here, as places
            # are imported by analytics and must not import it back while loading.
            from analytics import download_apis

            refused = download_apis.refuse_paging(request.query_params)
            if refused:
                raise ValidationError(refused)
            return download_apis.selection_response(request, query=filters, fmt=fmt)
        limit = data.get("limit") or settings.PLACES_API_PAGE_SIZE
        after = data.get("cursor", 0)
        # The next link is absolute, so the host is part of what the body shows.
        version = places_version(filters.dataset_ids, bbox=filters.bbox)
        key = (
            f"list:{version}:{filters.key()}:{','.join(properties)}"
            f":{fmt}:{after}:{limit}:{request.build_absolute_uri('/')}"
        )

        def page_url(cursor: str) -> str:
            params = request.GET.copy()
            params["cursor"] = cursor
            return request.build_absolute_uri(request.path) + "?" + params.urlencode()

        def headers(page: features.ListSummary) -> dict[str, str]:
            found = {
                "X-Number-Matched": str(page.matched),
                "X-Number-Matched-Exact": "true" if page.exact else "false",
                "X-Truncated": "true" if page.more else "false",
            }
            if page.next_url:
                found["Link"] = f'<{page.next_url}>; rel="next"'
            if fmt == "csv":
                found["Content-Disposition"] = 'attachment; filename="places.csv"'
            return found

        if limit > features.STREAM_ABOVE:

            def open_stream() -> Stream:
                page = features.place_list_stream(
                    query=filters,
                    properties=properties,
                    fmt=fmt,
                    after=after,
                    limit=limit,
                    page_url=page_url,
                )
                return Stream(pieces=page.pieces, headers=headers(page), close=page.close)

            return streamed_bytes_response(
                request,
                key=key,
                ttl=LIST_TTL,
                open_stream=open_stream,
                content_type=features.MEDIA_TYPES[fmt],
                vary="Accept-Encoding, Accept",
            )

        def build() -> tuple[bytes, dict[str, str]]:
            page = features.place_list_page(
                query=filters,
                properties=properties,
                fmt=fmt,
                after=after,
                limit=limit,
                page_url=page_url,
            )
            return page.body, headers(page)

        return cached_bytes_response(
            request,
            key=key,
            ttl=LIST_TTL,
            build=build,
            content_type=features.MEDIA_TYPES[fmt],
            vary="Accept-Encoding, Accept",
        )


@extend_schema(
    summary="One place with its footprint",
    description=(
        "A place merged into another answers `301 Moved Permanently` to the place it was "
        "merged into (`Location`), with its own feature, `status: merged` and "
        "`superseded_by` in the body for clients that do not follow redirects."
    ),
    responses={200: PlaceDetailSerializer, 301: PlaceDetailSerializer, 304: None},
)
class PlaceDetailApi(QueryParamsGuard, generics.RetrieveAPIView):
    serializer_class = PlaceDetailSerializer

    def get_queryset(self) -> QuerySet[Place]:
        return selectors.place_detail_queryset()

    def retrieve(self, request: Request, *args: object, **kwargs: object) -> Response:
        place = self.get_object()
        if place.status == PlaceStatus.MERGED and place.merged_into_id:
            # The merged place keeps resolving: to the survivor, and permanently.
            target = reverse("places:place-detail", kwargs={"pk": place.merged_into_id})
            return Response(
                self.get_serializer(place).data,
                status=301,
                headers={"Location": request.build_absolute_uri(target)},
            )
        # Every write to a place moves its version, so (id, version) names this content.
        etag = f'W/"place-{place.pk}-{place.version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag_matches(if_none_match=request.headers.get("If-None-Match", ""), etag=etag):
            return Response(status=304, headers=headers)
        return Response(self.get_serializer(place).data, headers=headers)


class RegionPagination(LimitOffsetPagination):
    """The region list's pages (documents ``limit`` and ``offset`` in the schema; the view
    validates them itself, refusing what this class would silently clamp)."""

    default_limit = REGION_PAGE_SIZE
    max_limit = REGION_PAGE_SIZE

    def get_schema_operation_parameters(self, view: APIView) -> list[dict]:
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": REGION_PAGE_SIZE},
            self.offset_query_param: {"minimum": 0, "maximum": REGION_MAX_OFFSET},
        }
        params = super().get_schema_operation_parameters(view)
        for param in params:
            param["schema"].update(bounds.get(param["name"], {}))
        return params


class RegionPageQuery(serializers.Serializer):
    limit = serializers.IntegerField(
        min_value=1, max_value=REGION_PAGE_SIZE, default=REGION_PAGE_SIZE
    )
    offset = serializers.IntegerField(min_value=0, max_value=REGION_MAX_OFFSET, default=0)


@extend_schema(
    summary="Regions (without geometry), paged by limit and offset",
    description=(
        f"Ordered by level, name and id; `limit` is 1–{REGION_PAGE_SIZE:,} (default "
        f"{REGION_PAGE_SIZE:,}), `offset` counts from 0; `next` and `previous` link the "
        "neighbouring pages (null at either end). Responses are cached per region version "
        "and carry an ETag (send `If-None-Match` for a 304)."
    ),
    responses={200: RegionSerializer(many=True), 304: None},
)
class RegionListApi(QueryParamsGuard, generics.GenericAPIView):
    """Public and cached like the places list: no session lookup (which would add
    ``Vary: Cookie``), the body built once per region version and query."""

    serializer_class = RegionSerializer
    filterset_class = RegionFilter
    pagination_class = RegionPagination
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get_queryset(self) -> QuerySet[Region]:
        return selectors.region_list()

    def get(self, request: Request) -> HttpResponse:
        filterset = RegionFilter(request.query_params, queryset=self.get_queryset())
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        page = RegionPageQuery(data=request.query_params)
        page.is_valid(raise_exception=True)
        limit, offset = page.validated_data["limit"], page.validated_data["offset"]
        # Only validated values make the key and the links: junk parameters buy no entry.
        filters = {k: v for k, v in filterset.form.cleaned_data.items() if v}
        key = (
            f"regions:{selectors.region_version()}:{sorted(filters.items())}:{limit}:{offset}"
            f":{request.build_absolute_uri('/')}"
        )

        def page_url(at: int) -> str:
            params = urlencode({**filters, "limit": limit, "offset": at})
            return f"{request.build_absolute_uri(request.path)}?{params}"

        def build() -> bytes:
            regions = filterset.qs
            count = regions.count()
            rows = RegionSerializer(regions[offset : offset + limit], many=True).data
            body = {
                "count": count,
                "next": page_url(offset + limit) if offset + limit < count else None,
                "previous": page_url(max(offset - limit, 0)) if offset else None,
                "results": rows,
            }
            return JSONRenderer().render(body)

        return cached_bytes_response(
            request, key=key, ttl=LIST_TTL, build=build, content_type="application/json"
        )


@extend_schema(summary="One region as a GeoJSON Feature with its boundary")
class RegionDetailApi(QueryParamsGuard, generics.RetrieveAPIView):
    serializer_class = RegionGeoSerializer

    def get_queryset(self) -> QuerySet[Region]:
        return selectors.region_detail_queryset()


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
