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

Then (unless ``--skip-kill``) the same ingest again, as long, from as many clients (another
node, so no key or sensor repeats), while a Celery worker as deployed (``celery -A config
worker -Q edge --concurrency 2``, the bench's settings and Redis) runs each batch's follow-up
task (adding its readings to the counters behind the metrics, marking it ``counted_at``).
Halfway through, the worker's process group is killed with SIGKILL, as a crashed container
would be, and a new worker started. The answer never waits for the worker, so lost and
duplicated are counted as before; then the restarted worker drains the queue, and the batches
it left uncounted are those the killed one had taken: their messages come back only after
Redis's visibility timeout (hours), or never when the worker died between taking a message
off the list and noting it unacknowledged (two steps in kombu's Redis transport). The sweep
that beat runs every five minutes (``edge_batches_count_pending``; its service here, without
the five-minute grace) must count them: no batch of either run may stay uncounted, and the
counters must have grown by exactly the readings stored.

The database is made afresh (``BENCH_EDGE_DATABASE_URL``, default ``…/places_bench_edge``;
migrated, one region, a node and key per run), the per-node rate limit is off (the figure is
the server's), and the follow-up tasks queue in ``BENCH_REDIS_URL``'s Redis (db 12 by
default): those of the first run, which no worker runs, are emptied after it and its batches
counted by the sweep before the second starts. Clients are processes, so the GIL of one does
not pace the others; they, the server and the worker share the machine, as a benchmark on one
host must.

    .venv/bin/python tests/benchmarks/edge.py [--seconds 30] [--clients 4] [--batch 1000]
        [--skip-pull] [--skip-kill]

Results: ``results/edge.json`` and ``results/edge.md``; the exit status is 1 when a reading
was lost or duplicated or a batch was not counted exactly once, whatever the speed.
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
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    parser.add_argument("--skip-pull", action="store_true", help="no pull of Great Britain")
    parser.add_argument(
        "--skip-kill", action="store_true", help="no second run with a worker killed mid-run"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _body(client: int, number: int, *, batch: int, sensors: int, prefix: str) -> bytes:
    """Batch ``number`` of ``client``: readings no other batch has (a clock per client,
    one second per reading of each sensor and parameter), gzip-compressed. ``prefix`` names
    the run, whose node owns the sensors."""
    start = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    per_step = sensors * len(PARAMETERS)
    first = number * batch
    readings = []
    for i in range(first, first + batch):
        step, rest = divmod(i, per_step)
        sensor, parameter = divmod(rest, len(PARAMETERS))
        time_text = (start + dt.timedelta(seconds=step)).strftime("%Y-%m-%dT%H:%M:%SZ")
        readings.append(
            f'{{"sensor":"{prefix}{client}-{sensor}","parameter":"{PARAMETERS[parameter]}",'
            f'"time":"{time_text}","value":{(i % 500) / 10}}}'
        )
    declared = ",".join(
        f'{{"id":"{prefix}{client}-{s}","kind":"SDS011","location":[-2.09,57.15]}}'
        for s in range(sensors)
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
    shape = {"batch": args["batch"], "sensors": args["sensors"], "prefix": args["prefix"]}
    body = _body(client, number, **shape)
    time.sleep(max(0.0, start_at - time.time()))
    while time.time() < stop_at:
        started = time.perf_counter()
        try:
            conn.request(
                "POST",
                PATH,
                body=body,
                headers={**headers, "Idempotency-Key": f"{args['prefix']}{client}-{number}"},
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
        body = _body(client, number, **shape)
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


def ingest_run(
    *,
    host: str,
    port: int,
    key: str,
    prefix: str,
    args: argparse.Namespace,
    midway: Callable[[float], dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], float, dict[str, Any]]:
    """The clients' reports and the run's length in seconds; ``midway(start_at)`` is called
    halfway through, its answer returned as the third item."""
    from django.db import connection

    # The clients are forked: none may share this process's database connection.
    connection.close()
    run_args = {
        "seconds": args.seconds,
        "batch": args.batch,
        "sensors": args.sensors,
        "prefix": prefix,
    }
    context = multiprocessing.get_context("fork")
    queue: Any = context.Queue()
    start_at = time.time() + 2  # every client has made its first body by then
    processes = [
        context.Process(target=_client, args=(i, host, port, key, run_args, start_at, queue))
        for i in range(args.clients)
    ]
    for process in processes:
        process.start()
    events: dict[str, Any] = {}
    if midway is not None:
        time.sleep(max(0.0, start_at + args.seconds / 2 - time.time()))
        events = midway(start_at)
    reports = [queue.get(timeout=args.seconds + 600) for _ in processes]
    for process in processes:
        process.join()
    return reports, time.time() - start_at, events


def _summary(
    reports: list[dict[str, Any]], *, wall: float, stored: int, args: argparse.Namespace
) -> dict[str, Any]:
    acknowledged = sum(r["readings"] for r in reports)
    latencies = [ms for r in reports for ms in r["latencies"]]
    return {
        "clients": args.clients,
        "batch": args.batch,
        "seconds": wall,
        "batches": sum(r["batches"] for r in reports),
        "acknowledged": acknowledged,
        "accepted": sum(r["accepted"] for r in reports),
        "stored": stored,
        "lost": acknowledged - stored,
        "duplicated": sum(r["duplicate"] for r in reports),
        "rejected": sum(r["rejected"] for r in reports),
        "readings_per_second": stored / wall,
        "p50_ms": statistics.median(latencies) if latencies else 0.0,
        "p95_ms": _percentile(latencies, 0.95),
        "retries": sum(r["retries"] for r in reports),
        "failures": sum(r["failures"] for r in reports),
    }


@dataclass
class Worker:
    hostname: str
    process: subprocess.Popen[bytes]
    log: Path


def _worker_env(*, database_url: str, redis_url: str) -> dict[str, str]:
    """The environment gunicorn gets from ``servers.gunicorn_server``: the bench's production
    settings, database and Redis (the broker the server queues the follow-ups in)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.benchmarks.settings",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DEBUG": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_LEVEL": "WARNING",
    }
    for variable in (
        "DATABASE_URL_FILE",
        "REDIS_URL_FILE",
        "SENTRY_DSN",
        "SENTRY_DSN_FILE",
        "PYTHONPATH",
    ):
        env.pop(variable, None)
    return env


def _worker_start(*, env: dict[str, str], log_dir: Path, number: int) -> Worker:
    """A worker of the ``edge`` queue as k8s/50-worker.yaml runs one (two processes), in its
    own process group so that it can be killed whole."""
    hostname = f"bench-edge-{number}@{socket.gethostname()}"
    log = log_dir / f"worker-{number}.log"
    command = [
        str(ROOT / ".venv" / "bin" / "celery"),
        "-A",
        "config",
        "worker",
        "-Q",
        "edge",
        "--concurrency",
        "2",
        "--loglevel",
        "WARNING",
        "--hostname",
        hostname,
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Worker(hostname=hostname, process=process, log=log)


def _worker_ready(worker: Worker, timeout: float = 180) -> None:
    """Wait until the worker answers a ping through the broker (it consumes by then)."""
    from config.celery import app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(
                f"worker {worker.hostname} exited with {worker.process.returncode}:\n"
                + worker.log.read_text(errors="replace")[-3000:]
            )
        if app.control.ping(destination=[worker.hostname], timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker {worker.hostname} did not answer within {timeout} s")


def _worker_stop(worker: Worker, sig: int = signal.SIGTERM) -> None:
    if worker.process.poll() is not None:
        return
    os.killpg(worker.process.pid, sig)
    try:
        worker.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)


def _uncounted(node: Any | None = None) -> int:
    from ingestion.edge.models import ObservationBatch

    batches = ObservationBatch.objects.filter(counted_at__isnull=True)
    return (batches.filter(node=node) if node is not None else batches).count()


def _counted(outcome: str) -> int:
    from django.db.models import Sum

    from ingestion.edge.models import EdgeReadingCount

    rows = EdgeReadingCount.objects.filter(outcome=outcome)
    return rows.aggregate(total=Sum("total"))["total"] or 0


def _sweep() -> int:
    """What the beat task ``edge_batches_count_pending`` does, without its five-minute grace
    (for a follow-up still on its way), until no batch is left: how many it counted."""
    from ingestion.edge.services.batches import observation_batches_count_pending

    swept = 0
    while counted := observation_batches_count_pending(older_than=dt.timedelta(0)):
        swept += counted
    return swept


def _drained(node: Any, redis: Any, timeout: float = 600) -> float:
    """Seconds until the ``edge`` queue is empty and the node's uncounted batches have held
    still for three seconds (the worker's tasks in hand finished)."""
    started = last_change = time.monotonic()
    last = -1
    while time.monotonic() - started < timeout:
        queued = redis.llen("edge")
        uncounted = _uncounted(node)
        if queued or uncounted != last:
            last, last_change = uncounted, time.monotonic()
        elif time.monotonic() - last_change >= 3:
            return last_change - started
        time.sleep(0.5)
    raise RuntimeError(f"the edge queue was not drained within {timeout} s")


def kill_run(
    *,
    host: str,
    port: int,
    node: Any,
    key: str,
    args: argparse.Namespace,
    env: dict[str, str],
    log_dir: Path,
) -> dict[str, Any]:
    """The ingest run again with a worker consuming the follow-ups, killed (SIGKILL, the whole
    group) halfway through and started again; then the follow-ups are checked."""
    from django_redis import get_redis_connection

    from ingestion.edge.models import Observation

    redis = get_redis_connection("default")
    accepted_before = _counted("accepted")
    duplicate_before = _counted("duplicate")
    first = _worker_start(env=env, log_dir=log_dir, number=1)
    _worker_ready(first)
    logger.info("worker %s up; %s clients for %s s", first.process.pid, args.clients, args.seconds)
    restarted: list[Worker] = []

    def kill_and_restart(start_at: float) -> dict[str, Any]:
        killed_at = time.time()
        logger.info("SIGKILL to worker %s", first.process.pid)
        _worker_stop(first, signal.SIGKILL)
        restarted.append(_worker_start(env=env, log_dir=log_dir, number=2))
        _worker_ready(restarted[0])
        logger.info("worker %s up again", restarted[0].process.pid)
        return {
            "killed_after_seconds": killed_at - start_at,
            "restarted_answering_after_seconds": time.time() - killed_at,
        }

    try:
        reports, wall, events = ingest_run(
            host=host, port=port, key=key, prefix="k", args=args, midway=kill_and_restart
        )
        stored = Observation.objects.filter(sensor__node=node).count()
        drain = _drained(node, redis)
    finally:
        for worker in (first, *restarted):
            _worker_stop(worker)
    left = _uncounted(node)
    # Messages the killed worker had taken and not acknowledged: Redis gives them back after
    # the visibility timeout (hours), to a task that then finds its batch counted.
    unacked = redis.hlen("unacked")
    swept = _sweep()
    return {
        **_summary(reports, wall=wall, stored=stored, args=args),
        "worker": {
            **events,
            "drained_after_run_seconds": drain,
            "uncounted_after_restarted_worker": left,
            "messages_unacknowledged_in_redis": unacked,
            "counted_by_sweep": swept,
            "uncounted_after_sweep": _uncounted(),
            "counter_accepted_added": _counted("accepted") - accepted_before,
            "counter_duplicate_added": _counted("duplicate") - duplicate_before,
        },
    }


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
    runs = [("no worker", results["run"])]
    killed = results.get("run_worker_killed")
    if killed:
        runs.append(("worker killed mid-run", killed))
    r = results["run"]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(run) for _, run in runs) + " |"

    lines = [
        "# Edge ingest over HTTP",
        "",
        f"{r['clients']} clients, batches of {r['batch']:,} readings (gzip), "
        f"{_seconds_asked(results):.0f} s a run, gunicorn {results['workers']} workers; "
        f"{results['machine']['cpus']} CPUs, load average at the end "
        f"{results['machine']['load_average_at_end']}.",
        "",
        "| figure | " + " | ".join(name for name, _ in runs) + " |",
        "|---|" + "---|" * len(runs),
        row(
            f"readings stored per second (target ≥ {TARGET_READINGS_PER_SECOND:,})",
            lambda x: f"{x['readings_per_second']:,.0f}",
        ),
        row("batches acknowledged", lambda x: f"{x['batches']:,}"),
        row(
            "readings acknowledged / stored",
            lambda x: f"{x['acknowledged']:,} / {x['stored']:,}",
        ),
        row("lost", lambda x: f"{x['lost']:,}"),
        row("duplicated", lambda x: f"{x['duplicated']:,}"),
        row("batch p50 / p95", lambda x: f"{x['p50_ms']:.0f} ms / {x['p95_ms']:.0f} ms"),
        row("retries on the wire / non-200 answers", lambda x: f"{x['retries']} / {x['failures']}"),
        "",
    ]
    if killed:
        w = killed["worker"]
        lines += [
            f"Worker killed (SIGKILL, its process group) {w['killed_after_seconds']:.1f} s into "
            f"the second run; the new one answered {w['restarted_answering_after_seconds']:.1f} s "
            f"later and had drained the queue {w['drained_after_run_seconds']:.1f} s after the "
            "run.",
            "",
            "| follow-up (counting each batch once) | value |",
            "|---|---|",
            f"| batches left uncounted by the restarted worker (taken by the killed one) | "
            f"{w['uncounted_after_restarted_worker']} |",
            f"| their messages still unacknowledged in Redis (back after the visibility timeout) | "
            f"{w['messages_unacknowledged_in_redis']} |",
            f"| batches counted by the sweep | {w['counted_by_sweep']} |",
            f"| batches left uncounted after the sweep (both runs) | "
            f"{w['uncounted_after_sweep']} |",
            f"| accepted counter grew by / readings stored | {w['counter_accepted_added']:,} / "
            f"{killed['stored']:,} |",
            f"| duplicate counter grew by | {w['counter_duplicate_added']:,} |",
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


def _seconds_asked(results: dict[str, Any]) -> float:
    return float(results.get("seconds_asked", results["run"]["seconds"]))


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
    kill_node = kill_key = None
    if not args.skip_kill:
        kill_node = edge_node_create(name="bench-node-killed-worker", region=region)
        kill_key = edge_key_create(node=kill_node).secret
    connection.close()

    log_dir = Path(tempfile.mkdtemp(prefix="places-bench-edge-"))
    logger.info("logs in %s", log_dir)
    redis = get_redis_connection("default")
    killed = None
    with gunicorn_server(
        database_url=database_url,
        redis_url=redis_url,
        workers=args.workers,
        log_dir=log_dir,
        extra_env={"EDGE_RATE": "", "CELERY_BROKER_URL": redis_url},
    ) as server:
        logger.info("%s clients for %s s, no worker", args.clients, args.seconds)
        reports, wall, _ = ingest_run(
            host=server.host, port=server.port, key=key, prefix="b", args=args
        )
        stored = Observation.objects.filter(sensor__node=node).count()
        pull = None
        if pull_node is not None and pull_key is not None:
            logger.info("pull of %s", pull_node.region)
            pull = pull_run(host=server.host, port=server.port, key=pull_key, node=pull_node)
        # The follow-ups of the first run, which no worker ran, go; its batches are counted by
        # the sweep, so that the second run starts with none pending.
        redis.flushdb()
        _sweep()
        if kill_node is not None and kill_key is not None:
            killed = kill_run(
                host=server.host,
                port=server.port,
                node=kill_node,
                key=kill_key,
                args=args,
                env=_worker_env(database_url=database_url, redis_url=redis_url),
                log_dir=log_dir,
            )
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "workers": args.workers,
        "seconds_asked": args.seconds,
        "run": _summary(reports, wall=wall, stored=stored, args=args),
    }
    if killed is not None:
        results["run_worker_killed"] = killed
    if pull is not None:
        results["pull"] = pull
    # Tasks the pull's edits queued for other queues, and the killed worker's unacknowledged
    # messages: nothing is left to run them.
    redis.flushdb()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "edge.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.output / "edge.md").write_text(text)
    print(text)
    broken = failures(results)
    if broken:
        sys.exit("edge benchmark: " + "; ".join(broken))


def failures(results: dict[str, Any]) -> list[str]:
    """What must hold whatever the speed: nothing lost or duplicated, every batch counted
    once in the end."""
    found = []
    for name in ("run", "run_worker_killed"):
        run = results.get(name)
        if run and (run["lost"] or run["duplicated"]):
            found.append(f"{name}: {run['lost']} lost, {run['duplicated']} duplicated")
    killed = results.get("run_worker_killed")
    if killed:
        w = killed["worker"]
        if w["uncounted_after_sweep"]:
            found.append(f"{w['uncounted_after_sweep']} batches uncounted after the sweep")
        if w["counter_accepted_added"] != killed["stored"] or w["counter_duplicate_added"]:
            found.append(
                f"counters grew by {w['counter_accepted_added']} accepted and "
                f"{w['counter_duplicate_added']} duplicate for {killed['stored']} stored"
            )
    return found


if __name__ == "__main__":
    main()
