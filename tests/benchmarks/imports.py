#!/usr/bin/env python
"""Import benchmark: a generated CSV (1M rows by default) through the real pipeline.

    .venv/bin/python tests/benchmarks/imports.py [--rows N] [--runs R]

Runs against ``BENCH_DATABASE_URL`` (dropped and recreated; never the development database)
and writes ``tests/benchmarks/results/imports.{json,md}``. Each import runs in a child
process, so that its peak RSS (``ru_maxrss``) is the importer's own:

- first import into an empty dataset: inspect (``import_job_create``: format, checksum,
  stored copy, mapping) and apply (``import_job_execute``), timed apart;
- re-import of the same file (nothing changed);
- baseline, in the same run: Django ``bulk_create`` of the same rows, parsed with the csv
  module (no validation, regions, diff or change log), in chunks of 5,000;
- write floor, in the same run: the first import's places and change-log rows copied with
  INSERT … SELECT into bare copies of the two tables and their indexes then built in one
  go, the least any import path pays for these tables on this machine.

Peak RSS is the child's high-water mark (VmHWM): the whole import, reading included.

Between runs the places, the change log and the jobs are emptied, so each run starts alike.
With several runs the figures are medians. The machine's CPU may be shared: compare figures
measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


RESULTS = ROOT / "tests" / "benchmarks" / "results"
SEED = 20240601


def _environment() -> dict[str, str]:
    """The settings every process of the benchmark runs with. A ``DATABASE_URL_FILE`` (as
    Kubernetes mounts secrets) would win over the bench's ``DATABASE_URL``: it is dropped."""
    return {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL_FILE"},
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": os.environ.get(
            "BENCH_DATABASE_URL", "postgis://postgres@127.0.0.1:5432/places_bench"
        ),
        "DEBUG": "false",  # as in production: no query log
        "LOG_LEVEL": "WARNING",
    }


def _django() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.pop("DATABASE_URL_FILE", None)
    os.environ.update(_environment())
    import django

    django.setup()


