#!/usr/bin/env python
"""How near the write floor a first import could come with its indexes built after it.

    .venv/bin/python tests/benchmarks/import_bound.py [--rows N] [--rounds R]

Issue 14 asks a first import of a million rows for at most 1.5× the write floor
(``imports.py``). The lever left untried in code is a table of places partitioned by
dataset: a new dataset's partition could be filled bare, indexed in one sorted build, then
attached. Before building that, this measures what it could give, with the importer as it
is, in interleaved rounds on one generated CSV (``imports.generate_csv``):

- **kept**: the first import as it runs today, every index kept up row by row;
- **places after**: the same import with the place table's secondary indexes dropped
  before it and built after it (its primary key and unique key stay: the diff probes by
  them), the build counted; what a partition per dataset could give;
- **all after**: the source values' and change log's secondary indexes too; no partitioned
  design of the shared change log gets this far, so it bounds every one;
- the **write floor** after each import (``imports._write_floor``).

Runs against ``BENCH_BOUND_DATABASE_URL`` (default ``places_bench_bound``; dropped and
recreated, never another database) and writes ``results/import-bound.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "tests" / "benchmarks" / "results"
os.environ["BENCH_DATABASE_URL"] = os.environ.get(
    "BENCH_BOUND_DATABASE_URL", "postgis://postgres@127.0.0.1:5432/places_bench_bound"
)
sys.path.insert(0, str(ROOT))

from tests.benchmarks import imports  # noqa: E402  (reads BENCH_DATABASE_URL when called)

# What the diff and the writes need to stay correct: the keys they probe and conflict on.
KEEP = {
    "places_place_pkey",
    "place_source_key_unique",
    "places_placesource_pkey",
    "places_placechange_pkey",
}
MODES = {
    "kept": (),
    "places after": ("places_place",),
    "all after": ("places_place", "places_placesource", "places_placechange"),
}


def _secondary_indexes(cursor: Any, tables: tuple[str, ...]) -> list[tuple[str, str]]:
    cursor.execute(
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid::regclass::text = ANY(%s) ORDER BY 1",
        [list(tables)],
    )
    return [(name, definition) for name, definition in cursor.fetchall() if name not in KEEP]


def _own_database() -> None:
    """Refuse to go on unless Django is connected to the bound's own database: what follows
    empties places and drops indexes."""
    import environ
    from django.db import connection

    wanted = environ.Env.db_url_config(os.environ["BENCH_DATABASE_URL"])["NAME"]
    name = connection.settings_dict["NAME"]
    if name != wanted or "bench" not in name:
        raise SystemExit(f"connected to {name!r}, not the bound's database {wanted!r}")


def _one(mode: str, path: Path, slug: str, media: str) -> dict[str, Any]:
    from django.db import connection

    imports._empty_places()
    with connection.cursor() as cursor:
        dropped = _secondary_indexes(cursor, MODES[mode])
        for name, _ in dropped:
            cursor.execute(f"DROP INDEX {name}")
    try:
        imported = imports._child("import", path, slug, media)
    finally:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '256MB'")
            for _, definition in dropped:
                cursor.execute(definition)
        build = time.perf_counter() - started
    floor = imports._write_floor(slug)
    return {
        "import_seconds": round(imported["seconds"], 2),
        "index_build_seconds": round(build, 2),
        "seconds": round(imported["seconds"] + build, 2),
        "indexes_built_after": len(dropped),
        "floor_seconds": floor["seconds"],
        "step_seconds": imported["step_seconds"],
    }


def run(*, rows: int, rounds: int) -> dict[str, Any]:
    imports._fresh_database()
    imports._django()
    _own_database()
    imports._prepare()
    media = tempfile.mkdtemp(prefix="places-bound-media-")
    samples: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="places-bound-") as folder:
        path = imports.generate_csv(Path(folder) / "bound.csv", rows=rows, seed=imports.SEED)
        for number in range(rounds):
            for mode in MODES:
                sample = _one(mode, path, f"bound-{number}-{mode.replace(' ', '-')}", media)
                samples[mode].append(sample)
                print(mode, json.dumps(sample), flush=True)
    floor = statistics.median(s["floor_seconds"] for ss in samples.values() for s in ss)
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": rows,
        "rounds": rounds,
        "floor_median_seconds": round(floor, 2),
        "modes": {},
    }
    for mode, ss in samples.items():
        seconds = statistics.median(s["seconds"] for s in ss)
        out["modes"][mode] = {
            "median_seconds": round(seconds, 2),
            "median_index_build_seconds": round(
                statistics.median(s["index_build_seconds"] for s in ss), 2
            ),
            "indexes_built_after": ss[0]["indexes_built_after"],
            "times_floor": round(seconds / floor, 2),
            "runs": ss,
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# First import against the write floor, indexes kept or built after "
        f"({results['machine']['date']}, {results['machine']['cpus']} cores)",
        "",
        f"{results['rows']:,} generated rows, {results['rounds']} interleaved rounds (kept, "
        "places after, all after), medians; the write floor measured after each import "
        f"(median {results['floor_median_seconds']} s). Load average after: "
        f"{', '.join(map(str, results['machine']['load_average_after']))}.",
        "",
        "| first import | indexes built after | import + build, s | of which build, s "
        "| × floor | runs (s) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for mode, m in results["modes"].items():
        runs = ", ".join(str(s["seconds"]) for s in m["runs"])
        lines.append(
            f"| {mode} | {m['indexes_built_after']} | {m['median_seconds']} | "
            f"{m['median_index_build_seconds']} | {m['times_floor']} | {runs} |"
        )
    lines += ["", "Steps of the apply, last round (seconds, both connections added):", ""]
    modes = list(results["modes"])
    lines += ["| step | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    steps = results["modes"]["kept"]["runs"][-1]["step_seconds"]
    for step in steps:
        cells = [str(results["modes"][m]["runs"][-1]["step_seconds"].get(step, "")) for m in modes]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = run(rows=args.rows, rounds=args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "import-bound.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "import-bound.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
