"""Downloads for researchers over HTTP: a selection as GeoParquet or CSV, its job, its file.

``selection_response`` is the one answer for a selection, shared by ``/api/v1/downloads/
places/`` and the places list's ``format=parquet``: a small selection is the file itself
(cached per data version, with an ETag), a big one is a job (202 with its progress, 303 to
its file once it is built). The logic is ``analytics.downloads``; these views validate and
shape answers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import FileResponse, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from kombu.exceptions import OperationalError as BrokerError
from rest_framework import serializers
from rest_framework.request import Request

from analytics.download_tasks import download_job_build
from analytics.downloads import files, selectors, services
from analytics.models_downloads import DownloadFormat, DownloadJob, DownloadStatus
from analytics.replica import ReplicaUnavailable
from places import selectors as places_selectors
from places.serving.params import BBoxField, PlaceFiltersQuery
from places.serving.query import PlaceQuery
from places.serving.responses import (
    BytesNegotiation,
    PublicBytesView,
    QueryParamsGuard,
    cached_bytes_response,
    etag_matches,
    places_version,
)

logger = logging.getLogger(__name__)

SMALL_TTL = 3600
RETRY_AFTER_SECONDS = 30
# The places list's paging and field choice mean nothing for a file of the whole selection.
NOT_FOR_FILES = ("limit", "cursor", "fields")

JOB = inline_serializer(
    "DownloadJob",
    fields={
        "id": serializers.IntegerField(),
        "status": serializers.ChoiceField(choices=DownloadStatus.choices),
        "format": serializers.ChoiceField(choices=DownloadFormat.choices),
        "rows_done": serializers.IntegerField(),
        "rows_estimate": serializers.IntegerField(),
        "progress": serializers.FloatField(),
        "file": serializers.URLField(allow_null=True),
        "size_bytes": serializers.IntegerField(allow_null=True),
        "data_version": serializers.CharField(),
        "region_version": serializers.CharField(),
        "computed_on": serializers.CharField(),
        "datasets": serializers.ListField(child=serializers.DictField()),
        "selection": serializers.DictField(),
        "error": serializers.CharField(),
        "created_at": serializers.DateTimeField(),
        "finished_at": serializers.DateTimeField(allow_null=True),
    },
)


class DownloadQuery(PlaceFiltersQuery):
    bbox = BBoxField(required=False, allow_blank=True)
    format = serializers.ChoiceField(
        choices=DownloadFormat.values,
        default=DownloadFormat.PARQUET,
        help_text=(
            "parquet (GeoParquet 1.1.0, default) or csv (the places list's columns and "
            "`footprint_wkt`)."
        ),
    )


def _dataset_headers(request: Request, datasets: list[dict[str, str]]) -> dict[str, str]:
    """Licence and attribution travel with the file: a ``Link rel=license`` to each
    dataset's page (licence, attribution, source) and ``X-Datasets`` with the same as JSON
    (ASCII-escaped: header values are Latin-1)."""
    links = [
        f"<{request.build_absolute_uri(reverse('places:dataset-detail', args=[d['slug']]))}>; "
        f'rel="license"; title={json.dumps(d["slug"])}'
        for d in datasets
    ]
    about = [
        {"slug": d["slug"], "licence": d["licence"], "attribution": d["attribution"]}
        for d in datasets
    ]
    headers = {"X-Datasets": json.dumps(about, ensure_ascii=True)}
    if links:
        headers["Link"] = ", ".join(links)
    return headers


def _file_name(fmt: str) -> str:
    return f"places.{files.EXTENSIONS[fmt]}"


def job_data(request: Request, job: DownloadJob) -> dict[str, Any]:
    done, estimate = services.download_job_progress(job)
    ready = job.status == DownloadStatus.READY
    return {
        "id": job.pk,
        "status": job.status,
        "format": job.format,
        "rows_done": done,
        "rows_estimate": estimate,
        "progress": 1.0 if ready else round(min(done / estimate, 1.0), 4) if estimate else 0.0,
        "file": request.build_absolute_uri(reverse("analytics:download-file", args=[job.pk]))
        if ready
        else None,
        "size_bytes": job.size_bytes,
        "data_version": job.data_version,
        "region_version": job.region_version,
        "computed_on": job.computed_on,
        "datasets": job.datasets,
        "selection": job.selection,
        "error": job.error,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def _job_response(request: Request, job: DownloadJob) -> HttpResponse:
    status_url = request.build_absolute_uri(reverse("analytics:download-job", args=[job.pk]))
    body = job_data(request, job)
    if job.status == DownloadStatus.READY:
        response = JsonResponse(body, status=303)
        response["Location"] = body["file"]
    else:
        response = JsonResponse(body, status=202)
        response["Location"] = status_url
    response["Cache-Control"] = "no-store"
    return response


def selection_response(request: Request, *, query: PlaceQuery, fmt: str) -> HttpResponseBase:
    """The answer for a selection in ``fmt``: the file itself when the selection is small,
    else its job (see the module docstring)."""
    cap = settings.DOWNLOADS_SYNC_MAX_PLACES
    selection = selectors.Selection(query=query)
    count = selectors.selection_count_capped(query=query, cap=cap)
    if count <= cap:
        version = places_version(query.dataset_ids, bbox=query.bbox)
        key = (
            f"download:{fmt}:{version}:{places_selectors.region_version()}:{query.key()}"
            f":{request.build_absolute_uri('/')}"
        )

        def build() -> tuple[bytes, dict[str, str]]:
            small = files.selection_bytes(selection=selection, fmt=fmt)
            headers = _dataset_headers(request, small.datasets)
            headers["Content-Disposition"] = f'attachment; filename="{_file_name(fmt)}"'
            return small.body, headers

        return cached_bytes_response(
            request,
            key=key,
            ttl=SMALL_TTL,
            build=build,
            content_type=files.MEDIA_TYPES[fmt],
            vary="Accept-Encoding, Accept",
        )
    try:
        job, queue = services.download_job_request(
            selection=selection, fmt=fmt, rows_estimate=count
        )
    except ReplicaUnavailable:
        return JsonResponse(
            {"detail": "The read replica cannot take this download now; try again shortly."},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    except services.DownloadsBusy:
        return JsonResponse(
            {"detail": "Too many downloads are being built; try again shortly."},
            status=429,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if queue:
        transaction.on_commit(lambda: _queue(job.pk))
    return _job_response(request, job)


def _queue(job_id: int) -> None:
    try:
        download_job_build.delay(job_id)
    except BrokerError:
        # The job stays pending: beat's downloads_maintain queues it once it is stale.
        logger.warning("download job %s not queued: broker unreachable", job_id)


def refuse_paging(params: Any) -> dict[str, list[str]]:
    """The places list's parameters a file download does not take, each with why."""
    return {
        name: ["does not apply to format=parquet: the file holds the whole selection"]
        for name in NOT_FOR_FILES
        if name in params
    }


