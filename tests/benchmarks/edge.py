#!/usr/bin/env python
"""Edge ingest over HTTP: sustained readings per second from concurrent clients, then counted.

Issue 15's figure: 4 clients, each sending batches of 1,000 readings (gzip, as
``bin/edge-client`` sends them) to ``POST /api/v1/edge/observations/`` of gunicorn as
deployed (production settings, ``config/gunicorn.py``), for ``--seconds``. Every reading is
unique (each client has its own sensors and clock), so afterwards the readings table must
hold exactly the readings of the acknowledged batches: ``lost`` counts those missing,
``duplicated`` the readings the server answered as duplicates (none were sent twice). A batch
that fails on the wire is sent again under its key, as the client does. Also: p50/p95 of one
batch, from sending to the whole answer.

Then the pull (unless ``--skip-pull``): the GB sample (35K places, with the Natural Earth
countries for their country) imported through the real importer, and a node of Great Britain
pulling its region over HTTP with gzip in pages of 5,000: the first pull (snapshot and the
feed after it) in time, pages and bytes as sent; then 100 places renamed and the incremental
pull. The feed hands out a change only once every older transaction on the server has ended
(shared by every database of the cluster), so the wait for that is reported apart.

The database is made afresh (``BENCH_EDGE_DATABASE_URL``, default ``…/places_bench_edge``;
migrated, one region, node and key), the per-node rate limit is off (the figure is the
server's), and the follow-up tasks queue in ``BENCH_REDIS_URL``'s Redis (db 12 by default),
emptied at the end: no worker runs. Clients are processes, so the GIL of one does not pace
the others; they and the server share the machine, as a benchmark on one host must.

    .venv/bin/python tests/benchmarks/edge.py [--seconds 30] [--clients 4] [--batch 1000]

Results: ``results/edge.json`` and ``results/edge.md``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gzip
import http.client
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).with_name("results")
DEFAULT_DB = "postgis://postgres@127.0.0.1:5432/places_bench_edge"
DEFAULT_REDIS = "redis://127.0.0.1:6379/12"
TARGET_READINGS_PER_SECOND = 20_000
PATH = "/api/v1/edge/observations/"
PARAMETERS = ("pm10", "pm2_5")
logger = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of the timed run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--batch", type=int, default=1000, help="readings per batch")
    parser.add_argument("--sensors", type=int, default=10, help="sensors per client")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--skip-pull", action="store_true", help="only the ingest run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _body(client: int, number: int, *, batch: int, sensors: int) -> bytes:
    """Batch ``number`` of ``client``: readings no other batch has (a clock per client,
    one second per reading of each sensor and parameter), gzip-compressed."""
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    per_step = sensors * len(PARAMETERS)
    first = number * batch
    readings = []
    for i in range(first, first + batch):
        step, rest = divmod(i, per_step)
        sensor, parameter = divmod(rest, len(PARAMETERS))
        time_text = (start + dt.timedelta(seconds=step)).strftime("%Y-%m-%dT%H:%M:%SZ")
        readings.append(
            f'{{"sensor":"b{client}-{sensor}","parameter":"{PARAMETERS[parameter]}",'
            f'"time":"{time_text}","value":{(i % 500) / 10}}}'
        )
    declared = ",".join(
        f'{{"id":"b{client}-{s}","kind":"SDS011","location":[-2.09,57.15]}}' for s in range(sensors)
    )
    text = f'{{"sensors":[{declared}],"readings":[{",".join(readings)}]}}'
    return gzip.compress(text.encode(), compresslevel=5)


def _client(
    client: int,
    host: str,
    port: int,
    key: str,
    args: dict[str, Any],
    start_at: float,
    queue: Any,
) -> None:
    """One client: batches one after another on a kept-alive connection until the run ends;
    a batch that fails on the wire goes again under the same key."""
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    stop_at = start_at + args["seconds"]
    latencies: list[float] = []
    totals = {"batches": 0, "readings": 0, "accepted": 0, "duplicate": 0, "rejected": 0}
    retries = failures = 0
    conn = http.client.HTTPConnection(host, port, timeout=120)
    number = 0
    body = _body(client, number, batch=args["batch"], sensors=args["sensors"])
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        started = time.perf_counter()
        try:
            conn.request(
                "POST",
                PATH,
                body=body,
                headers={**headers, "Idempotency-Key": f"b{client}-{number}"},
            )
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            retries += 1
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=120)
            continue
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            # Sent again under its key, as the client does with a 5xx.
            failures += 1
            logger.warning("client %s batch %s: %s %s", client, number, response.status, raw[:200])
            time.sleep(0.1)
            continue
        answer = json.loads(raw)
        totals["batches"] += 1
        totals["readings"] += args["batch"]
        for name in ("accepted", "duplicate", "rejected"):
            totals[name] += answer[name]
        number += 1
        body = _body(client, number, batch=args["batch"], sensors=args["sensors"])
    conn.close()
    queue.put(
        {
            "client": client,
            "latencies": latencies,
            "retries": retries,
            "failures": failures,
            **totals,
        }
    )


def _get(host: str, port: int, path: str, key: str) -> tuple[int, bytes]:
    """(status, body as sent) of one GET with gzip accepted."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        conn.request(
            "GET", path, headers={"Authorization": f"Bearer {key}", "Accept-Encoding": "gzip"}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _pull(host: str, port: int, key: str, cursor: str | None) -> dict[str, Any]:
    """Follow the feed from ``cursor`` until has_more is false, as a device does."""
    pages = entries = sent = decoded = 0
    started = time.perf_counter()
    while True:
        query = "?limit=5000" + (f"&cursor={cursor}" if cursor else "")
        status, raw = _get(host, port, "/api/v1/edge/changes/" + query, key)
        if status != 200:
            raise RuntimeError(f"changes: {status} {raw[:200]!r}")
        body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        page = json.loads(body)
        pages += 1
        entries += len(page["changes"])
        sent += len(raw)
        decoded += len(body)
        cursor = page["cursor"]
        if not page["has_more"]:
            break
    return {
        "seconds": time.perf_counter() - started,
        "pages": pages,
        "entries": entries,
        "bytes_sent": sent,
        "bytes_decoded": decoded,
        "cursor": cursor,
    }