def _fresh_database() -> None:
    import environ
    import psycopg
    from psycopg import sql

    config = environ.Env.db_url_config(_environment()["DATABASE_URL"])
    with psycopg.connect(
        host=config.get("HOST") or "127.0.0.1",
        port=config.get("PORT") or 5432,
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        name = sql.Identifier(config["NAME"])
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
    subprocess.run(
        [sys.executable, str(ROOT / "bin" / "ensure-database")], check=True, env=_environment()
    )


def _prepare() -> None:
    """Schema and regions (the point-in-polygon targets) in the fresh database."""
    _django()
    from django.core.management import call_command

    from tests.benchmarks.regions import load_sample_regions

    call_command("migrate", verbosity=0)
    load_sample_regions()


def _child(kind: str, path: Path, slug: str, media: str) -> dict[str, Any]:
    """Run one import (or the baseline) in a fresh process; its timings and peak RSS."""
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--path", str(path), "--slug", slug],
        check=True,
        capture_output=True,
        text=True,
        env={**_environment(), "MEDIA_ROOT": media},
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def _run_child(kind: str, path: Path, slug: str) -> None:
    _django()
    from places.services import dataset_get_or_create

    dataset = dataset_get_or_create(slug=slug)
    if kind == "baseline":
        started = time.perf_counter()
        rows = _bulk_create(path, dataset)
        result: dict[str, Any] = {"rows": rows, "seconds": time.perf_counter() - started}
    else:
        from ingestion.services.imports import import_job_execute
        from ingestion.services.jobs import import_job_create

        started = time.perf_counter()
        job = import_job_create(path=path, dataset=dataset)
        inspected = time.perf_counter()
        job = import_job_execute(job_id=job.pk)
        applied = time.perf_counter()
        assert job is not None
        assert job.state == "done", job.error
        result = {
            "rows": job.rows_read,
            "inspect_seconds": inspected - started,
            "apply_seconds": applied - inspected,
            "seconds": applied - started,
            "counts": {
                "added": job.added,
                "updated": job.updated,
                "unchanged": job.unchanged,
                "rejected": job.rejected,
            },
            "step_seconds": job.report.get("step_seconds", {}),
        }
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def _peak_rss_mb() -> float:
    """This process's peak resident set size.

    VmHWM where Linux has it: ru_maxrss would also count the parent's pages at fork time
    (the kernel carries the high-water mark across exec), here the generator's.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        # ru_maxrss is in KiB on Linux, bytes on macOS; this fallback is for the former.
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)


def _bulk_create(path: Path, dataset: Any) -> int:
    """The obvious ORM loader: parse with csv, skip repeated keys, bulk_create in chunks."""
    from django.contrib.gis.geos import Point

    from places.models import Place

    seen: set[str] = set()
    chunk: list[Place] = []
    rows = 0
    with open(path, encoding="utf-8", newline="") as fh:
        for record in csv.DictReader(fh):
            rows += 1
            key = f"osm:{record['osm_type']}/{record['osm_id']}"
            try:
                location = Point(float(record["lon"]), float(record["lat"]), srid=4326)
            except ValueError:
                continue
            if key in seen:
                continue
            seen.add(key)
            chunk.append(
                Place(
                    dataset=dataset,
                    source_key=key,
                    name=record["name"],
                    religion=(record["religion"] or "unknown").lower()[:16],
                    religion_raw=record["religion"],
                    denomination_raw=record["denomination"],
                    start_date_raw=record["start_date"],
                    location=location,
                    tags={"area_code": record["area_code"]},
                )
            )
            if len(chunk) == 5000:
                Place.objects.bulk_create(chunk)
                chunk = []
    Place.objects.bulk_create(chunk)
    return rows


def _empty_places() -> None:
    """Back to regions only, so that every run inserts into tables of the same size."""
    _django()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE places_placechange, places_placeattribute, places_placesource, "
            "places_place, "
            "ingestion_importrejection, "
            "ingestion_importjob, ingestion_importstage, places_dataversion "
            # and what refers to places (flags, duplicate candidates, proposals): without it
            # PostgreSQL refuses to empty places_place at all.
            "CASCADE"
        )
        cursor.execute("VACUUM ANALYZE places_place")


def _write_floor(slug: str) -> dict[str, Any]:
    """What this machine's PostgreSQL takes just to write the first import's places, their
    source values and change-log rows the cheapest way it can: a plain INSERT … SELECT
    into bare copies of the three tables, then every index of theirs built in one go
    (sorted builds, both cores), as a first load into an empty partition would. No file,
    staging, validation, regions, diff or per-row index maintenance: a ceiling for any
    import path on these tables."""
    import re

    _django()
    from django.db import connection

    steps: dict[str, float] = {}
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '256MB'")
        cursor.execute("SELECT id FROM places_dataset WHERE slug = %s", [slug])
        dataset = cursor.fetchone()[0]
        of_dataset = {
            "places_place": "dataset_id = %s",
            "places_placesource": "place_id IN (SELECT id FROM places_place WHERE dataset_id = %s)",
            "places_placechange": "dataset_id = %s",
        }
        for table, condition in of_dataset.items():
            copy = f"bench_floor_{table}"
            cursor.execute(f"DROP TABLE IF EXISTS {copy}")
            cursor.execute(f"CREATE TABLE {copy} (LIKE {table} INCLUDING DEFAULTS)")
            started = time.perf_counter()
            cursor.execute(f"INSERT INTO {copy} SELECT * FROM {table} WHERE {condition}", [dataset])
            steps[f"{table} rows"] = time.perf_counter() - started
            cursor.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass",
                [table],
            )
            definitions = [row[0] for row in cursor.fetchall()]
            started = time.perf_counter()
            for number, definition in enumerate(definitions):
                cursor.execute(
                    re.sub(
                        rf"INDEX \S+ ON (public\.)?{table} ",
                        f"INDEX {copy}_{number} ON {copy} ",
                        definition,
                    )
                )
            steps[f"{table} {len(definitions)} indexes"] = time.perf_counter() - started
            cursor.execute(f"DROP TABLE {copy}")
    seconds = sum(steps.values())
    return {"seconds": round(seconds, 2), "steps": {k: round(v, 2) for k, v in steps.items()}}


def _summary(samples: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    def median(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    out: dict[str, Any] = {
        "median_seconds": round(median("seconds"), 2),
        "rows_per_second": round(rows / median("seconds")),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in samples),
        "runs": [round(s["seconds"], 2) for s in samples],
    }
    if "apply_seconds" in samples[0]:
        out["inspect_seconds"] = round(median("inspect_seconds"), 2)
        out["apply_seconds"] = round(median("apply_seconds"), 2)
        out["apply_rows_per_second"] = round(rows / median("apply_seconds"))
        out["counts"] = samples[-1]["counts"]
        out["step_seconds"] = samples[-1]["step_seconds"]
    return out


def run(*, rows: int, runs: int, baseline_loader: bool = True) -> dict[str, Any]:
    """Generate the file, run the imports and the baseline ``runs`` times; the results.
    ``baseline_loader=False`` leaves out the ORM loader (20 minutes for a million rows)."""
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    started_at = time.strftime("%H:%M")
    _fresh_database()
    _prepare()
    media = tempfile.mkdtemp(prefix="places-bench-media-")
    with tempfile.TemporaryDirectory(prefix="places-bench-") as folder:
        path = generate_csv(Path(folder) / f"places_{rows}.csv", rows=rows, seed=SEED)
        first, again, baseline, floor = [], [], [], []
        for run_number in range(runs):
            if run_number:
                _empty_places()
            first.append(_child("import", path, f"bench-{run_number}", media))
            again.append(_child("import", path, f"bench-{run_number}", media))
            floor.append(_write_floor(f"bench-{run_number}"))
            if baseline_loader:
                baseline.append(_child("baseline", path, f"bench-orm-{run_number}", media))
        size = path.stat().st_size
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
            "started_at": started_at,
            "load_average_at_start": load_at_start,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "file": {"rows": rows, "bytes": size, "seed": SEED},
        "runs": runs,
        "first_import": _summary(first, rows),
        "reimport_unchanged": _summary(again, rows),
        "write_floor": {
            "median_seconds": statistics.median(f["seconds"] for f in floor),
            "rows_per_second": round(rows / statistics.median(f["seconds"] for f in floor)),
            "steps": floor[-1]["steps"],
        },
    }
    if baseline:
        results["baseline_bulk_create"] = _summary(baseline, rows)
        results["first_import_vs_baseline"] = round(
            results["first_import"]["rows_per_second"]
            / results["baseline_bulk_create"]["rows_per_second"],
            2,
        )
    return results


def markdown(results: dict[str, Any]) -> str:
    first, again = results["first_import"], results["reimport_unchanged"]
    base = results.get("baseline_bulk_create")
    rows = results["file"]["rows"]
    lines = [
        f"# Import benchmark ({results['machine']['date']} "
        f"{results['machine'].get('started_at', '')}, {results['machine']['cpus']} cores)",
        "",
        f"Generated CSV: {rows:,} rows, {results['file']['bytes'] / 1e6:.0f} MB (seed "
        f"{results['file']['seed']}); median of {results['runs']} run(s); each import in its "
        "own process. Load average at the start: "
        f"{', '.join(map(str, results['machine'].get('load_average_at_start', [])))}; "
        "after the run: "
        f"{', '.join(map(str, results['machine']['load_average_after']))} (other work on a "
        "shared CPU makes figures noisy).",
        "",
        "| path | seconds | rows/s | apply s | apply rows/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|",
        f"| first import (inspect + apply) | {first['median_seconds']} | "
        f"{first['rows_per_second']:,} | {first['apply_seconds']} | "
        f"{first['apply_rows_per_second']:,} | {first['peak_rss_mb']} |",
        f"| re-import, unchanged | {again['median_seconds']} | {again['rows_per_second']:,} | "
        f"{again['apply_seconds']} | {again['apply_rows_per_second']:,} | "
        f"{again['peak_rss_mb']} |",
        *(
            [
                f"| baseline: Django bulk_create (no checks) | {base['median_seconds']} | "
                f"{base['rows_per_second']:,} | | | {base['peak_rss_mb']} |",
                "",
                f"First import / baseline: {results['first_import_vs_baseline']}x",
            ]
            if base
            else ["", "(ORM baseline left out: --skip-baseline)"]
        ),
        "",
        "Write floor, same run: the first import's places, source values and change-log rows "
        "INSERTed into bare copies of the three tables, then every index of theirs built in "
        "one go (no file, validation, regions, diff or per-row index upkeep): "
        f"{results['write_floor']['median_seconds']} s, "
        f"{results['write_floor']['rows_per_second']:,} rows/s.",
        "",
        "| floor step | seconds |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in results["write_floor"]["steps"].items()],
        "",
        "Steps of the apply (seconds, last run):",
        "",
        "| step | first import | re-import |",
        "|---|---:|---:|",
    ]
    steps = dict.fromkeys([*first["step_seconds"], *again["step_seconds"]])
    for step in steps:
        lines.append(
            f"| {step} | {first['step_seconds'].get(step, '')} | "
            f"{again['step_seconds'].get(step, '')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--skip-baseline", action="store_true", help="leave out the ORM loader (slow)"
    )
    parser.add_argument("--child", choices=["import", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--slug", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _run_child(args.child, args.path, args.slug)
        return
    results = run(rows=args.rows, runs=args.runs, baseline_loader=not args.skip_baseline)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "imports.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "imports.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
