"""The edge protocol over HTTP (Django's test client, real PostGIS and Redis): keys and
scopes, idempotency, limits, bad bodies (always a clear 4xx, nothing half-stored), gzip,
heartbeats and the per-node rate limit."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client, override_settings
from django.utils import timezone

from ingestion.edge.models import (
    EdgeNode,
    KeyScope,
    NodeStatus,
    Observation,
    ObservationBatch,
    Sensor,
)
from ingestion.edge.services.keys import edge_key_create, edge_key_revoke
from places.throttling import KEY_PREFIX
from tests.ingestion.edge.factories import node_make

pytestmark = pytest.mark.django_db

OBSERVATIONS = "/api/v1/edge/observations/"
CHANGES = "/api/v1/edge/changes/"
HEARTBEAT = "/api/v1/edge/heartbeat/"


@pytest.fixture(autouse=True)
def generous_rate(settings) -> Iterator[None]:
    """No test but the rate-limit one meets the limit; no window survives a test."""
    settings.EDGE_RATE = "100000/m"
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]  # django-redis
    yield
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]


@pytest.fixture
def node() -> EdgeNode:
    return node_make()


@pytest.fixture
def key(node: EdgeNode) -> str:
    return edge_key_create(node=node).secret


def _reading(sensor: str = "s1", minute: int = 0, value: float = 12.3, **extra: Any) -> dict:
    time = dt.datetime(2019, 3, 1, 7, minute, 3, tzinfo=dt.UTC)
    return {
        "sensor": sensor,
        "parameter": "pm10",
        "time": time.isoformat().replace("+00:00", "Z"),
        "value": value,
        **extra,
    }


def _batch(*readings: dict, sensors: tuple[str, ...] = ("s1",)) -> dict:
    return {
        "sensors": [{"id": s, "kind": "SDS011", "location": [-2.09, 57.15]} for s in sensors],
        "readings": list(readings),
    }


def _post(
    key: str | None,
    body: bytes | dict,
    *,
    idempotency_key: str | None = "batch-1",
    path: str = OBSERVATIONS,
    content_type: str = "application/json",
    **headers: str,
):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = {f"HTTP_{name.upper()}": value for name, value in headers.items()}
    if key is not None:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    if idempotency_key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = idempotency_key
    return Client().post(path, data=data, content_type=content_type, **extra)


def _stored(node: EdgeNode) -> tuple[int, int]:
    """(batches, readings) stored for the node."""
    return (
        ObservationBatch.objects.filter(node=node).count(),
        Observation.objects.filter(sensor__node=node).count(),
    )


def _error(response) -> tuple[int, str]:
    return response.status_code, response.json()["code"]


# --- keys -----------------------------------------------------------------------------------


def test_a_request_without_a_key_is_401_key_missing_with_a_bearer_challenge(node):
    response = _post(None, _batch(_reading()))
    assert _error(response) == (401, "key_missing")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert _stored(node) == (0, 0)


@pytest.mark.parametrize(
    ("make_key", "code"),
    [
        (lambda node: "not-a-key", "key_malformed"),
        (lambda node: "edge_abcdefgh_" + "A" * 43, "key_unknown"),
        (lambda node: edge_key_create(node=node).secret[:-1] + "x", "key_unknown"),
        (
            lambda node: (lambda created: edge_key_revoke(key=created.key) and created.secret)(
                edge_key_create(node=node)
            ),
            "key_revoked",
        ),
        (
            lambda node: (
                edge_key_create(
                    node=node, expires_at=timezone.now() - dt.timedelta(seconds=1)
                ).secret
            ),
            "key_expired",
        ),
    ],
    ids=["malformed", "unknown", "wrong-secret", "revoked", "expired"],
)
def test_a_bad_key_is_401_naming_the_problem(node, make_key, code):
    response = _post(make_key(node), _batch(_reading()))
    assert _error(response) == (401, code)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["detail"]
    assert _stored(node) == (0, 0)


def test_a_disabled_nodes_key_is_401_node_disabled(node, key):
    EdgeNode.objects.filter(pk=node.pk).update(status=NodeStatus.DISABLED)
    for response in (
        _post(key, _batch(_reading())),
        Client().get(CHANGES, HTTP_AUTHORIZATION=f"Bearer {key}"),
    ):
        assert _error(response) == (401, "node_disabled")


def test_a_key_without_the_scope_is_403_and_nothing_is_stored(node):
    pull_only = edge_key_create(node=node, scopes=[KeyScope.PULL_PLACES]).secret
    push_only = edge_key_create(node=node, scopes=[KeyScope.PUSH_READINGS]).secret
    assert _error(_post(pull_only, _batch(_reading()))) == (403, "scope_missing")
    assert _stored(node) == (0, 0)
    changes = Client().get(CHANGES, HTTP_AUTHORIZATION=f"Bearer {push_only}")
    assert _error(changes) == (403, "scope_missing")


def test_a_heartbeat_takes_a_key_of_any_scope(node):
    for scope in KeyScope.values:
        secret = edge_key_create(node=node, scopes=[scope]).secret
        response = _post(
            secret,
            {
                "software_version": "edge-client 1.0",
                "queue_depth": 12,
                "clock": "2026-12-03T22:00:00Z",
            },
            path=HEARTBEAT,
            idempotency_key=None,
        )
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "active"
        assert "clock_offset_seconds" in response.json()
    node.refresh_from_db()
    assert (node.software_version, node.queue_depth) == ("edge-client 1.0", 12)


def test_a_bad_heartbeat_field_is_400_naming_it(key):
    response = _post(key, {"queue_depth": "many"}, path=HEARTBEAT, idempotency_key=None)
    assert _error(response) == (400, "invalid")
    assert response.json()["field"] == "queue_depth"


def test_a_reading_of_another_nodes_sensor_is_rejected_alone_declaring_it_is_403(node, key):
    # given a sensor registered to another node
    other = node_make()
    other_key = edge_key_create(node=other).secret
    assert _post(other_key, _batch(_reading("theirs"), sensors=("theirs",))).status_code == 200
    # when this node sends a batch naming it in a reading (after a reading of its own)
    body = _batch(_reading("s1"), _reading("theirs", minute=1))
    response = _post(key, body, idempotency_key="k-1")
    # then only that reading is rejected, with its index and reason; its own is stored
    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert [(e["index"], e["field"], e["code"]) for e in answer["errors"]] == [
        (1, "sensor", "sensor_of_other_node")
    ]
    assert _stored(node) == (1, 1)
    assert Sensor.objects.get(external_id="theirs").node == other
    # when it declares that sensor in sensors
    response = _post(key, _batch(_reading("s1"), sensors=("theirs",)), idempotency_key="k-2")
    # then the whole batch is refused, naming the sensor and its index in sensors
    assert _error(response) == (403, "sensor_of_other_node")
    assert (response.json()["sensor"], response.json()["index"]) == ("theirs", 0)
    assert "theirs" in response.json()["detail"]
    assert _stored(node) == (1, 1)
    # and the same key can carry a corrected batch
    assert _post(key, _batch(_reading("s1", minute=2)), idempotency_key="k-2").status_code == 200


# --- idempotency ----------------------------------------------------------------------------


@pytest.mark.parametrize("idempotency_key", [None, "", "has space", "x" * 129, "é"])
def test_a_missing_or_malformed_idempotency_key_is_400(node, key, idempotency_key):
    response = _post(key, _batch(_reading()), idempotency_key=idempotency_key)
    assert _error(response) == (400, "idempotency_key")
    assert _stored(node) == (0, 0)


def test_a_replay_answers_the_first_answer_again_and_stores_nothing_more(node, key):
    body = _batch(*[_reading(minute=m) for m in range(3)])
    first = _post(key, body, idempotency_key="replay-me")
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first
    assert first.json()["accepted"] == 3
    again = _post(key, body, idempotency_key="replay-me")
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert _stored(node) == (1, 3)


def test_a_replay_sent_gzipped_is_the_same_batch(node, key):
    raw = json.dumps(_batch(_reading())).encode()
    first = _post(key, raw, idempotency_key="same")
    again = _post(key, gzip.compress(raw), idempotency_key="same", CONTENT_ENCODING="gzip")
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()


def test_the_same_key_with_another_body_is_422(node, key):
    assert _post(key, _batch(_reading()), idempotency_key="once").status_code == 200
    response = _post(key, _batch(_reading(value=99)), idempotency_key="once")
    assert _error(response) == (422, "idempotency_key_reused")
    assert _stored(node) == (1, 1)
    assert Observation.objects.get(sensor__node=node).value == 12.3


def test_keys_are_per_node(node, key):
    other = node_make()
    other_key = edge_key_create(node=other).secret
    assert _post(key, _batch(_reading()), idempotency_key="k").status_code == 200
    response = _post(other_key, _batch(_reading("s2"), sensors=("s2",)), idempotency_key="k")
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response


# --- limits and bad bodies ------------------------------------------------------------------


def test_a_body_over_the_byte_limit_is_413(settings, node, key):
    settings.EDGE_MAX_BATCH_BYTES = 2048
    body = _batch(*[_reading(minute=m % 60, value=m) for m in range(40)])
    assert len(json.dumps(body)) > 2048
    assert _error(_post(key, body)) == (413, "too_large")
    assert _stored(node) == (0, 0)


def test_more_readings_than_the_limit_is_413(settings, node, key):
    settings.EDGE_MAX_BATCH_READINGS = 5
    response = _post(key, _batch(*[_reading(minute=m) for m in range(6)]))
    assert _error(response) == (413, "too_many_readings")
    assert _post(key, _batch(*[_reading(minute=m) for m in range(5)])).status_code == 200


def test_readings_in_more_new_months_than_allowed_is_413_too_many_months(settings, node, key):
    # given a limit of one new month a batch
    settings.EDGE_MAX_NEW_MONTHS_PER_BATCH = 1
    body = _batch(_reading(time="2001-04-02T00:00:00Z"), _reading(time="2001-06-02T00:00:00Z"))
    # when a batch's readings fall in two months without a partition
    response = _post(key, body)
    # then it is refused whole, saying how many and the limit
    assert _error(response) == (413, "too_many_months")
    assert (response.json()["months"], response.json()["limit"]) == (2, 1)
    assert _stored(node) == (0, 0)


def test_a_gzip_bomb_is_413_at_the_limit(settings, node, key):
    # given 256 MiB of zeros in a quarter of a megabyte, against a 1 MiB limit
    settings.EDGE_MAX_BATCH_BYTES = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    response = _post(key, bomb, CONTENT_ENCODING="gzip")
    assert _error(response) == (413, "too_large")
    assert _stored(node) == (0, 0)


def test_a_gzipped_batch_is_accepted(node, key):
    body = gzip.compress(json.dumps(_batch(_reading(), _reading(minute=1))).encode())
    response = _post(key, body, CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    assert response.json()["accepted"] == 2


def test_a_ten_megabyte_string_is_413(node, key):
    body = _batch(_reading(sensor="x" * (10 << 20)))
    assert _error(_post(key, body)) == (413, "too_large")
    assert _stored(node) == (0, 0)


def test_a_long_string_under_the_limit_is_a_per_item_reason(node, key):
    response = _post(key, _batch(_reading(), _reading(sensor="x" * (1 << 20), minute=1)))
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["errors"][0]["code"] == "bad_sensor"
    assert len(answer["errors"][0]["message"]) < 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "json"),
        (b'{"readings": [{"value": NaN}]}', 400, "json"),
        (b'{"readings": [{"value": Infinity}]}', 400, "json"),
        (b"\xff\xfe\x00", 400, "json"),
        (b"[" * 200_000, 400, "json"),
        (b'"readings"', 400, "invalid"),
        (b'{"readings": {"0": {}}}', 400, "invalid"),
        (b'{"sensors": []}', 400, "invalid"),
        (b'{"readings": [], "sensors": [{"id": "s1", "location": "here"}]}', 400, "invalid"),
    ],
)
def test_a_bad_body_is_a_clear_4xx_and_nothing_is_stored(node, key, body, status, code):
    response = _post(key, body)
    assert _error(response) == (status, code)
    assert response.json()["detail"]
    assert _stored(node) == (0, 0)
    assert not Sensor.objects.filter(node=node).exists()


def test_wrong_types_inside_readings_are_per_item_reasons_and_the_rest_is_stored(node, key):
    body = _batch(
        _reading(minute=0),
        _reading(minute=1, value="12"),
        "a string",
        _reading(minute=2, time="2019-03-01T07:02:03"),
        _reading(minute=3, parameter=7),
        _reading(minute=4, parameter="radon"),
        _reading(minute=5, value=5000),
        _reading(minute=6, sensor="never-declared"),
    )
    response = _post(key, body)
    assert response.status_code == 200, response.content
    answer = response.json()
    assert (answer["accepted"], answer["duplicate"], answer["rejected"]) == (1, 0, 7)
    codes = {(e["index"], e["field"], e["code"]) for e in answer["errors"]}
    assert codes == {
        (1, "value", "bad_value"),
        (2, "reading", "bad_reading"),
        (3, "time", "bad_time"),
        (4, "parameter", "bad_parameter"),
        (5, "parameter", "unknown_parameter"),
        (6, "value", "out_of_range"),
        (7, "sensor", "unknown_sensor"),
    }
    assert [e["index"] for e in answer["errors"]] == sorted(e["index"] for e in answer["errors"])
    assert _stored(node) == (1, 1)


def test_duplicates_inside_a_batch_count_once(node, key):
    response = _post(key, _batch(_reading(), _reading(value=13), _reading(minute=1)))
    answer = response.json()
    assert (answer["accepted"], answer["duplicate"], answer["rejected"]) == (2, 1, 0)
    assert [(e["index"], e["code"]) for e in answer["errors"]] == [(1, "duplicate_in_batch")]
    assert Observation.objects.get(sensor__node=node, time__minute=0).value == 12.3
    # and the same readings under a new key are duplicates of the stored ones
    again = _post(key, _batch(_reading(), _reading(minute=1)), idempotency_key="batch-2")
    assert (again.json()["accepted"], again.json()["duplicate"]) == (0, 2)


def test_a_body_that_is_not_json_by_content_type_is_415(node, key):
    response = _post(key, b"readings", content_type="text/plain")
    assert _error(response) == (415, "content_type")


def test_an_unknown_content_encoding_is_415(node, key):
    response = _post(key, _batch(_reading()), CONTENT_ENCODING="br")
    assert _error(response) == (415, "content_encoding")


def test_an_unsupported_method_is_405_before_the_key_is_asked_for():
    response = Client().get(OBSERVATIONS)
    assert response.status_code == 405
    assert "POST" in response["Allow"]


# --- rate limit -----------------------------------------------------------------------------


def test_the_rate_limit_is_per_node_with_headers_and_429_retry_after(settings, node, key):
    settings.EDGE_RATE = "3/h"
    other_key = edge_key_create(node=node_make(), scopes=[KeyScope.PULL_PLACES]).secret
    answers = [_post(key, {}, path=HEARTBEAT, idempotency_key=None) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a["RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a["RateLimit-Limit"] == "3" for a in answers)
    assert 0 < int(answers[-1]["Retry-After"]) <= 3600
    assert answers[-1].json()["code"] == "throttled"
    # another key of the same node shares the window; another node has its own
    second_key = edge_key_create(node=node).secret
    assert _post(second_key, {}, path=HEARTBEAT, idempotency_key=None).status_code == 429
    assert _post(other_key, {}, path=HEARTBEAT, idempotency_key=None).status_code == 200


def test_failed_authentications_from_one_address_are_limited_before_any_key_lookup(
    settings, node, key, django_assert_num_queries
):
    # given at most three failed authentications a minute per address
    settings.EDGE_AUTH_FAILURE_RATE = "3/m"
    wrong = "edge_abcdefgh_" + "A" * 43

    def beat(raw: str, address: str):
        client = Client(REMOTE_ADDR=address, HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client.post(HEARTBEAT, data=b"{}", content_type="application/json")

    # when one address tries wrong keys
    answers = [beat(wrong, "203.0.113.7") for _ in range(4)]
    # then the first three are 401 and the fourth 429 with Retry-After
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert answers[-1].json()["code"] == "throttled"
    assert 0 < int(answers[-1]["Retry-After"]) <= 60
    # and from then on that address is refused without looking a key up, a right one too
    with django_assert_num_queries(0):
        assert _error(beat(key, "203.0.113.7")) == (429, "throttled")
    # while another address with the right key is served
    assert beat(key, "198.51.100.2").status_code == 200


def _million_readings() -> bytes:
    """A batch of a million readings (about 80 MB of JSON), as one device's runaway queue."""
    one = json.dumps(_reading()).encode()
    sensors = json.dumps(_batch()["sensors"]).encode()
    return b'{"sensors": ' + sensors + b', "readings": [' + b", ".join([one] * 1_000_000) + b"]}"


