#!/usr/bin/env python
"""GDAL reading 100K places through OGC API – Features (``make bench``): ours beside tipg.

``ogr2ogr -f GeoJSONSeq`` reads every place of a box holding ``--box-places`` places (100,000
by default, where the generated set is densest: ``picks.box_holding``) through the OAPIF
driver, following the ``next`` links page after page, once from our ``/ogc/`` (the dataset's
collection ``places-bench-generated``, served by gunicorn as deployed) and once from tipg
(``public.places_place``, under uvicorn with as many workers), both on the benchmark
database (``BENCH_DATABASE_URL``, the generated set of ``load.py``, reused while its
parameters are unchanged).

Both are asked for the same page size (``--page-size``, GDAL's ``PAGE_SIZE``), the same box
(``-spat``, which GDAL sends as ``bbox``) and the same properties: ours its collection's
default (every exposed field of a place, what a GIS user gets), tipg the same columns by
``properties=`` (the dataset, country and region as ids where ours names them by slug or
code) and ``geom-column=location`` (the place's point, not the first geometry column); GDAL
keeps a query string of the collection's URL on every request. Our collection URL carries
none: its document refuses parameters it does not take. Rounds are interleaved A/B, the
order swapped every round, after one untimed read of each; our Redis cache is emptied before
each of our reads, so every page is built from PostgreSQL as tipg's are.

Each read's features are counted and their ids compared: both servers must return the same
places, and as many as PostGIS counts in the box. Results go to
``tests/benchmarks/results/ogc.{json,md}``.

Target (issue 21): ours at least as fast as tipg (median wall time of the whole ogr2ogr run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).with_name("results")
DEFAULT_BENCH_DB = "postgis://postgres@127.0.0.1:5432/places_bench"
DEFAULT_BENCH_REDIS = "redis://127.0.0.1:6379/10"
OGR2OGR = "/usr/bin/ogr2ogr"
TIPG_COLLECTION = "public.places_place"
logger = logging.getLogger("bench")


def ogr2ogr_command(*, source: str, box: str, page_size: int, out: Path) -> list[str]:
    """ogr2ogr reading one OAPIF collection (``source``: the collection's URL, its query
    string kept by GDAL on every request) inside ``box`` into GeoJSON text sequences."""
    return [
        OGR2OGR,
        "-f",
        "GeoJSONSeq",
        "-preserve_fid",
        "-oo",
        f"PAGE_SIZE={page_size}",
        "-spat",
        *box.split(","),
        str(out),
        f"OAPIF:{source}",
    ]


# The columns behind our collection's default properties (places.serving.fields.PROPERTIES).
TIPG_PROPERTIES = (
    "name,religion,religion_raw,denominations,denomination_raw,dataset_id,source_key,"
    "country_id,region_id,status,start_date,start_date_raw,end_date,end_date_raw,tags,"
    "version,updated_at"
)


def sources(*, ours: str, tipg: str, dataset_slug: str) -> dict[str, str]:
    """What is read, by name: the collection URLs GDAL opens."""
    return {
        "ours": f"{ours}/ogc/collections/places-{dataset_slug}",
        "tipg": (
            f"{tipg}/collections/{TIPG_COLLECTION}"
            # Ours shows active places only (its default status): tipg the same, by a filter.
            f"?geom-column=location&properties={TIPG_PROPERTIES}&filter=status%3D%27active%27"
        ),
    }


def read(command: list[str], out: Path) -> tuple[float, list[int]]:
    """Wall seconds of one ogr2ogr run and the ids of the features it wrote."""
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    ids = [
        json.loads(line.strip("\x1e"))["id"]
        for line in out.read_text().splitlines()
        if line.strip("\x1e")
    ]
    return seconds, ids


def postgis_counts(box: str, dataset_slug: str) -> dict[str, int]:
    from django.db import connection

    x0, y0, x1, y1 = map(float, box.split(","))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE p.status = 'active' AND d.slug = %s), count(*) "
            "FROM places_place p JOIN places_dataset d ON d.id = p.dataset_id "
            "WHERE ST_Intersects(p.location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            [dataset_slug, x0, y0, x1, y1],
        )
        active, every = cursor.fetchone()
    return {"active_in_dataset": active, "every_row": every}


def summary(seconds: list[float]) -> dict[str, Any]:
    return {
        "n": len(seconds),
        "median_s": round(statistics.median(seconds), 2),
        "min_s": round(min(seconds), 2),
        "max_s": round(max(seconds), 2),
        "runs_s": [round(s, 2) for s in seconds],
    }


def markdown(results: dict[str, Any]) -> str:
    rows = results["reads"]
    lines = [
        f"# ogr2ogr through OGC API – Features: ours and tipg ({results['date']})",
        "",
        f"Box `{results['box']}`: {results['postgis']['active_in_dataset']:,} active places of "
        f"the generated dataset ({results['postgis']['every_row']:,} rows of any status or "
        f"dataset). `ogr2ogr -f GeoJSONSeq -oo PAGE_SIZE={results['page_size']} -spat …`, "
        f"{results['rounds']} interleaved rounds after one untimed read each; gunicorn and "
        f"uvicorn with {results['workers']} workers each; load average at start "
        f"{', '.join(map(str, results['load_average_at_start']))}. {results['gdal']}.",
        "",
        "| read | features | distinct | median s | min s | max s | features/s (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows.values():
        rate = round(row["features"] / row["median_s"]) if row["median_s"] else 0
        lines.append(
            f"| {row['label']} | {row['features']:,} | {row['distinct']:,} | {row['median_s']} "
            f"| {row['min_s']} | {row['max_s']} | {rate:,} |"
        )
    target = results["target"]
    lines += [
        "",
        f"Same places from both: {results['same_ids']}. tipg / ours (median): "
        f"{target['ratio']}× — target (ours at least as fast): "
        f"{'met' if target['met'] else 'NOT met'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=1_000_000, help="generated places")
    parser.add_argument("--seed", type=int, default=20_240_601)
    parser.add_argument("--box-places", type=int, default=100_000)
    parser.add_argument("--page-size", type=int, default=10_000, help="GDAL's PAGE_SIZE")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    bench_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_BENCH_DB)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_BENCH_REDIS)
    os.environ["DATABASE_URL"] = bench_url
    os.environ["REPLICA_DATABASE_URL"] = ""
    os.environ["REDIS_URL"] = redis_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    import django

    django.setup()
    import redis

    from tests.benchmarks import measure, picks
    from tests.benchmarks.dataset import Parameters
    from tests.benchmarks.load import DATASET_SLUG, bench_data_ensure
    from tests.benchmarks.servers import gunicorn_server, tipg_server

    loaded = bench_data_ensure(
        url=bench_url, params=Parameters(places=args.places, seed=args.seed), reload=False
    )
    lon, lat = picks.positions()
    box = picks.box_holding(lon, lat, places=args.box_places).text
    del lon, lat
    counts = postgis_counts(box, DATASET_SLUG)
    logger.info("box %s: %s", box, counts)
    cache = redis.Redis.from_url(redis_url)
    log_dir = Path(tempfile.mkdtemp(prefix="places-bench-ogc-"))
    gdal = subprocess.run([OGR2OGR, "--version"], capture_output=True, text=True).stdout.strip()
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    times: dict[str, list[float]] = {}
    ids: dict[str, list[int]] = {}
    with (
        gunicorn_server(
            database_url=bench_url, redis_url=redis_url, workers=args.workers, log_dir=log_dir
        ) as web,
        tipg_server(
            database_url=bench_url,
            workers=args.workers,
            max_features_per_query=max(args.page_size, 10_000),
            max_features_per_tile=20_000,
            log_dir=log_dir,
        ) as tipg,
    ):
        urls = sources(
            ours=f"http://{web.host}:{web.port}",
            tipg=f"http://{tipg.host}:{tipg.port}",
            dataset_slug=DATASET_SLUG,
        )
        commands = {
            name: ogr2ogr_command(
                source=url, box=box, page_size=args.page_size, out=log_dir / f"{name}.geojsons"
            )
            for name, url in urls.items()
        }
        logger.info("commands: %s", json.dumps(commands))
        # One untimed read each: tipg's catalogue, our workers' API definition, warm buffers.
        for name, command in commands.items():
            _, ids[name] = read(command, log_dir / f"{name}.geojsons")
        order = list(commands)
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                if name.startswith("ours"):
                    measure.caches_emptied(cache, bench_url)
                seconds, found = read(commands[name], log_dir / f"{name}.geojsons")
                times.setdefault(name, []).append(seconds)
                if sorted(found) != sorted(ids[name]):
                    raise RuntimeError(f"{name} read other features in round {round_}")
                logger.info("round %s %s: %.2f s, %s features", round_, name, seconds, len(found))

    labels = {
        "ours": f"ours: /ogc/ collection places-{DATASET_SLUG}, uncached",
        "tipg": f"tipg: {TIPG_COLLECTION}, the same columns",
    }
    reads = {
        name: {
            "label": labels[name],
            "features": len(ids[name]),
            "distinct": len(set(ids[name])),
            **summary(times[name]),
        }
        for name in commands
    }
    ratio = round(reads["tipg"]["median_s"] / reads["ours"]["median_s"], 2)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "set": loaded,
        "box": box,
        "postgis": counts,
        "page_size": args.page_size,
        "rounds": args.rounds,
        "workers": args.workers,
        "gdal": gdal,
        "load_average_at_start": load_at_start,
        "commands": commands,
        "reads": reads,
        "same_ids": sorted(ids["ours"]) == sorted(ids["tipg"]),
        "target": {"what": "ours at least as fast as tipg", "ratio": ratio, "met": ratio >= 1},
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "ogc.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.output / "ogc.md").write_text(markdown(results))
    print(markdown(results))
    for name, row in reads.items():
        if row["distinct"] != row["features"]:
            raise SystemExit(f"{name}: {row['features'] - row['distinct']} duplicate features")
    if reads["ours"]["features"] != counts["active_in_dataset"]:
        raise SystemExit(
            f"ours read {reads['ours']['features']} places; PostGIS counts "
            f"{counts['active_in_dataset']} active in the box"
        )


if __name__ == "__main__":
    main()
