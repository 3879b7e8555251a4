#!/usr/bin/env python
"""Capacity: bytes on disk per place and per sensor reading, measured on a loaded database.

The figures the capacity plan (k8s/README.md "Capacity plan") multiplies out. A database of
its own (``BENCH_CAPACITY_DATABASE_URL``, default ``…/places_bench_capacity``) is made afresh
and migrated, then:

1. **Places, points**: the Natural Earth countries and the GB sample (34,613 places, each a
   point) imported through the real importer; measured: ``places_place`` (heap, TOAST,
   indexes), ``places_placesource`` (what the dataset delivered, for the next import's diff)
   and ``places_placechange``, the change log (its rows for those places).
2. **Places, footprints**: the Greater London Geofabrik shapefile (2,130 polygons, 782
   points) imported as a second dataset; the growth of the same tables per place it added.
3. **Readings**: ``--readings`` readings stored through the edge ingest service
   (``observation_batch_ingest``, as the API calls it) in batches of ``--batch``, from
   ``--sensors`` sensors of one node, two parameters each, one reading a minute; measured: the
   growth of the readings table (every month partition: heap, TOAST, indexes) and of the
   batches table (one row per batch, kept for idempotency), per reading.

Sizes are ``pg_table_size`` (heap + TOAST + free-space and visibility maps) and
``pg_indexes_size`` of every leaf of each table's partition tree, after ``VACUUM ANALYZE`` (what
a table settles to once autovacuum has run). Bytes per row are measured growth divided by the
rows added, so the empty tables' fixed pages do not count. The tasks the imports and batches
queue go to ``BENCH_REDIS_URL`` (db 12 by default); no worker runs them.

    BENCH_CAPACITY_DATABASE_URL=postgis://postgres@127.0.0.1:5432/places_bench_capacity \\
        .venv/bin/python tests/benchmarks/capacity.py [--readings 1000000] [--batch 5000]

Results: ``results/capacity.json`` and ``results/capacity.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).with_name("results")
DEFAULT_DB = "postgis://postgres@127.0.0.1:5432/places_bench_capacity"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
SAMPLE = ROOT / "ingestion" / "sample_data"
PARAMETERS = ("pm10", "pm2_5")
GIB = 1024**3
PLACE_TABLES = ("places_place", "places_placesource", "places_placechange")
logger = logging.getLogger("bench")

# Every leaf of a partitioned table's tree, or the table itself when it is not partitioned
# (pg_partition_tree lists nothing for a plain table).
SIZES = """
WITH leaves AS (
    SELECT relid FROM pg_partition_tree(%(table)s::regclass) WHERE isleaf
    UNION ALL
    SELECT oid FROM pg_class WHERE oid = %(table)s::regclass AND relkind <> 'p'
)
SELECT coalesce(sum(pg_table_size(l.relid)), 0)::bigint,
       coalesce(sum(pg_indexes_size(l.relid)), 0)::bigint,
       coalesce(sum(pg_relation_size(NULLIF(c.reltoastrelid, 0))), 0)::bigint,
       count(*)
FROM leaves l JOIN pg_class c ON c.oid = l.relid
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000, help="readings per batch")
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def table_sizes(table: str) -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(SIZES, {"table": table})
        table_bytes, index_bytes, toast_bytes, leaves = cursor.fetchone()
        cursor.execute(f"SELECT count(*) FROM {table}")  # our own table names
        rows = cursor.fetchone()[0]
    return {
        "rows": rows,
        "table_bytes": table_bytes,
        "toast_bytes": toast_bytes,
        "index_bytes": index_bytes,
        "total_bytes": table_bytes + index_bytes,
        "partitions": leaves,
    }


def vacuum(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def snapshot(*tables: str) -> dict[str, dict[str, int]]:
    vacuum(*tables)
    return {table: table_sizes(table) for table in tables}


def growth(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], *, per: int
) -> dict[str, Any]:
    """Each table's growth, and its bytes per ``per`` added rows of the measured kind."""
    out: dict[str, Any] = {}
    for table in after:
        delta = {k: after[table][k] - before[table][k] for k in after[table] if k != "partitions"}
        out[table] = {
            **delta,
            "bytes_per_unit": round(delta["total_bytes"] / per, 1),
            "table_bytes_per_unit": round(delta["table_bytes"] / per, 1),
            "index_bytes_per_unit": round(delta["index_bytes"] / per, 1),
            "rows_per_unit": round(delta["rows"] / per, 3),
        }
    out["total_bytes_per_unit"] = round(sum(t["total_bytes"] for t in out.values()) / per, 1)
    return out