def test_a_million_readings_with_the_default_limits_is_413_and_stores_nothing(node, key):
    # given a million readings, sent as they are and gzipped (a small body on the wire)
    body = _million_readings()
    compressed = gzip.compress(body, compresslevel=1)
    assert len(compressed) < len(body) // 20

    # when each is posted with the default limits
    plain = _post(key, body)
    zipped = _post(key, compressed, idempotency_key="batch-2", CONTENT_ENCODING="gzip")

    # then both are refused as too large before any reading is parsed, and nothing is stored
    assert _error(plain) == (413, "too_large")
    assert _error(zipped) == (413, "too_large")
    assert _stored(node) == (0, 0)


def test_one_reading_past_the_default_count_limit_is_413(settings, node, key):
    # given the default limit of readings a batch (far under the byte limit at this size)
    limit = settings.EDGE_MAX_BATCH_READINGS
    readings = [_reading(minute=i % 60, value=float(i)) for i in range(limit + 1)]

    # when one reading more than the limit is sent, then the limit itself
    over = _post(key, _batch(*readings))
    at = _post(key, _batch(*readings[:limit]), idempotency_key="batch-2")

    # then the first is refused whole naming the limit, the second is taken
    assert _error(over) == (413, "too_many_readings")
    assert at.status_code == 200
    assert _stored(node)[0] == 1


