"""Fuzzing the edge batch parser, and the endpoint behind it, with Hypothesis.

Inputs are the seed batches of ``tests/fixtures/fuzz/edge_batches/`` (plain and gzipped)
mutated byte-wise (flips, insertions of tokens that matter to JSON, gzip and the batch's
fields, deletions, repeats, truncation), or plain random bytes.

- The parser (no database): reading, decoding and parsing either yields readings the batch
  service can store (aware UTC times, finite values, printable ids of allowed lengths, every
  reading accounted for once as a reading or an item error) or refuses the body with a 400,
  413 or 415 that says why. Nothing else, whatever the bytes.
- The endpoint (real PostGIS): never a 5xx; a refused body stores nothing.

``make test`` runs a short, deterministic pass (``PLACES_FUZZ_EXAMPLES`` unset). To fuzz for
real, run it long and random:

    PLACES_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/ingestion/edge/test_fuzz_batches.py

and add the interesting failing inputs (kept in ``.hypothesis/``) to the seed corpus.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import math
import os
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.edge.models import ObservationBatch
from ingestion.edge.parsing import BodyRefused, batch_parse, body_read
from ingestion.edge.services.keys import edge_key_create
from places.throttling import KEY_PREFIX
from tests.ingestion.edge.factories import node_make

CORPUS = Path(__file__).parents[2] / "fixtures" / "fuzz" / "edge_batches"
LONG_RUN = "PLACES_FUZZ_EXAMPLES" in os.environ
# Small limits, so mutations (repeats above all) reach them.
LIMIT_BYTES = 64 * 1024
LIMIT_READINGS = 200

FUZZ = settings(
    max_examples=int(os.environ.get("PLACES_FUZZ_EXAMPLES") or 0) or 40,
    derandomize=not LONG_RUN,
    database=None if not LONG_RUN else settings.default.database,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

TOKENS = [
    b'"',
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b",",
    b":",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"true",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"-0",
    b"9" * 5000,
    b'"readings": ',
    b'"sensors": ',
    b'"value": ',
    b'"time": "2019-03-01T07:00:03"',
    b'"time": "9999-12-31T23:59:59-23:59"',
    b'"location": [1e400, 0]',
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\x1f\x8b\x08\x00",
    b"\x00",
]


def _seeds() -> list[tuple[bytes, bool]]:
    """(bytes, gzipped) of every seed file."""
    return [
        (path.read_bytes(), path.suffix == ".gz")
        for path in sorted(CORPUS.iterdir())
        if path.is_file()
    ]


_position = st.integers(min_value=0, max_value=1 << 12)
_mutation = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(0, 255)),
    st.tuples(st.just("insert"), _position, st.sampled_from(TOKENS) | st.binary(max_size=8)),
    st.tuples(st.just("delete"), _position, st.integers(1, 64)),
    st.tuples(st.just("repeat"), _position, st.integers(1, 128), st.integers(2, 400)),
    st.tuples(st.just("truncate"), _position),
)


def _mutate(data: bytes, mutations: list[tuple]) -> bytes:
    buffer = bytearray(data)
    for kind, position, *args in mutations:
        at = position % (len(buffer) + 1)
        if kind == "flip" and buffer:
            buffer[at % len(buffer)] = args[0]
        elif kind == "insert":
            buffer[at:at] = args[0]
        elif kind == "delete":
            del buffer[at : at + args[0]]
        elif kind == "repeat":
            buffer[at:at] = bytes(buffer[at : at + args[0]]) * args[1]
        elif kind == "truncate":
            del buffer[at:]
    return bytes(buffer)


@st.composite
def _bodies(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A body as sent and whether it says Content-Encoding: gzip. A gzipped seed is mutated
    either in its compressed bytes or before compressing again."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=2048)), draw(st.booleans())
    data, gzipped = draw(st.sampled_from(_seeds()))
    mutations = draw(st.lists(_mutation, min_size=1, max_size=8))
    if gzipped and draw(st.booleans()):
        return gzip.compress(_mutate(gzip.decompress(data), mutations), mtime=0), True
    return _mutate(data, mutations), gzipped


def _parse(data: bytes, gzipped: bool):
    body = body_read(
        stream=io.BytesIO(data),
        content_length=str(len(data)),
        content_encoding="gzip" if gzipped else None,
        limit=LIMIT_BYTES,
    )
    return batch_parse(body=body, max_readings=LIMIT_READINGS), body


@FUZZ
@given(_bodies())
def test_the_parser_yields_storable_readings_or_a_reasoned_refusal(sent):
    data, gzipped = sent
    try:
        batch, body = _parse(data, gzipped)
    except BodyRefused as exc:
        refusal = exc
    else:
        refusal = None
    if refusal is not None:
        assert refusal.status in (400, 413, 415)
        assert refusal.code
        assert refusal.detail.strip()
        return
    readings = json.loads(body)["readings"]
    # every reading is accounted for once, as a reading or as an item error
    indices = [r.index for r in batch.readings] + [e.index for e in batch.item_errors]
    assert sorted(indices) == list(range(len(readings)))
    for reading in batch.readings:
        assert reading.time.utcoffset() is not None
        assert reading.time.utcoffset().total_seconds() == 0
        assert math.isfinite(reading.value)
        for text, longest in ((reading.sensor, 64), (reading.parameter, 32)):
            assert 1 <= len(text) <= longest
            assert text.isprintable()
            text.encode("utf-8")  # no lone surrogates: PostgreSQL takes only valid UTF-8
    for error in batch.item_errors:
        assert error.code
        assert error.field
        assert error.message
    for sensor in batch.sensors:
        assert 1 <= len(sensor.external_id) <= 64
        assert sensor.external_id.isprintable()
        assert sensor.kind.isprintable()
        assert (sensor.lon is None) == (sensor.lat is None)


_examples = itertools.count()


@pytest.mark.django_db
@settings(FUZZ, max_examples=min(FUZZ.max_examples, 25 if not LONG_RUN else FUZZ.max_examples))
@given(sent=_bodies())
def test_the_endpoint_never_fails_and_stores_nothing_of_a_refused_body(sent, settings):
    data, gzipped = sent
    settings.EDGE_RATE = None
    settings.EDGE_MAX_BATCH_BYTES = LIMIT_BYTES
    settings.EDGE_MAX_BATCH_READINGS = LIMIT_READINGS
    cache.delete_pattern(f"{KEY_PREFIX}:*")  # type: ignore[attr-defined]  # django-redis
    node = node_make()
    key = edge_key_create(node=node).secret
    headers = {"HTTP_CONTENT_ENCODING": "gzip"} if gzipped else {}
    response = Client().post(
        "/api/v1/edge/observations/",
        data=data,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_IDEMPOTENCY_KEY=f"fuzz-{next(_examples)}",
        **headers,
    )
    assert response.status_code < 500, response.content[:500]
    stored = ObservationBatch.objects.filter(node=node).count()
    if response.status_code == 200:
        assert stored == 1
        answer = response.json()
        assert answer["accepted"] + answer["duplicate"] + answer["rejected"] >= 0
    else:
        assert response.json()["code"]
        assert stored == 0