SELECTION_RESPONSES = {
    (200, "application/vnd.apache.parquet"): OpenApiResponse(
        OpenApiTypes.BINARY, description="The file, for a small selection."
    ),
    (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="The CSV file."),
    202: OpenApiResponse(JOB, description="A big selection: its job, being built."),
    303: OpenApiResponse(JOB, description="A big selection whose file is ready (Location)."),
    304: None,
    429: OpenApiResponse(OpenApiTypes.OBJECT, description="Too many downloads being built."),
    503: OpenApiResponse(OpenApiTypes.OBJECT, description="The replica is unavailable."),
}


@extend_schema(
    summary="Download a selection of places as GeoParquet or CSV",
    description=(
        "The places list's filters, and `format`. Selections of up to "
        f"{settings.DOWNLOADS_SYNC_MAX_PLACES:,} places are answered at once with the file "
        "(ETag per data version). Bigger ones are built by a task from the read replica: "
        "the answer is 202 with the job (progress in `rows_done` of `rows_estimate`; poll "
        "the `Location`), or 303 to the file once it is built. The same selection at the "
        "same data version is the same job and file; a changed place makes a new one. "
        "Licence and attribution of every dataset in the file come in `Link rel=license` "
        "and `X-Datasets` headers, and in the Parquet metadata (`places:datasets`)."
    ),
    parameters=[DownloadQuery],
    responses=SELECTION_RESPONSES,
)
class PlaceDownloadApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    def get(self, request: Request) -> HttpResponseBase:
        query = DownloadQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        bbox = query.validated_data.get("bbox")
        return selection_response(
            request, query=query.place_query(bbox=bbox), fmt=query.validated_data["format"]
        )


@extend_schema(summary="A download job: its progress and, once built, its file's link")
class DownloadJobApi(QueryParamsGuard, PublicBytesView):
    @extend_schema(responses={200: JOB})
    def get(self, request: Request, pk: int) -> HttpResponse:
        job = get_object_or_404(DownloadJob, pk=pk)
        response = JsonResponse(job_data(request, job))
        response["Cache-Control"] = "no-cache"
        return response


@extend_schema(
    summary="A download job's file",
    description=(
        "Valid while the data version the file shows is current (and for a grace period "
        "after it passes): 410 once it was cleaned up, 409 while it is still being built."
    ),
    responses={
        (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY,
        (200, "text/csv"): OpenApiTypes.STR,
        304: None,
        409: OpenApiResponse(OpenApiTypes.OBJECT, description="Not built yet (or failed)."),
        410: OpenApiResponse(OpenApiTypes.OBJECT, description="Cleaned up: ask again."),
    },
)
class DownloadFileApi(BytesNegotiation, QueryParamsGuard, PublicBytesView):
    def get(self, request: Request, pk: int) -> HttpResponseBase:
        job = get_object_or_404(DownloadJob, pk=pk)
        if job.status == DownloadStatus.EXPIRED:
            return JsonResponse(
                {"detail": "This file's data version has passed; ask for the selection again."},
                status=410,
            )
        if job.status != DownloadStatus.READY or not services.download_file_exists(job):
            return JsonResponse(
                {"detail": f"The file is not ready (status {job.status})."}, status=409
            )
        # A job names one selection at one version: its file never changes.
        headers = {
            "ETag": f'"download-{job.pk}-{job.data_version}-{job.region_version}"',
            "Cache-Control": "public, max-age=86400, immutable",
            **_dataset_headers(request, job.datasets),
        }
        if etag_matches(
            if_none_match=request.headers.get("If-None-Match", ""), etag=headers["ETag"]
        ):
            return HttpResponse(status=304, headers=headers)
        response = FileResponse(
            services.download_file_open(job),
            as_attachment=True,
            filename=_file_name(job.format),
            content_type=files.MEDIA_TYPES[job.format],
        )
        for name, value in headers.items():
            response[name] = value
        return response
