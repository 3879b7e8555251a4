"""The batch body parser: bounded reads and gzip, strict JSON, whole-body refusals with the
field named, per-reading shape errors that leave the rest of the batch alone. No database."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import zlib

import pytest

from ingestion.edge.parsing import (
    BodyRefused,
    batch_parse,
    body_read,
    gzip_decode,
    heartbeat_parse,
    json_parse,
)
from ingestion.edge.services.batches import ItemError, ReadingIn

LIMIT = 1024


def _reading(**overrides: object) -> dict[str, object]:
    reading: dict[str, object] = {
        "sensor": "12345",
        "parameter": "pm10",
        "time": "2019-03-01T07:00:03Z",
        "value": 12.3,
    }
    reading.update(overrides)
    return reading


def _body(readings: list[object], **extra: object) -> bytes:
    return json.dumps({"readings": readings, **extra}).encode()


def _refused(excinfo: pytest.ExceptionInfo[BodyRefused]) -> tuple[int, str, str | None]:
    return excinfo.value.status, excinfo.value.code, excinfo.value.field


def test_a_valid_batch_becomes_readings_with_aware_utc_times_and_the_body_hash():
    body = _body(
        [_reading(), _reading(time="2019-03-01T08:00:03+01:00", value=7)],
        sensors=[{"id": "12345", "kind": "SDS011", "location": [-2.09, 57.15]}],
    )
    batch = batch_parse(body=body)
    utc = dt.datetime(2019, 3, 1, 7, 0, 3, tzinfo=dt.UTC)
    assert batch.readings == [
        ReadingIn(index=0, sensor="12345", parameter="pm10", time=utc, value=12.3),
        ReadingIn(index=1, sensor="12345", parameter="pm10", time=utc, value=7.0),
    ]
    assert batch.item_errors == []
    assert batch.sensors[0].external_id == "12345"
    assert (batch.sensors[0].lon, batch.sensors[0].lat) == (-2.09, 57.15)
    assert batch.body_sha256 == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    ("reading", "field", "code"),
    [
        ("not an object", "reading", "bad_reading"),
        (_reading(sensor=12345), "sensor", "bad_sensor"),
        (_reading(sensor=""), "sensor", "bad_sensor"),
        (_reading(sensor="x" * 65), "sensor", "bad_sensor"),
        (_reading(sensor="a\x00b"), "sensor", "bad_sensor"),
        (_reading(sensor="\ud800"), "sensor", "bad_sensor"),
        ({"parameter": "pm10", "time": "2019-03-01T07:00:03Z", "value": 1}, "sensor", "bad_sensor"),
        (_reading(parameter=None), "parameter", "bad_parameter"),
        (_reading(time="2019-03-01T07:00:03"), "time", "bad_time"),
        (_reading(time="2019-03-01"), "time", "bad_time"),
        (_reading(time="yesterday"), "time", "bad_time"),
        (_reading(time=1551423603), "time", "bad_time"),
        (_reading(time="2019-03-01T07:00:03Z" + "0" * 100), "time", "bad_time"),
        (_reading(value="12.3"), "value", "bad_value"),
        (_reading(value=True), "value", "bad_value"),
        (_reading(value=None), "value", "bad_value"),
        (_reading(value=[1]), "value", "bad_value"),
    ],
)
def test_a_reading_of_the_wrong_shape_is_a_per_item_error_and_the_rest_go_on(reading, field, code):
    batch = batch_parse(body=_body([_reading(), reading, _reading(time="2019-03-01T07:01:00Z")]))
    assert [r.index for r in batch.readings] == [0, 2]
    assert len(batch.item_errors) == 1
    error = batch.item_errors[0]
    assert (error.index, error.field, error.code) == (1, field, code)
    assert "readings[1]" in error.message


def test_numbers_too_large_for_a_float_are_bad_values_not_infinity():
    # 1e999 is valid JSON that Python reads as inf; 10**400 overflows float()
    body = b'{"readings": [' + json.dumps(_reading()).replace("12.3", "1e999").encode() + b"]}"
    body2 = json.dumps({"readings": [_reading(value=10**400)]}).encode()
    for raw in (body, body2):
        errors = batch_parse(body=raw).item_errors
        assert [(e.field, e.code) for e in errors] == [("value", "bad_value")]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_make_the_whole_body_invalid_json(literal):
    body = json.dumps({"readings": [_reading(value=0)]}).encode().replace(b"0}", literal + b"}")
    assert literal in body
    with pytest.raises(BodyRefused) as excinfo:
        batch_parse(body=body)
    assert _refused(excinfo) == (400, "json", None)


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"", "json", None),
        (b"{", "json", None),
        (b"\xff\xfe{}", "json", None),
        (b"[" * 100_000, "json", None),
        (b"12", "invalid", "body"),
        (b"[]", "invalid", "body"),
        (b"{}", "invalid", "readings"),
        (b'{"readings": {}}', "invalid", "readings"),
        (b'{"readings": "x"}', "invalid", "readings"),
        (b'{"readings": [], "sensors": 3}', "invalid", "sensors"),
        (b'{"readings": [], "sensors": [3]}', "invalid", "sensors[0]"),
        (b'{"readings": [], "sensors": [{"id": 7}]}', "invalid", "sensors[0].id"),
        (b'{"readings": [], "sensors": [{"id": "7", "kind": 1}]}', "invalid", "sensors[0].kind"),
        (
            b'{"readings": [], "sensors": [{"id": "7", "location": [1]}]}',
            "invalid",
            "sensors[0].location",
        ),
        (
            b'{"readings": [], "sensors": [{"id": "7", "location": [200, 0]}]}',
            "invalid",
            "sensors[0].location",
        ),
        (
            b'{"readings": [], "sensors": [{"id": "7"}, {"id": "7"}]}',
            "invalid",
            "sensors[1].id",
        ),
        (b'{"readings": [], "x": 1' + b"0" * 5000 + b"}", "json", None),
    ],
)
def test_whole_body_problems_are_400_naming_the_field(body, code, field):
    with pytest.raises(BodyRefused) as excinfo:
        batch_parse(body=body)
    assert _refused(excinfo) == (400, code, field)
    if field:
        assert field in excinfo.value.detail


def test_more_readings_than_the_limit_is_413():
    with pytest.raises(BodyRefused) as excinfo:
        batch_parse(body=_body([_reading()] * 11), max_readings=10)
    assert _refused(excinfo) == (413, "too_many_readings", "readings")
    assert len(batch_parse(body=_body([_reading()] * 10), max_readings=10).readings) == 10


def test_a_huge_string_is_a_per_item_error_whose_message_stays_short():
    batch = batch_parse(body=_body([_reading(sensor="x" * 1_000_000)]), max_readings=10)
    [error] = batch.item_errors
    assert error.code == "bad_sensor"
    assert len(error.message) < 200


def test_the_body_is_read_up_to_the_limit_and_refused_past_it():
    # exactly the limit passes, one byte more does not, announced or not
    assert (
        body_read(
            stream=io.BytesIO(b"x" * LIMIT), content_length=None, content_encoding=None, limit=LIMIT
        )
        == b"x" * LIMIT
    )
    for length in (None, str(LIMIT + 1)):
        with pytest.raises(BodyRefused) as excinfo:
            body_read(
                stream=io.BytesIO(b"x" * (LIMIT + 1)),
                content_length=length,
                content_encoding="",
                limit=LIMIT,
            )
        assert _refused(excinfo)[:2] == (413, "too_large")


def test_an_announced_length_over_the_limit_is_refused_without_reading():
    class Unreadable(io.RawIOBase):
        def read(self, size: int = -1) -> bytes:
            raise AssertionError("read")

    with pytest.raises(BodyRefused) as excinfo:
        body_read(
            stream=Unreadable(), content_length=str(10**12), content_encoding=None, limit=LIMIT
        )
    assert excinfo.value.status == 413


def test_gzip_bodies_are_decoded_and_hash_like_the_plain_body():
    plain = _body([_reading()])
    decoded = body_read(
        stream=io.BytesIO(gzip.compress(plain)),
        content_length=None,
        content_encoding="gzip",
        limit=LIMIT,
    )
    assert decoded == plain
    # two members, as `cat a.gz b.gz` makes
    assert gzip_decode(gzip.compress(b"ab") + gzip.compress(b"cd"), limit=LIMIT) == b"abcd"


def test_a_gzip_bomb_stops_at_the_limit():
    # 1 GiB of zeros in about a megabyte: decoding stops at the limit + 1
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(1024)) + compressor.flush()
    assert len(bomb) < 2 << 20
    with pytest.raises(BodyRefused) as excinfo:
        gzip_decode(bomb, limit=8 << 20)
    assert _refused(excinfo)[:2] == (413, "too_large")


@pytest.mark.parametrize(
    "data", [b"not gzip at all", gzip.compress(b"x" * 100)[:-12], gzip.compress(b"{}") + b"junk"]
)
def test_corrupt_or_truncated_gzip_is_400(data):
    with pytest.raises(BodyRefused) as excinfo:
        gzip_decode(data, limit=LIMIT)
    assert _refused(excinfo)[:2] == (400, "gzip")


def test_other_content_encodings_are_415():
    with pytest.raises(BodyRefused) as excinfo:
        body_read(stream=io.BytesIO(b"{}"), content_length="2", content_encoding="br", limit=LIMIT)
    assert _refused(excinfo)[:2] == (415, "content_encoding")


def test_json_parse_refuses_deep_nesting_without_crashing():
    with pytest.raises(BodyRefused):
        json_parse(b"[" * 1_000_000 + b"]" * 1_000_000)


def test_heartbeat_fields_are_optional_and_checked():
    beat = heartbeat_parse(body=b'{"queue_depth": 3, "clock": "2026-12-03T22:00:00Z"}')
    assert beat.queue_depth == 3
    assert beat.clock == dt.datetime(2026, 12, 3, 22, tzinfo=dt.UTC)
    assert heartbeat_parse(body=b"").queue_depth is None
    for body, field in (
        (b'{"queue_depth": -1}', "queue_depth"),
        (b'{"disk_free_bytes": 1.5}', "disk_free_bytes"),
        (b'{"clock": "2026-12-03T22:00:00"}', "clock"),
        (b'{"software_version": 3}', "software_version"),
    ):
        with pytest.raises(BodyRefused) as excinfo:
            heartbeat_parse(body=body)
        assert _refused(excinfo) == (400, "invalid", field)


def test_item_errors_are_the_services_type():
    batch = batch_parse(body=_body([1]))
    assert isinstance(batch.item_errors[0], ItemError)
