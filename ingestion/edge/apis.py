"""The edge protocol v1 (``/api/v1/edge/``): devices push readings and pull their region.

Thin views: the key is checked by ``auth``, the body read by ``parsing``, the batch stored by
``services.batches``, the change feed read by ``selectors`` and answered by ``serving``.
Every error is ``{"detail": ..., "code": ...}`` (400s name the ``field`` too); every answer
to a node carries its ``RateLimit-*`` headers.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework.exceptions import APIException, NotAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ingestion.edge import parsing, selectors, serving
from ingestion.edge.auth import EdgeKeyAuthentication, EdgeNodeUser, IsEdgeNode
from ingestion.edge.models import KeyScope
from ingestion.edge.services.batches import (
    IdempotencyKeyReused,
    SensorDeclarationInvalid,
    SensorOfOtherNode,
    TooManyNewMonths,
    observation_batch_ingest,
)
from ingestion.edge.services.nodes import HeartbeatInvalid, edge_node_heartbeat
from ingestion.edge.throttling import EdgeNodeThrottle

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
JSON_TYPES = {"application/json"}


def _error(status: int, code: str, detail: str, **extra: Any) -> Response:
    return Response({"detail": detail, "code": code, **extra}, status=status)


class EdgeApi(APIView):
    """What every edge operation shares: key authentication with the view's ``edge_scope``
    (None: any scope), the per-node rate limit, JSON only, and a ``code`` in every error."""

    authentication_classes = [EdgeKeyAuthentication]
    permission_classes = [IsEdgeNode]
    throttle_classes = [EdgeNodeThrottle]
    renderer_classes = [JSONRenderer]
    # Bodies are read by ``parsing``, bounded, never by DRF's parsers.
    parser_classes: list[Any] = []
    edge_scope: str | None = None

    def handle_exception(self, exc: Exception) -> Response:
        response = super().handle_exception(exc)
        if (
            isinstance(exc, APIException)
            and isinstance(response.data, dict)
            and "code" not in response.data
        ):
            codes = exc.get_codes()
            response.data["code"] = codes if isinstance(codes, str) else exc.default_code
        return response

    def node_user(self, request: Request) -> EdgeNodeUser:
        user = request.user
        if not isinstance(user, EdgeNodeUser):  # IsEdgeNode let only these through
            raise NotAuthenticated()
        return user


def _error_schema(description: str, *codes: str) -> OpenApiResponse:
    return OpenApiResponse(
        response={
            "type": "object",
            "properties": {
                "detail": {"type": "string"},
                "code": {"type": "string", **({"enum": list(codes)} if codes else {})},
                "field": {"type": "string"},
            },
            "required": ["detail", "code"],
        },
        description=description,
    )


AUTH_ERRORS = {
    401: _error_schema(
        "The key is missing, malformed, unknown, revoked or expired, or the node is disabled. "
        "Sent with `WWW-Authenticate: Bearer`.",
        "key_missing",
        "key_malformed",
        "key_unknown",
        "key_revoked",
        "key_expired",
        "node_disabled",
        "authentication_failed",
        "not_authenticated",
    ),
    403: _error_schema(
        "The key lacks the operation's scope (`scope_missing`), or the batch declares (in "
        "`sensors`) a sensor of another node (`sensor_of_other_node` with `sensor` and "
        "`index`; nothing is stored, the key stays free).",
        "scope_missing",
        "sensor_of_other_node",
        "permission_denied",
    ),
    429: _error_schema(
        "The node's rate limit (`EDGE_RATE`) is used up, or the client's address failed "
        "authentication too often (`EDGE_AUTH_FAILURE_RATE`: then any key from it is refused "
        "until the window ends); `Retry-After` says for how long.",
        "throttled",
    ),
}

# Response headers every edge answer to a node carries (the rate limit's), and the 429's.
RATE_LIMIT_HEADERS = [
    OpenApiParameter(
        name,
        OpenApiTypes.INT,
        location=OpenApiParameter.HEADER,
        response=True,
        description=description,
    )
    for name, description in (
        ("RateLimit-Limit", "Requests the node may make in a window (`EDGE_RATE`)."),
        ("RateLimit-Remaining", "Requests left in the current window."),
        ("RateLimit-Reset", "Seconds until the window closes."),
    )
] + [
    OpenApiParameter(
        "Retry-After",
        OpenApiTypes.INT,
        location=OpenApiParameter.HEADER,
        response=[429],
        description="Seconds to wait before trying again.",
    )
]

RATE_LIMIT_NOTE = (
    "Authenticate with `Authorization: Bearer edge_<prefix>_<secret>`. Answers to a node carry "
    "`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (per node, setting "
    "`EDGE_RATE`); past the limit 429 with `Retry-After`."
)

READING_SCHEMA = {
    "type": "object",
    "properties": {
        "sensor": {"type": "string", "minLength": 1, "maxLength": 64},
        "parameter": {
            "type": "string",
            "description": "pm10, pm2_5, temperature, humidity or pressure",
        },
        "time": {"type": "string", "format": "date-time"},
        "value": {"type": "number"},
    },
    "required": ["sensor", "parameter", "time", "value"],
}
BATCH_SCHEMA = {
    "type": "object",
    "properties": {
        "sensors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 64},
                    "kind": {"type": "string", "maxLength": 32},
                    "location": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 2,
                        "maxItems": 2,
                        "nullable": True,
                        "description": "[longitude, latitude] (WGS84)",
                    },
                },
                "required": ["id"],
            },
        },
        "readings": {"type": "array", "items": READING_SCHEMA},
    },
    "required": ["readings"],
}
BATCH_ANSWER = {
    "type": "object",
    "properties": {
        "batch": {"type": "integer"},
        "accepted": {"type": "integer"},
        "duplicate": {"type": "integer"},
        "rejected": {"type": "integer"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "field": {"type": "string"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["index", "field", "code", "message"],
            },
        },
    },
    "required": ["batch", "accepted", "duplicate", "rejected", "errors"],
}


@extend_schema(
    summary="Push a batch of readings (idempotent)",
    description=(
        "A batch of readings, stored once: the answer comes only after the batch and its "
        "readings are committed. Send it again with the same `Idempotency-Key` (after a "
        "timeout, say) and the first answer comes back with `Idempotent-Replayed: true`; the "
        "same key with a different body (SHA-256 of the decoded body) is refused with 422 "
        "`idempotency_key_reused`. A reading already stored (same sensor, parameter and time) "
        "counts as `duplicate`, whatever batch carried it.\n\n"
        f"Limits: at most `EDGE_MAX_BATCH_BYTES` ({parsing.max_batch_bytes():,}) bytes of "
        "decoded body (`Content-Encoding: gzip` is decoded in bounded steps) and "
        f"`EDGE_MAX_BATCH_READINGS` ({parsing.max_batch_readings():,}) readings; beyond "
        "either, 413. Each month of readings is a partition: a batch whose valid readings "
        "fall in more than `EDGE_MAX_NEW_MONTHS_PER_BATCH` "
        f"({settings.EDGE_MAX_NEW_MONTHS_PER_BATCH}) months that have none yet is 413 "
        "`too_many_months` (nothing stored; send fewer months per batch).\n\n"
        "`sensors` (optional) declares this node's sensors (created, or kind and location "
        "updated). Each reading is checked on its own; one that fails is counted as "
        "`rejected` and listed in `errors` with its index, field and code: `bad_reading`, "
        "`bad_sensor`, `bad_parameter`, `bad_time` (unparseable or without a zone), "
        "`bad_value` (not a finite number), `unknown_sensor`, `sensor_of_other_node` (a "
        "reading of another node's sensor), `unknown_parameter`, "
        "`out_of_range`, `future_time` (beyond `EDGE_CLOCK_SKEW_SECONDS`), `too_old` "
        "(beyond `EDGE_RETENTION_DAYS`, when set). The same (sensor, parameter, time) twice "
        "in a batch: the first counts, the others are `duplicate_in_batch` (duplicates).\n\n"
        "Whole-body refusals: 400 `idempotency_key` (header missing or not 1–128 of "
        "`[A-Za-z0-9_.:-]`), 400 `json` (not UTF-8 JSON, or NaN/Infinity), 400 `gzip`, "
        "400 `invalid` naming the `field` (`readings` not an array, a bad declaration in "
        "`sensors`), 413 `too_large` / `too_many_readings` / `too_many_sensors` / "
        "`too_many_months`, 415 "
        "`content_type` / `content_encoding`, 422 `idempotency_key_reused`, 403 "
        "`sensor_of_other_node` (a declaration in `sensors` names another node's sensor). "
        + RATE_LIMIT_NOTE
    ),
    parameters=[
        OpenApiParameter(
            "Idempotency-Key",
            OpenApiTypes.STR,
            location=OpenApiParameter.HEADER,
            required=True,
            pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
            description="Chosen by the client per batch and saved with it before sending.",
        ),
        OpenApiParameter(
            "Content-Encoding",
            OpenApiTypes.STR,
            location=OpenApiParameter.HEADER,
            enum=["gzip", "identity"],
            description="`gzip` to send the body compressed.",
        ),
        OpenApiParameter(
            "Idempotent-Replayed",
            OpenApiTypes.STR,
            location=OpenApiParameter.HEADER,
            response=[200],
            enum=["true"],
            description="Present when the answer is the stored answer to an earlier request "
            "with this key and body.",
        ),
        *RATE_LIMIT_HEADERS,
    ],
    request={"application/json": BATCH_SCHEMA},
    responses={
        200: OpenApiResponse(
            response=BATCH_ANSWER,
            description="Stored (or replayed: header `Idempotent-Replayed: true`).",
        ),
        400: _error_schema(
            "The header or the body as a whole is invalid.",
            "idempotency_key",
            "json",
            "gzip",
            "invalid",
        ),
        413: _error_schema(
            "The body is too large, or its readings need more new month partitions than "
            "one batch may create (`too_many_months`).",
            "too_large",
            "too_many_readings",
            "too_many_sensors",
            "too_many_months",
        ),
        415: _error_schema(
            "Not JSON, or an encoding other than gzip.", "content_type", "content_encoding"
        ),
        422: _error_schema(
            "The Idempotency-Key was used for another body.", "idempotency_key_reused"
        ),
        **AUTH_ERRORS,
    },
    examples=[
        OpenApiExample(
            "A batch",
            request_only=True,
            value={
                "sensors": [{"id": "12345", "kind": "SDS011", "location": [-2.09, 57.15]}],
                "readings": [
                    {
                        "sensor": "12345",
                        "parameter": "pm10",
                        "time": "2019-03-01T07:00:03Z",
                        "value": 12.3,
                    },
                    {
                        "sensor": "12345",
                        "parameter": "pm10",
                        "time": "2019-03-01T07:02:29Z",
                        "value": 5000,
                    },
                ],
            },
        ),
        OpenApiExample(
            "Its answer",
            response_only=True,
            status_codes=["200"],
            value={
                "batch": 812,
                "accepted": 1,
                "duplicate": 0,
                "rejected": 1,
                "errors": [
                    {
                        "index": 1,
                        "field": "value",
                        "code": "out_of_range",
                        "message": "pm10 must be between 0 and 2000 µg/m³; got 5000.",
                    }
                ],
            },
        ),
    ],
    tags=["edge"],
)
class ObservationBatchApi(EdgeApi):
    edge_scope = KeyScope.PUSH_READINGS

    def post(self, request: Request) -> Response:
        node = self.node_user(request).node
        idempotency_key = request.headers.get("Idempotency-Key", "")
        if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            return _error(
                400,
                "idempotency_key",
                "The Idempotency-Key header is required: 1 to 128 of A-Z a-z 0-9 _ . : -.",
                field="Idempotency-Key",
            )
        if request.content_type.split(";")[0].strip().lower() not in JSON_TYPES:
            return _error(415, "content_type", "Send the batch as Content-Type: application/json.")
        try:
            body = parsing.body_read(
                stream=request._request,
                content_length=request.META.get("CONTENT_LENGTH"),
                content_encoding=request.headers.get("Content-Encoding"),
                limit=parsing.max_batch_bytes(),
            )
            batch = parsing.batch_parse(body=body)
            outcome = observation_batch_ingest(
                node=node,
                idempotency_key=idempotency_key,
                body_sha256=batch.body_sha256,
                sensors=batch.sensors,
                readings=batch.readings,
                item_errors=batch.item_errors,
            )
        except parsing.BodyRefused as exc:
            return Response(exc.data(), status=exc.status)
        except SensorDeclarationInvalid as exc:
            return _error(400, exc.code, exc.message, field=exc.field)
        except SensorOfOtherNode as exc:
            return _error(403, exc.code, exc.message, sensor=exc.sensor, index=exc.index)
        except TooManyNewMonths as exc:
            return _error(413, exc.code, exc.message, months=exc.needed, limit=exc.limit)
        except IdempotencyKeyReused as exc:
            return _error(422, exc.code, exc.message)
        response = Response(outcome.response)
        if outcome.replayed:
            response["Idempotent-Replayed"] = "true"
        return response


CHANGES_ANSWER = {
    "type": "object",
    "properties": {
        "cursor": {"type": "string"},
        "has_more": {"type": "boolean"},
        "snapshot": {"type": "boolean"},
        "changes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "op": {"type": "string", "enum": ["upsert", "delete"]},
                    "id": {"type": "integer"},
                    "version": {"type": "integer"},
                    "place": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "integer"},
                            "name": {"type": "string"},
                            "religion": {"type": "string"},
                            "denominations": {"type": "array", "items": {"type": "string"}},
                            "dataset": {"type": "string"},
                            "source_key": {"type": "string"},
                            "lon": {"type": "number"},
                            "lat": {"type": "number"},
                            "status": {"type": "string"},
                        },
                    },
                    "reason": {"type": "string", "enum": ["retired", "merged", "moved_out"]},
                    "superseded_by": {"type": "integer", "nullable": True},
                },
                "required": ["op", "id"],
            },
        },
    },
    "required": ["cursor", "has_more", "snapshot", "changes"],
}


@extend_schema(
    summary="Pull the node's region: a snapshot, then the changes since a cursor",
    description=(
        "The places of the node's region (the places whose country is the node's region, "
        "or, for regions of other levels, whose region is it or one below it, such as the "
        "districts of a first-level region). Without `cursor`: the region's active "
        "places in pages of `upsert`s (`snapshot: true`); its last page's cursor continues "
        "with the changes made since the snapshot began (some may repeat what the snapshot "
        "sent: applying is idempotent). With `cursor`: one entry per changed place, its "
        "current state (`upsert`) or a tombstone (`delete` with `reason` `retired`, "
        "`merged` with `superseded_by`, or `moved_out` of the region). Call again with the "
        "returned cursor while `has_more` is true (a page may be empty and still have more); "
        "then keep the cursor for next time. The feed is gapless: a change that commits "
        "late is never skipped.\n\n"
        "Each answer has an `ETag`; `If-None-Match` with it and the answer's cursor gives "
        "304 while the feed has not moved past that cursor (changes elsewhere move it: a "
        "200 with no entries and a new cursor to keep). Sent gzipped when `Accept-Encoding` "
        "allows it. A cursor this server did not give out for the node's region: 400 "
        "`cursor` (start again without one). " + RATE_LIMIT_NOTE
    ),
    parameters=[
        OpenApiParameter("cursor", OpenApiTypes.STR, description="From the previous answer."),
        OpenApiParameter(
            "limit",
            OpenApiTypes.INT,
            description=f"Entries per page, 1–{selectors.MAX_LIMIT} "
            f"(default {selectors.DEFAULT_LIMIT}).",
        ),
        OpenApiParameter(
            "ETag",
            OpenApiTypes.STR,
            location=OpenApiParameter.HEADER,
            response=[200, 304],
            description="Send it back in `If-None-Match` with the answer's cursor.",
        ),
        *RATE_LIMIT_HEADERS,
    ],
    responses={
        200: OpenApiResponse(response=CHANGES_ANSWER, description="A page."),
        304: OpenApiResponse(description="Nothing changed since the answer with this ETag."),
        400: _error_schema("The cursor or limit is invalid.", "cursor", "limit"),
        **AUTH_ERRORS,
    },
    examples=[
        OpenApiExample(
            "A page of changes",
            response_only=True,
            status_codes=["200"],
            value={
                "cursor": "MTo0MjoxMjM0NTY3Ojg5MDE6",
                "has_more": False,
                "snapshot": False,
                "changes": [
                    {
                        "op": "upsert",
                        "id": 17,
                        "version": 3,
                        "place": {
                            "id": 17,
                            "name": "St Mary",
                            "religion": "christian",
                            "denominations": ["anglican"],
                            "dataset": "osm-gb",
                            "source_key": "osm:node/1",
                            "lon": -0.12,
                            "lat": 51.5,
                            "status": "active",
                        },
                    },
                    {"op": "delete", "id": 18, "reason": "merged", "superseded_by": 17},
                ],
            },
        )
    ],
    tags=["edge"],
)
class ChangesApi(EdgeApi):
    edge_scope = KeyScope.PULL_PLACES

    def get(self, request: Request) -> HttpResponse:
        node = self.node_user(request).node
        try:
            return serving.changes_respond(
                node=node,
                cursor=request.query_params.get("cursor") or None,
                raw_limit=request.query_params.get("limit"),
                if_none_match=request.headers.get("If-None-Match", ""),
                accept_encoding=request.headers.get("Accept-Encoding", ""),
            )
        except serving.ChangesQueryInvalid as exc:
            return _error(400, exc.field, exc.message, field=exc.field)


HEARTBEAT_ANSWER = {
    "type": "object",
    "properties": {
        "server_time": {"type": "string", "format": "date-time"},
        "clock_offset_seconds": {"type": "number", "nullable": True},
        "status": {"type": "string"},
    },
    "required": ["server_time", "status"],
}


@extend_schema(
    summary="Report the node's state; learn the server's time",
    description=(
        "Any key of the node may call it. Every field is optional; `clock` (the device's "
        "time, with a zone) gives back `clock_offset_seconds` (device minus server). A node "
        "that makes no request (heartbeat, batch or pull) for `EDGE_SILENT_AFTER_SECONDS` "
        "is marked silent. 400 `invalid` naming the field, 400 `json`. " + RATE_LIMIT_NOTE
    ),
    request={
        "application/json": {
            "type": "object",
            "properties": {
                "software_version": {"type": "string", "maxLength": 64},
                "queue_depth": {"type": "integer", "minimum": 0},
                "disk_free_bytes": {"type": "integer", "minimum": 0},
                "clock": {"type": "string", "format": "date-time"},
            },
        }
    },
    parameters=RATE_LIMIT_HEADERS,
    responses={
        200: OpenApiResponse(response=HEARTBEAT_ANSWER, description="Recorded."),
        400: _error_schema("A field is invalid, or the body is not JSON.", "invalid", "json"),
        413: _error_schema("The body is too large.", "too_large"),
        415: _error_schema("An encoding other than gzip.", "content_encoding"),
        **AUTH_ERRORS,
    },
    examples=[
        OpenApiExample(
            "A heartbeat",
            request_only=True,
            value={
                "software_version": "edge-client 1.0",
                "queue_depth": 12,
                "disk_free_bytes": 123456789,
                "clock": "2026-12-03T22:00:00Z",
            },
        ),
        OpenApiExample(
            "Its answer",
            response_only=True,
            status_codes=["200"],
            value={
                "server_time": "2026-12-03T21:59:58.8Z",
                "clock_offset_seconds": 1.2,
                "status": "active",
            },
        ),
    ],
    tags=["edge"],
)
class HeartbeatApi(EdgeApi):
    edge_scope = None

    def post(self, request: Request) -> Response:
        node = self.node_user(request).node
        try:
            body = parsing.body_read(
                stream=request._request,
                content_length=request.META.get("CONTENT_LENGTH"),
                content_encoding=request.headers.get("Content-Encoding"),
                limit=parsing.MAX_HEARTBEAT_BYTES,
            )
            beat = parsing.heartbeat_parse(body=body)
            answer = edge_node_heartbeat(
                node=node,
                software_version=beat.software_version,
                queue_depth=beat.queue_depth,
                disk_free_bytes=beat.disk_free_bytes,
                clock=beat.clock,
            )
        except parsing.BodyRefused as exc:
            return Response(exc.data(), status=exc.status)
        except HeartbeatInvalid as exc:
            return _error(400, exc.code, exc.message, field=exc.field)
        return Response(answer)