def _feed_caught_up(timeout: float = 300) -> float:
    """Seconds waited until every transaction older than now has ended on the server."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid_current()")
        mine = cursor.fetchone()[0]
    while time.perf_counter() - started < timeout:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            if cursor.fetchone()[0] > mine:
                return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError("transactions elsewhere on the server held the change feed back")


def pull_run(*, host: str, port: int, key: str, node: Any) -> dict[str, Any]:
    from places.models import Place
    from places.services import place_update

    waited = _feed_caught_up()
    first = _pull(host, port, key, None)
    region_ids = list(
        Place.objects.filter(country_id=node.region_id, status="active")
        .order_by("id")
        .values_list("id", flat=True)
    )
    # A hundred places spread over the region, the same ones each run.
    ids = region_ids[:: max(1, len(region_ids) // 100)][:100]
    for place in Place.objects.filter(id__in=ids):
        place_update(place=place, data={"name": f"{place.name} (edited)"})
    waited += _feed_caught_up()
    again = _pull(host, port, key, first["cursor"])
    return {
        "places": Place.objects.filter(country_id=node.region_id, status="active").count(),
        "first": {k: v for k, v in first.items() if k != "cursor"},
        "after_100_edits": {k: v for k, v in again.items() if k != "cursor"},
        "edited": len(ids),
        "feed_wait_seconds": waited,
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def markdown(results: dict[str, Any]) -> str:
    r = results["run"]
    lines = [
        "# Edge ingest over HTTP",
        "",
        f"{r['clients']} clients, batches of {r['batch']:,} readings (gzip), "
        f"{r['seconds']:.0f} s, gunicorn {results['workers']} workers; "
        f"{results['machine']['cpus']} CPUs, load average at the end "
        f"{results['machine']['load_average_at_end']}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| readings stored per second | {r['readings_per_second']:,.0f} "
        f"(target ≥ {TARGET_READINGS_PER_SECOND:,}) |",
        f"| batches acknowledged | {r['batches']:,} |",
        f"| readings acknowledged / stored | {r['acknowledged']:,} / {r['stored']:,} |",
        f"| lost | {r['lost']:,} |",
        f"| duplicated | {r['duplicated']:,} |",
        f"| batch p50 / p95 | {r['p50_ms']:.0f} ms / {r['p95_ms']:.0f} ms |",
        f"| retries on the wire / non-200 answers | {r['retries']} / {r['failures']} |",
        "",
    ]
    pull = results.get("pull")
    if pull:
        lines += [
            f"Pull of Great Britain ({pull['places']:,} active places), pages of 5,000, gzip; "
            f"waits for older transactions on the server not counted "
            f"({pull['feed_wait_seconds']:.1f} s).",
            "",
            "| pull | time | pages | entries | bytes sent (decoded) |",
            "|---|---|---|---|---|",
        ]
        for name, label in (
            ("first", "first (snapshot + feed)"),
            ("after_100_edits", "after 100 edits"),
        ):
            p = pull[name]
            lines.append(
                f"| {label} | {p['seconds'] * 1000:,.0f} ms | {p['pages']} | {p['entries']:,} "
                f"| {p['bytes_sent']:,} ({p['bytes_decoded']:,}) |"
            )
        lines.append("")
    return "\n".join(lines)


def _gb_loaded() -> tuple[Any, str]:
    """The GB sample and the countries imported as the tests do; a node of Great Britain."""
    from ingestion.edge.services.keys import edge_key_create, edge_node_create
    from ingestion.services.imports import import_job_execute
    from ingestion.services.jobs import import_job_create
    from ingestion.services.regions import PRESETS, region_load
    from places.models import Region
    from places.services import dataset_get_or_create

    sample = ROOT / "ingestion" / "sample_data"
    logger.info("loading the countries and the GB sample")
    region_load(
        path=sample / "ne_50m_admin_0_countries.geojson.gz",
        source=PRESETS["ne-countries"],
        dataset=dataset_get_or_create(slug="natural-earth"),
    )
    job = import_job_create(
        path=sample / "osm_pow_gb_excl_wales.csv.gz", dataset=dataset_get_or_create(slug="osm-gb")
    )
    import_job_execute(job_id=job.pk)
    country = Region.objects.get(level="country", code="GBR")
    node = edge_node_create(name="bench-gb", region=country)
    return node, edge_key_create(node=node).secret


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    database_url = os.environ.get("BENCH_EDGE_DATABASE_URL", DEFAULT_DB)
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS)
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ["CELERY_BROKER_URL"] = redis_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # The importer keeps a copy of the file it reads.
    os.environ["MEDIA_ROOT"] = tempfile.mkdtemp(prefix="places-bench-edge-media-")
    atexit.register(shutil.rmtree, os.environ["MEDIA_ROOT"], ignore_errors=True)

    from tests.benchmarks.load import recreate_database

    recreate_database(database_url)
    import django

    django.setup()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    from django.contrib.gis.geos import MultiPolygon, Polygon
    from django.core.management import call_command
    from django.db import connection
    from django_redis import get_redis_connection

    from ingestion.edge.models import Observation
    from ingestion.edge.services.keys import edge_key_create, edge_node_create
    from places.models import Region
    from tests.benchmarks.servers import gunicorn_server

    logger.info("migrating %s", database_url)
    call_command("migrate", verbosity=0)
    region = Region.objects.create(
        name="Bench region",
        level="district",
        code="BENCH",
        code_system="bench",
        geom=MultiPolygon(Polygon.from_bbox((-3, 57, -2, 58))),
    )
    node = edge_node_create(name="bench-node", region=region)
    key = edge_key_create(node=node).secret
    pull_node = pull_key = None
    if not args.skip_pull:
        pull_node, pull_key = _gb_loaded()
    connection.close()

    log_dir = Path(tempfile.mkdtemp(prefix="places-bench-edge-"))
    run_args = {"seconds": args.seconds, "batch": args.batch, "sensors": args.sensors}
    with gunicorn_server(
        database_url=database_url,
        redis_url=redis_url,
        workers=args.workers,
        log_dir=log_dir,
        extra_env={"EDGE_RATE": "", "CELERY_BROKER_URL": redis_url},
    ) as server:
        logger.info("%s clients for %s s", args.clients, args.seconds)
        queue: Any = multiprocessing.get_context("fork").Queue()
        start_at = time.time() + 2  # every client has made its first body by then
        processes = [
            multiprocessing.get_context("fork").Process(
                target=_client,
                args=(i, server.host, server.port, key, run_args, start_at, queue),
            )
            for i in range(args.clients)
        ]
        for process in processes:
            process.start()
        reports = [queue.get(timeout=args.seconds + 600) for _ in processes]
        for process in processes:
            process.join()
        wall = time.time() - start_at
        pull = None
        if pull_node is not None and pull_key is not None:
            logger.info("pull of %s", pull_node.region)
            pull = pull_run(host=server.host, port=server.port, key=pull_key, node=pull_node)
    stored = Observation.objects.filter(sensor__node=node).count()
    acknowledged = sum(r["readings"] for r in reports)
    accepted = sum(r["accepted"] for r in reports)
    latencies = [ms for r in reports for ms in r["latencies"]]
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "workers": args.workers,
        "run": {
            "clients": args.clients,
            "batch": args.batch,
            "seconds": wall,
            "batches": sum(r["batches"] for r in reports),
            "acknowledged": acknowledged,
            "accepted": accepted,
            "stored": stored,
            "lost": acknowledged - stored,
            "duplicated": sum(r["duplicate"] for r in reports),
            "rejected": sum(r["rejected"] for r in reports),
            "readings_per_second": stored / wall,
            "p50_ms": statistics.median(latencies) if latencies else 0.0,
            "p95_ms": _percentile(latencies, 0.95),
            "retries": sum(r["retries"] for r in reports),
            "failures": sum(r["failures"] for r in reports),
        },
    }
    if pull is not None:
        results["pull"] = pull
    # The follow-up tasks no worker ran.
    get_redis_connection("default").flushdb()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "edge.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.output / "edge.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
