"""Reading an edge node's request body: bounded, strict, and never trusting the client.

The steps, each with its own refusal (``BodyRefused``: HTTP status, ``code``, the field):

1. **Bytes**: at most ``EDGE_MAX_BATCH_BYTES`` + 1 are read from the request stream (a
   ``Content-Length`` above the limit is refused before reading); more → 413 ``too_large``.
2. **Gzip** (``Content-Encoding: gzip``): decoded by a ``zlib`` decompressor asked for at
   most the limit + 1 bytes at a time, so a bomb stops at the limit (413 ``too_large``) after
   using that much memory, never more. Corrupt or truncated gzip → 400 ``gzip``. Other
   encodings → 415 ``content_encoding``.
3. **JSON**: UTF-8, no ``NaN``/``Infinity`` literals (``parse_constant``), nesting only as
   deep as the interpreter's recursion limit; anything else → 400 ``json``.
4. **Shape**: whole-body problems (not an object, ``readings`` missing or not a list, a bad
   sensor declaration) → 400 naming the field; more than ``EDGE_MAX_BATCH_READINGS`` readings
   → 413 ``too_many_readings``. A reading with a wrong shape (not an object, a field missing,
   of the wrong type, a naive or unparseable time, a non-finite value) becomes an
   ``ItemError`` and the rest of the batch goes on; the domain checks (known sensor and
   parameter, range, time window, duplicates) are the batch service's.

The SHA-256 of the decoded body is what idempotency compares: the same readings sent once
gzipped and once plain are the same batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

from ingestion.edge.services.batches import ItemError, ReadingIn, SensorDeclaration

# A heartbeat is a handful of small fields.
MAX_HEARTBEAT_BYTES = 16 * 1024

MAX_SENSOR_ID = 64
MAX_SENSOR_KIND = 32
MAX_PARAMETER = 32
# ISO 8601 with fractions and an offset fits in 40 characters; longer is not a time.
MAX_TIME_TEXT = 64
GZIP_ENCODINGS = {"gzip", "x-gzip"}
IDENTITY_ENCODINGS = {"", "identity"}
# Read from the stream in pieces so that a client announcing nothing cannot make one read()
# allocate the whole limit up front.
READ_CHUNK = 256 * 1024


# Read per request, so a changed setting applies at once (and tests can change it).
def max_batch_bytes() -> int:
    return int(settings.EDGE_MAX_BATCH_BYTES)


def max_batch_readings() -> int:
    return int(settings.EDGE_MAX_BATCH_READINGS)


class BodyRefused(Exception):
    """The body as a whole is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, *, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.field = status, code, detail, field

    def data(self) -> dict[str, str]:
        data = {"detail": self.detail, "code": self.code}
        if self.field is not None:
            data["field"] = self.field
        return data


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class ParsedBatch:
    body_sha256: str
    sensors: list[SensorDeclaration]
    readings: list[ReadingIn]
    item_errors: list[ItemError]


def _too_large(limit: int) -> BodyRefused:
    return BodyRefused(
        status=413,
        code="too_large",
        detail=f"The body is larger than {limit:,} bytes (decoded).",
    )


def body_read(
    *,
    stream: Readable,
    content_length: str | None,
    content_encoding: str | None,
    limit: int,
) -> bytes:
    """The decoded body: at most ``limit`` bytes, read and decoded in bounded steps."""
    encoding = (content_encoding or "").strip().lower()
    if encoding not in GZIP_ENCODINGS | IDENTITY_ENCODINGS:
        raise BodyRefused(
            status=415,
            code="content_encoding",
            detail=f"Content-Encoding {encoding[:40]!r} is not supported; send gzip or none.",
        )
    try:
        announced = int(content_length) if content_length else None
    except ValueError:
        announced = None
    if announced is not None and announced > limit:
        # The compressed form of a body is never longer than the body it decodes to by more
        # than a few bytes, so an announced size over the limit is refused unread.
        raise _too_large(limit)
    raw = _read_at_most(stream, limit + 1)
    if len(raw) > limit:
        raise _too_large(limit)
    if encoding in GZIP_ENCODINGS:
        return gzip_decode(raw, limit=limit)
    return raw