def load_places() -> dict[str, Any]:
    from ingestion.services.imports import import_job_execute
    from ingestion.services.jobs import import_job_create
    from ingestion.services.regions import PRESETS, region_load
    from places.services import dataset_get_or_create

    region_load(
        path=SAMPLE / "ne_50m_admin_0_countries.geojson.gz",
        source=PRESETS["ne-countries"],
        dataset=dataset_get_or_create(slug="natural-earth"),
    )
    results: dict[str, Any] = {}
    for label, file_name, slug in (
        ("points", "osm_pow_gb_excl_wales.csv.gz", "osm-gb"),
        ("footprints", "geofabrik_greater_london_pofw_2019-07-14.shp.zip", "geofabrik-london"),
    ):
        before = snapshot(*PLACE_TABLES)
        started = time.perf_counter()
        job = import_job_execute(
            job_id=import_job_create(
                path=SAMPLE / file_name, dataset=dataset_get_or_create(slug=slug)
            ).pk
        )
        if job is None or job.state != "done":
            raise SystemExit(f"the {file_name} import did not finish: {job and job.error}")
        seconds = time.perf_counter() - started
        after = snapshot(*PLACE_TABLES)
        results[label] = {
            "file": file_name,
            "places_added": job.added,
            "import_seconds": round(seconds, 1),
            "after": after,
            **growth(before, after, per=job.added),
        }
        logger.info(
            "%s: %s places, %.0f bytes each",
            label,
            job.added,
            results[label]["total_bytes_per_unit"],
        )
    return results


def load_readings(args: argparse.Namespace) -> dict[str, Any]:
    from ingestion.edge.models import Observation, ObservationBatch
    from ingestion.edge.services.batches import (
        ReadingIn,
        SensorDeclaration,
        observation_batch_ingest,
    )
    from ingestion.edge.services.keys import edge_node_create
    from places.models import Region

    tables = (Observation._meta.db_table, ObservationBatch._meta.db_table)
    node = edge_node_create(name="capacity", region=Region.objects.get(level="country", code="GBR"))
    sensors = [
        SensorDeclaration(external_id=f"cap-{s}", kind="SDS011", lon=-0.1, lat=51.5)
        for s in range(args.sensors)
    ]
    # One reading a minute per sensor and parameter, ending now: recent months, as live data.
    per_step = args.sensors * len(PARAMETERS)
    steps = -(-args.readings // per_step)
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=steps)
    before = snapshot(*tables)
    started = time.perf_counter()
    stored = 0
    for first in range(0, args.readings, args.batch):
        readings = []
        for i in range(first, min(first + args.batch, args.readings)):
            step, rest = divmod(i, per_step)
            sensor, parameter = divmod(rest, len(PARAMETERS))
            readings.append(
                ReadingIn(
                    index=i - first,
                    sensor=f"cap-{sensor}",
                    parameter=PARAMETERS[parameter],
                    time=start + dt.timedelta(minutes=step),
                    value=(i % 500) / 10,
                )
            )
        outcome = observation_batch_ingest(
            node=node,
            idempotency_key=f"capacity-{first}",
            body_sha256=hashlib.sha256(str(first).encode()).hexdigest(),
            sensors=sensors,
            readings=readings,
            item_errors=[],
        )
        stored += outcome.response["accepted"]
    seconds = time.perf_counter() - started
    if stored != args.readings:
        raise SystemExit(f"{stored} readings stored of {args.readings}")
    after = snapshot(*tables)
    logger.info("%s readings stored in %.0f s", stored, seconds)
    return {
        "readings": stored,
        "batch": args.batch,
        "sensors": args.sensors,
        "seconds": round(seconds, 1),
        "readings_per_second": round(stored / seconds),
        "after": after,
        **growth(before, after, per=stored),
    }