def test_a_batch_is_acknowledged_and_kept_when_the_broker_refuses_its_follow_up(
    monkeypatch, node, key, django_capture_on_commit_callbacks
):
    # given a broker that refuses every message, as Redis does when it is down
    from kombu.exceptions import OperationalError

    from ingestion.edge import tasks

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.edge_batch_follow_up, "delay", refuse)

    # when a batch is posted and its transaction commits
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _post(key, _batch(_reading(), _reading(minute=1)))

    # then the follow-up was tried and failed, yet the batch is acknowledged and stored;
    # beat's sweep (edge_batches_count_pending) counts it later
    assert callbacks
    assert response.status_code == 200
    assert response.json()["accepted"] == 2
    assert _stored(node) == (1, 2)
    assert ObservationBatch.objects.get(node=node).counted_at is None


def test_a_batch_is_taken_and_stored_when_the_cache_redis_is_unreachable(settings, node, key):
    # given the cache Redis (rate limits) on a port nothing listens on
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caches = {**settings.CACHES}
    caches["default"] = {**caches["default"], "LOCATION": f"redis://127.0.0.1:{port}/0"}

    # when a batch is posted, and posted again under its key
    with override_settings(CACHES=caches):
        first = _post(key, _batch(_reading(), _reading(minute=1)))
        replay = _post(key, _batch(_reading(), _reading(minute=1)))

    # then both are answered from PostgreSQL alone: stored once, the replay the same answer
    assert first.status_code == replay.status_code == 200
    assert replay.json() == first.json()
    assert _stored(node) == (1, 2)