def _read_at_most(stream: Readable, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = stream.read(min(READ_CHUNK, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def gzip_decode(data: bytes, *, limit: int) -> bytes:
    """Decode gzip (one member or several, as ``gzip`` concatenates them), refusing output
    past ``limit`` as soon as it appears: no more than ``limit`` + 1 bytes are ever held."""
    out = bytearray()
    rest = data
    while True:
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        chunk = rest
        try:
            while chunk and not decoder.eof:
                out += decoder.decompress(chunk, limit + 1 - len(out))
                if len(out) > limit:
                    raise _too_large(limit)
                chunk = decoder.unconsumed_tail
            if not decoder.eof:
                out += decoder.flush()
        except zlib.error as exc:
            raise BodyRefused(
                status=400, code="gzip", detail=f"The gzip body is corrupt: {exc}."
            ) from None
        if len(out) > limit:
            raise _too_large(limit)
        if not decoder.eof:
            raise BodyRefused(status=400, code="gzip", detail="The gzip body is truncated.")
        rest = decoder.unused_data
        if not rest:
            return bytes(out)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_parse(body: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN or Infinity, bounded nesting; 400 ``json`` otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRefused(
            status=400, code="json", detail=f"The body is not UTF-8 (byte {exc.start})."
        ) from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, the NaN/Infinity refusal and integers longer
        # than Python converts; the C scanner raises RecursionError on deep nesting.
        raise BodyRefused(
            status=400, code="json", detail=f"The body is not valid JSON: {str(exc)[:200]}"
        ) from None


def _text_problem(value: Any, *, min_length: int, max_length: int) -> str | None:
    """Why ``value`` is not a usable identifier text, or None. Control characters and lone
    surrogates (which JSON's \\u escapes can produce) are refused: PostgreSQL stores
    neither NUL nor invalid UTF-8."""
    if not isinstance(value, str):
        return f"must be a string; got {_json_type(value)}"
    if not min_length <= len(value) <= max_length:
        return f"must be {min_length}–{max_length} characters; got {len(value):,}"
    if not value.isprintable():
        return "must not contain control characters or unpaired surrogates"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def time_parse(value: Any) -> tuple[dt.datetime | None, str]:
    """An aware UTC datetime, or None and why not."""
    if not isinstance(value, str):
        return None, f"must be an ISO 8601 string; got {_json_type(value)}"
    if len(value) > MAX_TIME_TEXT:
        return None, f"must be an ISO 8601 time; got {len(value):,} characters"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None, f"must be an ISO 8601 time; got {value!r}"
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None, f"must have a time zone (Z or an offset); got {value!r}"
    try:
        return parsed.astimezone(dt.UTC), ""
    except OverflowError:
        return None, f"is out of range once converted to UTC; got {value!r}"


def _reading(index: int, item: Any) -> ReadingIn | ItemError:
    where = f"readings[{index}]"
    if not isinstance(item, dict):
        return ItemError(
            index=index,
            field="reading",
            code="bad_reading",
            message=f"{where} must be an object; got {_json_type(item)}.",
        )
    problem = _text_problem(item.get("sensor"), min_length=1, max_length=MAX_SENSOR_ID)
    if problem:
        return ItemError(
            index=index, field="sensor", code="bad_sensor", message=f"{where}.sensor {problem}."
        )
    problem = _text_problem(item.get("parameter"), min_length=1, max_length=MAX_PARAMETER)
    if problem:
        return ItemError(
            index=index,
            field="parameter",
            code="bad_parameter",
            message=f"{where}.parameter {problem}.",
        )
    time, why = time_parse(item.get("time"))
    if time is None:
        return ItemError(index=index, field="time", code="bad_time", message=f"{where}.time {why}.")
    value = _finite_number(item.get("value"))
    if value is None:
        raw = item.get("value")
        got = "too large a number" if _json_type(raw) == "a number" else _json_type(raw)
        return ItemError(
            index=index,
            field="value",
            code="bad_value",
            message=f"{where}.value must be a finite number; got {got}.",
        )
    return ReadingIn(
        index=index,
        sensor=item["sensor"],
        parameter=item["parameter"],
        time=time,
        value=value,
    )


def _sensor(index: int, item: Any) -> SensorDeclaration:
    where = f"sensors[{index}]"
    if not isinstance(item, dict):
        raise _bad_field(where, f"must be an object; got {_json_type(item)}")
    problem = _text_problem(item.get("id"), min_length=1, max_length=MAX_SENSOR_ID)
    if problem:
        raise _bad_field(f"{where}.id", problem)
    kind = item.get("kind")
    if kind is None:
        kind = ""
    problem = _text_problem(kind, min_length=0, max_length=MAX_SENSOR_KIND)
    if problem:
        raise _bad_field(f"{where}.kind", problem)
    location = item.get("location")
    lon = lat = None
    if location is not None:
        if isinstance(location, list) and len(location) == 2:
            lon, lat = (_finite_number(v) for v in location)
        if lon is None or lat is None:
            raise _bad_field(f"{where}.location", "must be [longitude, latitude] or null")
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise _bad_field(
                f"{where}.location",
                f"must have longitude in -180–180 and latitude in -90–90; got {lon}, {lat}",
            )
    return SensorDeclaration(external_id=item["id"], kind=kind, lon=lon, lat=lat)


def _bad_field(field: str, problem: str) -> BodyRefused:
    return BodyRefused(status=400, code="invalid", field=field, detail=f"{field} {problem}.")


def batch_parse(*, body: bytes, max_readings: int | None = None) -> ParsedBatch:
    """The decoded body of ``POST observations/`` as the batch service takes it."""
    limit = max_batch_readings() if max_readings is None else max_readings
    data = json_parse(body)
    if not isinstance(data, dict):
        raise BodyRefused(
            status=400,
            code="invalid",
            field="body",
            detail=f"The body must be a JSON object; got {_json_type(data)}.",
        )
    if "readings" not in data:
        raise _bad_field("readings", "is required")
    readings_data = data["readings"]
    if not isinstance(readings_data, list):
        raise _bad_field("readings", f"must be an array; got {_json_type(readings_data)}")
    if len(readings_data) > limit:
        raise BodyRefused(
            status=413,
            code="too_many_readings",
            field="readings",
            detail=f"A batch holds at most {limit:,} readings; got {len(readings_data):,}.",
        )
    sensors_data = data.get("sensors")
    if sensors_data is None:
        sensors_data = []
    if not isinstance(sensors_data, list):
        raise _bad_field("sensors", f"must be an array; got {_json_type(sensors_data)}")
    if len(sensors_data) > limit:
        raise BodyRefused(
            status=413,
            code="too_many_sensors",
            field="sensors",
            detail=f"A batch declares at most {limit:,} sensors; got {len(sensors_data):,}.",
        )
    sensors: list[SensorDeclaration] = []
    declared: dict[str, int] = {}
    for index, item in enumerate(sensors_data):
        sensor = _sensor(index, item)
        if sensor.external_id in declared:
            raise _bad_field(
                f"sensors[{index}].id",
                f"declares {sensor.external_id!r} again (sensors[{declared[sensor.external_id]}])",
            )
        declared[sensor.external_id] = index
        sensors.append(sensor)
    readings: list[ReadingIn] = []
    errors: list[ItemError] = []
    for index, item in enumerate(readings_data):
        parsed = _reading(index, item)
        if isinstance(parsed, ReadingIn):
            readings.append(parsed)
        else:
            errors.append(parsed)
    return ParsedBatch(
        body_sha256=hashlib.sha256(body).hexdigest(),
        sensors=sensors,
        readings=readings,
        item_errors=errors,
    )


@dataclass(frozen=True)
class Heartbeat:
    software_version: str | None
    queue_depth: int | None
    disk_free_bytes: int | None
    clock: dt.datetime | None


def heartbeat_parse(*, body: bytes) -> Heartbeat:
    """``POST heartbeat/``: every field optional; a present one of the wrong type → 400."""
    data = json_parse(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise BodyRefused(
            status=400,
            code="invalid",
            field="body",
            detail=f"The body must be a JSON object; got {_json_type(data)}.",
        )
    version = data.get("software_version")
    if version is not None:
        problem = _text_problem(version, min_length=0, max_length=64)
        if problem:
            raise _bad_field("software_version", problem)
    counts: dict[str, int | None] = {}
    for field in ("queue_depth", "disk_free_bytes"):
        value = data.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63
        ):
            raise _bad_field(field, "must be a whole number from 0 to 2**63 - 1")
        counts[field] = value
    clock = None
    if data.get("clock") is not None:
        clock, why = time_parse(data["clock"])
        if clock is None:
            raise _bad_field("clock", why)
    return Heartbeat(
        software_version=version,
        queue_depth=counts["queue_depth"],
        disk_free_bytes=counts["disk_free_bytes"],
        clock=clock,
    )