def plan(places: dict[str, Any], readings: dict[str, Any]) -> dict[str, Any]:
    """Places and readings per GiB, and the disk for the plan's scales (data only: no WAL,
    no backups, no replica copies, no free-space headroom)."""
    point = places["points"]["total_bytes_per_unit"]
    footprint = places["footprints"]["total_bytes_per_unit"]
    reading = readings["total_bytes_per_unit"]
    return {
        "bytes_per_place_point": point,
        "bytes_per_place_footprint_mix": footprint,
        "bytes_per_reading": reading,
        "places_per_gib_point": round(GIB / point),
        "places_per_gib_footprint_mix": round(GIB / footprint),
        "readings_per_gib": round(GIB / reading),
        "gib_1m_places": round(1e6 * point / GIB, 2),
        "gib_10m_places": round(1e7 * point / GIB, 1),
        "gib_100m_places": round(1e8 * point / GIB, 0),
        "gib_1m_places_footprint_mix": round(1e6 * footprint / GIB, 2),
        "gib_10m_places_footprint_mix": round(1e7 * footprint / GIB, 1),
        "gib_10m_readings": round(1e7 * reading / GIB, 2),
        "gib_1b_readings": round(1e9 * reading / GIB, 0),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Capacity: bytes per place and per reading",
        "",
        f"{results['when']}, PostgreSQL {results['postgresql']}, tests/benchmarks/capacity.py.",
        "",
        "| what | rows added | table (heap+TOAST) | indexes | bytes per unit |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label in ("points", "footprints"):
        part = results["places"][label]
        for table in PLACE_TABLES:
            t = part[table]
            lines.append(
                f"| {label}: {table} | {t['rows']:,} | {t['table_bytes_per_unit']:,} B |"
                f" {t['index_bytes_per_unit']:,} B | {t['bytes_per_unit']:,} B per place |"
            )
        lines.append(
            f"| **{label}: per place** | {part['places_added']:,} places | | |"
            f" **{part['total_bytes_per_unit']:,} B** |"
        )
    r = results["readings"]
    for table, t in r.items():
        if isinstance(t, dict) and "rows" in t and table != "after":
            lines.append(
                f"| readings: {table} | {t['rows']:,} | {t['table_bytes_per_unit']:,} B |"
                f" {t['index_bytes_per_unit']:,} B | {t['bytes_per_unit']:,} B per reading |"
            )
    lines.append(
        f"| **per reading** | {r['readings']:,} readings | | |"
        f" **{r['total_bytes_per_unit']:,} B** |"
    )
    p = results["plan"]
    lines += [
        "",
        f"Places per GiB: {p['places_per_gib_point']:,} (points), "
        f"{p['places_per_gib_footprint_mix']:,} (London's footprint mix); readings per GiB: "
        f"{p['readings_per_gib']:,}.",
        f"1M places: {p['gib_1m_places']} GiB; 10M: {p['gib_10m_places']} GiB; 100M: "
        f"{p['gib_100m_places']} GiB (points). 10M readings: {p['gib_10m_readings']} GiB; 1B: "
        f"{p['gib_1b_readings']} GiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    database_url = os.environ.get("BENCH_CAPACITY_DATABASE_URL", DEFAULT_DB)
    os.environ["DATABASE_URL"] = database_url
    os.environ["REPLICA_DATABASE_URL"] = ""
    # The tasks the import and each batch queue go here; no worker runs them.
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    os.environ["REDIS_URL"] = redis_url
    os.environ["CELERY_BROKER_URL"] = redis_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # The importer keeps a copy of each file it reads.
    os.environ["MEDIA_ROOT"] = tempfile.mkdtemp(prefix="places-bench-capacity-media-")
    try:
        from tests.benchmarks.load import recreate_database

        recreate_database(database_url)
        import django

        django.setup()
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        from django.core.management import call_command
        from django.db import connection

        logger.info("migrating %s", database_url)
        call_command("migrate", verbosity=0)
        places = load_places()
        readings = load_readings(args)
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
    finally:
        shutil.rmtree(os.environ["MEDIA_ROOT"], ignore_errors=True)
    results = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "postgresql": version,
        "places": places,
        "readings": readings,
        "plan": plan(places, readings),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "capacity.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "capacity.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
