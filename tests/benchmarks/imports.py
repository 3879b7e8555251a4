#!/usr/bin/env python
"""Import benchmark: a generated 1M-row CSV through the real pipeline, beside bulk_create.

``.venv/bin/python tests/benchmarks/imports.py [--rows N] [--runs R]`` (default 1,000,000
rows, 1 run). Runs against ``BENCH_DATABASE_URL`` (dropped and recreated), never the
development database. Writes ``tests/benchmarks/results/imports.{json,md}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CSV = ROOT / "ingestion" / "sample_data" / "osm_pow_gb_excl_wales.csv.gz"

# How sources really spell religions: the normaliser has to fold all of these.
_RELIGION_SPELLINGS = {
    "Christian": ["Christian", "christian", "Christianity", "CHRISTIAN"],
    "Muslim": ["Muslim", "muslim", "Islam", "islamic"],
    "Jewish": ["Jewish", "jewish", "Judaism"],
    "Sikh": ["Sikh", "sikh", "Sikhism"],
    "Hindu": ["Hindu", "hindu", "Hinduism"],
    "Buddhist": ["Buddhist", "buddhist", "Buddhism"],
}
_RARE_RELIGIONS = [
    "Bahá’í",
    "bahai",
    "Jain",
    "Shinto",
    "Taoist",
    "Zoroastrian",
    "interfaith",
    "pagan",
    "spiritualist",
    "",
]
_DATES = [
    "1885",
    "12 May 1885",
    "mid-1990s",
    "c. 1900",
    "1962-04-01",
    "19th century",
    "early 1960's",
    "May 1890",
    "unknown",
    "1700s",
    "late 18th century",
    "2003-07",
]
_WHEELCHAIR = ["", "", "", "yes", "no", "limited"]


def generate_csv(path: Path, *, rows: int, seed: int = 20240601) -> Path:
    """Write a reproducible CSV of ``rows`` places around the real places of the GB sample.

    Points scatter around real places (so they fall in real districts), religions come in
    several spellings, a share of rows carry free-text founding dates and tags, and a few
    rows are broken on purpose (bad coordinates, repeated keys) as real files are.
    """
    rng = np.random.default_rng(seed)
    base = pacsv.read_csv(
        SAMPLE_CSV,
        convert_options=pacsv.ConvertOptions(
            column_types={"osm_id": pa.string(), "lon": pa.float64(), "lat": pa.float64()},
            strings_can_be_null=False,
        ),
    )
    pick = rng.integers(0, base.num_rows, rows)
    take = pa.array(pick)
    faith = base.column("faith").take(take).to_numpy(zero_copy_only=False)
    religion = np.empty(rows, dtype=object)
    for value, spellings in _RELIGION_SPELLINGS.items():
        where = np.flatnonzero(faith == value)
        religion[where] = np.array(spellings, dtype=object)[
            rng.integers(0, len(spellings), where.size)
        ]
    rare = rng.random(rows) < 0.03
    religion[rare] = np.array(_RARE_RELIGIONS, dtype=object)[
        rng.integers(0, len(_RARE_RELIGIONS), int(rare.sum()))
    ]
    lon = base.column("lon").take(take).to_numpy() + rng.normal(0, 0.01, rows)
    lat = base.column("lat").take(take).to_numpy() + rng.normal(0, 0.01, rows)
    dates = np.array(_DATES, dtype=object)[rng.integers(0, len(_DATES), rows)]
    dates[rng.random(rows) < 0.7] = ""
    osm_type = np.where(rng.random(rows) < 0.85, "way", "node").astype(object)
    osm_id = np.arange(1_000_000, 1_000_000 + rows).astype(str).astype(object)
    lon_text = np.char.mod("%.5f", lon).astype(object)
    lat_text = np.char.mod("%.5f", lat).astype(object)
    # Broken on purpose: 0.05 % out-of-range latitudes, 0.05 % empty longitudes, and 0.02 %
    # of the keys repeated further down the file.
    lat_text[rng.random(rows) < 0.0005] = "95.00000"
    lon_text[rng.random(rows) < 0.0005] = ""
    repeats = np.flatnonzero(rng.random(rows) < 0.0002)
    repeats = repeats[repeats > 0]
    osm_id[repeats] = osm_id[rng.integers(0, repeats)]
    osm_type[repeats] = osm_type[rng.integers(0, repeats)]
    website = np.where(
        rng.random(rows) < 0.1, np.char.add("https://example.org/p/", osm_id.astype(str)), ""
    ).astype(object)
    table = pa.table(
        {
            "osm_type": pa.array(osm_type, pa.string()),
            "osm_id": pa.array(osm_id, pa.string()),
            "name": base.column("name").take(take),
            "religion": pa.array(religion, pa.string()),
            "denomination": base.column("denomination").take(take),
            "lon": pa.array(lon_text, pa.string()),
            "lat": pa.array(lat_text, pa.string()),
            "start_date": pa.array(dates, pa.string()),
            "area_code": base.column("area_code").take(take),
            "wheelchair": pa.array(
                np.array(_WHEELCHAIR, dtype=object)[rng.integers(0, len(_WHEELCHAIR), rows)],
                pa.string(),
            ),
            "website": pa.array(website, pa.string()),
        }
    )
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))
    return path
