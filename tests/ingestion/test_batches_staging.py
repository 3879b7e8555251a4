"""Staging a whole Arrow batch at once gives what per-row Python gave, on awkward values."""

from __future__ import annotations

import json
import random

import pyarrow as pa
from shapely.geometry import Point

from ingestion.mapping import ColumnMapping
from ingestion.readers import Batch
from ingestion.staging import PY_WHITESPACE, RepeatedKeys, raw_values, stage_batch


def _stage(columns: dict[str, list[str | None]], mapping: ColumnMapping, **kwargs) -> list[dict]:
    size = len(next(iter(columns.values())))
    batch = Batch(
        arrays={name: pa.array(values, pa.string()) for name, values in columns.items()},
        wkb_array=kwargs.pop("wkb", None),
        num_rows=size,
    )
    options = {"layer": "", "first_row_number": 2, "geometry_kind": "node", "srid": 4326}
    rows = stage_batch(batch, mapping, job_id=1, first_sid=1, **{**options, **kwargs})
    return rows.to_pylist()


CSV_MAPPING = ColumnMapping(
    key="{id}", name="name", religion="religion", lon="lon", lat="lat", start_date="built"
)


def _csv_rows(**overrides: list[str | None]) -> list[dict]:
    columns: dict[str, list[str | None]] = {
        "id": ["a", "b"],
        "name": ["x", "y"],
        "religion": ["", ""],
        "lon": ["0", "0"],
        "lat": ["51", "51"],
        "built": ["", ""],
        "note": ["", ""],
    }
    return _stage({**columns, **overrides}, CSV_MAPPING)


def test_values_are_stripped_as_python_strips_them():
    rows = _csv_rows(name=["\u3000 Chapel\x1c", " \t"], id=[" a ", "b"])
    assert json.loads(rows[0]["fields"])["name"] == "Chapel"
    assert json.loads(rows[1]["fields"])["name"] == ""
    assert rows[0]["source_key"] == "a"


def test_json_escaping_survives_quotes_backslashes_and_control_characters():
    awkward = 'He said "hi" \\ then\ttab\x01and\nnewline'
    rows = _csv_rows(name=[awkward, "plain"], note=[awkward, ""], lon=["x", "0"])
    fields = json.loads(rows[0]["fields"])
    assert fields["name"] == awkward.strip()
    assert fields["tags"] == {"note": awkward}
    # the rejected row keeps every original value, empty ones included
    assert json.loads(rows[0]["raw"])["note"] == awkward
    assert json.loads(rows[0]["raw"])["religion"] == ""


def test_rows_whose_optional_tags_are_all_empty_keep_their_place():
    # Arrow's "skip" null handling drops such rows, which would shift every later row.
    rows = _stage(
        {
            "id": ["a", "b", "c"],
            "lon": ["0"] * 3,
            "lat": ["0"] * 3,
            "t1": ["", "x", ""],
            "t2": ["", "", "y"],
        },
        ColumnMapping(key="{id}", lon="lon", lat="lat"),
    )
    assert [json.loads(r["fields"])["tags"] for r in rows] == [{}, {"t1": "x"}, {"t2": "y"}]
    assert [r["source_key"] for r in rows] == ["a", "b", "c"]


def test_coordinates_are_read_as_float_reads_them():
    rows = _csv_rows(lon=[" 1e-1 ", "1_000"], lat=["\uff15", "5"])
    assert (rows[0]["lon"], rows[0]["lat"], rows[0]["reject"]) == ("1e-1", "5.0", None)
    assert rows[1]["reject"] == "bad_coordinates"
    assert "outside WGS84 range" in rows[1]["reject_detail"]


def test_unreadable_and_infinite_coordinates_are_rejected_with_the_reason():
    rows = _csv_rows(lon=["abc", "inf"], lat=["51", "51"])
    assert (rows[0]["reject"], rows[0]["reject_detail"]) == (
        "bad_coordinates",
        "lon not a number: 'abc'",
    )
    assert rows[1]["reject_detail"] == "coordinates must be finite numbers"
    assert rows[1]["lon"] is None


def test_rejections_take_the_first_rule_that_applies():
    rows = _csv_rows(id=["", "k" * 300], lon=["", "0"])
    assert rows[0]["reject"] == "missing_key"  # before missing_geometry
    assert (rows[1]["reject"], rows[1]["reject_detail"]) == (
        "key_too_long",
        "key has 300 characters; at most 255",
    )


def test_dates_and_religions_are_normalised_once_per_distinct_value():
    rows = _csv_rows(built=["12 May 1885", "31 Feb 1900"], religion=["Islam", "Islam"])
    first, second = (json.loads(r["fields"]) for r in rows)
    assert (first["start_date"], first["start_date_raw"]) == ("1885-05-12", "12 May 1885")
    assert second["start_date"] is None
    assert first["religion"] == second["religion"] == "muslim"


def test_packed_classes_and_geometry_rows():
    mapping = ColumnMapping(key="osm:{_kind}/{osm_id}", name="name", packed_class="fclass")
    wkb = pa.array([Point(0, 51).wkb, None], pa.binary())
    rows = _stage(
        {"osm_id": ["1", "2"], "name": ["A", "B"], "fclass": ["christian_anglican", "muslim"]},
        mapping,
        wkb=wkb,
    )
    fields = json.loads(rows[0]["fields"])
    assert rows[0]["source_key"] == "osm:node/1"
    assert (fields["religion"], fields["denominations"]) == ("christian", ["anglican"])
    assert rows[0]["wkb"] == "\\x" + Point(0, 51).wkb.hex()
    assert rows[1]["reject"] == "missing_geometry"


def test_fingerprints_follow_the_values_a_row_gives_its_place():
    same = _csv_rows(name=["x", "x"], id=["a", "b"])
    moved = _csv_rows(name=["x", "x"], lon=["0", "0.1"])
    assert same[0]["fingerprint"] == same[1]["fingerprint"]  # the key is not part of it
    assert moved[0]["fingerprint"] != moved[1]["fingerprint"]


def test_raw_values_keep_nulls_apart_from_empty_strings():
    raw = raw_values({"a": pa.array([None, ""], pa.string()), "b": pa.array(["1", "2"])})
    assert [json.loads(r) for r in raw.to_pylist()] == [{"a": None, "b": "1"}, {"a": "", "b": "2"}]


def test_the_whitespace_trimmed_is_exactly_what_str_strip_removes():
    python = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
    assert set(PY_WHITESPACE) == set(python)


def test_repeated_keys_are_never_missed_across_and_within_batches():
    class Tiny(RepeatedKeys):
        BITS = 1 << 10  # collisions are certain: they may only add candidates

    rng = random.Random(7)
    keys = [f"osm:node/{rng.randrange(3000)}" for _ in range(4000)]
    for tracker in (RepeatedKeys(), Tiny()):
        seen: set[str] = set()
        marked: list[bool] = []
        for start in range(0, len(keys), 700):
            chunk = keys[start : start + 700]
            marked += tracker.mark(pa.array(chunk, pa.string())).tolist()
        truth = []
        for key in keys:
            truth.append(key in seen)
            seen.add(key)
        assert all(m for m, t in zip(marked, truth, strict=True) if t)
        if not isinstance(tracker, Tiny):
            # 16 MB of bits: a unique key is rarely taken for a repeat (Python's string hash
            # is seeded per process, so a collision or two may happen)
            assert sum(m and not t for m, t in zip(marked, truth, strict=True)) <= 2
