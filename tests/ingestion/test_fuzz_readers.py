"""Fuzzing the CSV, GeoJSON and JSON-array readers with Hypothesis.

Inputs are seed files from ``tests/fixtures/fuzz/{csv,geojson,json}/`` mutated byte-wise (flips,
insertions of tokens that matter to the parsers, deletions, repeats, truncation), or plain
random bytes. The property: detecting the format and reading every batch either yields
well-formed batches or raises ``UnreadableFile``; nothing else, and never a hang.

``make test`` runs a short, deterministic pass (``PLACES_FUZZ_EXAMPLES`` unset: 40 examples
per target, derandomized, no example database). To fuzz for real, run it long and random:

    PLACES_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/ingestion/test_fuzz_readers.py

Failing inputs are then kept in ``.hypothesis/`` and replayed first on the next run; add the
interesting ones to the seed corpus.
"""

from __future__ import annotations

import os
import signal
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestion.models import RejectionReason
from ingestion.readers import (
    MAX_CELL_BYTES,
    Batch,
    CsvReader,
    UnreadableFile,
    detect_format,
    open_reader,
    wkb_problem,
)

CORPUS = Path(__file__).parents[1] / "fixtures" / "fuzz"
LONG_RUN = "PLACES_FUZZ_EXAMPLES" in os.environ
# Seconds one input may take before it counts as a hang: seed files are a few hundred bytes
# and mutations keep them under a few kilobytes, so a healthy reader needs milliseconds.
HANG_SECONDS = 30

settings.register_profile(
    "fuzz-short",
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz-long",
    max_examples=int(os.environ.get("PLACES_FUZZ_EXAMPLES") or 0) or 1,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz-long" if LONG_RUN else "fuzz-short")

# Bytes that steer the parsers: quoting, delimiters, line ends, encodings, JSON structure,
# GeoJSONSeq's record separator, compression and other formats' magic numbers.
TOKENS = [
    b'"',
    b'""',
    b",",
    b";",
    b"\t",
    b"|",
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xa3",
    b"\xff\xfe",
    b"\xc3",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\x1e",
    b'"type": "Feature"',
    b'"type": "FeatureCollection", "features": [',
    b'"coordinates": [1e400, -1e400]',
    b'"coordinates": []',
    b'{"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}',
    b"NaN",
    b"-0",
    b"9" * 40,
    b"\x1f\x8b",
    b"PK\x03\x04",
    b"PAR1",
    b"SQLite format 3\x00",
    b"<OGRVRTDataSource>",
]


def _seeds(kind: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / kind).iterdir()) if p.is_file()]


_position = st.integers(min_value=0, max_value=1 << 16)
_mutation = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(0, 255)),
    st.tuples(st.just("insert"), _position, st.sampled_from(TOKENS) | st.binary(max_size=8)),
    st.tuples(st.just("delete"), _position, st.integers(1, 64)),
    st.tuples(st.just("repeat"), _position, st.integers(1, 64), st.integers(2, 40)),
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


def _inputs(kind: str) -> st.SearchStrategy[bytes]:
    mutated = st.builds(
        _mutate, st.sampled_from(_seeds(kind)), st.lists(_mutation, min_size=1, max_size=8)
    )
    return st.one_of(mutated, mutated, mutated, st.binary(max_size=2048))


class ReaderHung(AssertionError):
    pass


@contextmanager
def _hang_guard() -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise ReaderHung(f"reading one input took more than {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _assert_well_formed(batch: Batch) -> None:
    for name, values in batch.columns.items():
        assert isinstance(name, str)
        assert "\x00" not in name
        assert len(values) == batch.num_rows
        for value in values:
            if value is not None:
                # what COPY into PostgreSQL text and JSON needs: UTF-8, no NUL, within limits
                assert isinstance(value, str)
                assert "\x00" not in value
                assert len(value.encode("utf-8")) <= MAX_CELL_BYTES
    if batch.wkb is not None:
        assert len(batch.wkb) == batch.num_rows
        for geometry in batch.wkb:
            assert geometry is None or wkb_problem(geometry) is None
    for row, (reason, detail) in batch.rejects.items():
        assert 0 <= row < batch.num_rows
        assert reason in RejectionReason.values
        assert detail


def _read_everything(data: bytes) -> None:
    """What an import does with an upload, up to staging: detect, inspect, read every batch."""
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), _hang_guard():
        warnings.simplefilter("ignore")  # GDAL's warnings about odd input are expected here
        path = Path(folder) / "upload"
        path.write_bytes(data)
        refusal = None
        try:
            reader = open_reader(path, detect_format(path))
            for layer in reader.layers():
                assert all(isinstance(c, str) and "\x00" not in c for c in layer.columns)
                for batch in reader.batches(layer.name):
                    _assert_well_formed(batch)
            if isinstance(reader, CsvReader):
                for line, text in reader.invalid_rows:
                    assert line is None or line > 0
                    assert isinstance(text, str)
        except UnreadableFile as exc:
            refusal = str(exc)
        assert refusal is None or refusal.strip(), "a refusal must say why"


@FUZZ
@given(_inputs("csv"))
def test_csv_reader_yields_batches_or_refuses(data):
    _read_everything(data)


@FUZZ
@given(_inputs("geojson"))
def test_geojson_reader_yields_batches_or_refuses(data):
    _read_everything(data)


@FUZZ
@given(_inputs("json"))
def test_json_array_reader_yields_batches_or_refuses(data):
    _read_everything(data)


def test_every_seed_is_read_without_refusal():
    # the corpus itself is valid input: a seed that is refused would make the fuzzer's
    # starting points dead ends
    for kind in ("csv", "geojson", "json"):
        for seed in sorted((CORPUS / kind).iterdir()):
            path = seed
            reader = open_reader(path, detect_format(path))
            rows = sum(b.num_rows for layer in reader.layers() for b in reader.batches(layer.name))
            assert rows > 0, seed.name
