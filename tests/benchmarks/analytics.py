#!/usr/bin/env python
"""Analytics figures (``make bench``): full recompute over the benchmark set, incremental
recompute after a 1,000-place import, and reads of stored results.

Runs on the benchmark database (``BENCH_DATABASE_URL``, the generated set of ``load.py``,
reused while its parameters are unchanged) and the benchmark Redis. The reads are measured
in-process through Django's test client (the view, cache and database; no HTTP server), each
figure over ``--reads`` requests after one that fills the cache. Results go to
``tests/benchmarks/results/analytics.{json,md}``.

Targets (issue 16): full ≤ 60 s, incremental ≤ 5 s, stored reads p95 ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
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


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _increment_csv(path: Path, *, count: int, seed: int, spread: float) -> None:
    """``count`` new places next to existing ones within ``spread`` degrees of one of them
    (an import of one area, as a city's or a county's file is); a large ``spread`` scatters
    them over the world instead."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "WITH centre AS (SELECT location FROM places_place "
            "TABLESAMPLE SYSTEM (1) REPEATABLE (%s) LIMIT 1) "
            "SELECT ST_X(p.location), ST_Y(p.location) FROM places_place p, centre c "
            "WHERE p.location && ST_Expand(c.location, %s) LIMIT %s",
            [seed, spread, count],
        )
        points = cursor.fetchall()
    rng = random.Random(seed)
    stamp = time.time_ns()
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,name,religion,lon,lat\n")
        for i in range(count):
            lon, lat = points[i % len(points)]
            fh.write(
                f"{stamp}-{i},Bench increment {i},christian,"
                f"{lon + rng.uniform(-1e-3, 1e-3):.6f},{lat + rng.uniform(-1e-3, 1e-3):.6f}\n"
            )


def _reads(client: Any, url: str, *, n: int) -> dict[str, float]:
    first = client.get(url)
    assert first.status_code == 200, (url, first.status_code)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(_p(times, 0.95), 2),
        "bytes": len(first.content),
    }


def _viewport_boxes(*, count: int, seed: int) -> list[str]:
    """Zoom-12 views (about 0.2° wide) centred on sampled places: each shows every point."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT ST_X(location), ST_Y(location) FROM places_place "
            "TABLESAMPLE SYSTEM (1) REPEATABLE (%s) LIMIT %s",
            [seed, count],
        )
        centres = cursor.fetchall()
    return [
        f"/api/v1/viewport/?bbox={x - 0.1:.4f},{y - 0.07:.4f},{x + 0.1:.4f},{y + 0.07:.4f}"
        f"&zoom=12&format=bin"
        for x, y in centres
    ]


def _viewport_run(client: Any, urls: list[str], *, until: Any = None, n: int = 40) -> list[float]:
    """Uncached views (the cache emptied before each), ``n`` of them, or until ``until()``."""
    from django.core.cache import cache

    times = []
    i = 0
    while (until is None and i < n) or (until is not None and not until()):
        cache.clear()
        started = time.perf_counter()
        response = client.get(urls[i % len(urls)])
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
        i += 1
    return times


def _viewport_during_recompute(
    client: Any, urls: list[str], *, bench_url: str, replica_url: str
) -> dict[str, Any]:
    """Viewport times while ``manage.py analytics_recompute --full`` runs in another process
    reading ``replica_url`` ("" for the primary)."""
    import subprocess

    env = {**os.environ, "DATABASE_URL": bench_url, "REPLICA_DATABASE_URL": replica_url}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "analytics_recompute", "--full"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)  # past Django's start-up, into the aggregate
    times = _viewport_run(client, urls, until=lambda: process.poll() is not None)
    out = process.communicate()[0].strip()
    return {
        "recompute_s": round(time.perf_counter() - started, 1),
        "recompute_output": out,
        "views": len(times),
        "p50_ms": round(statistics.median(times), 1) if times else None,
        "p95_ms": round(_p(times, 0.95), 1) if times else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20_240_601)
    parser.add_argument("--increment", type=int, default=1_000)
    parser.add_argument(
        "--spread", type=float, default=1.0, help="degrees around one place the increment covers"
    )
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument(
        "--replica-url",
        default=os.environ.get("BENCH_REPLICA_DATABASE_URL", ""),
        help="the benchmark database on a streaming replica (bin/replica-up): measure the "
        "viewport while a full recompute reads there, and on the primary for contrast",
    )
    args = parser.parse_args(argv)

    bench_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_BENCH_DB)
    os.environ["DATABASE_URL"] = bench_url
    os.environ.setdefault("REPLICA_DATABASE_URL", "")
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", DEFAULT_BENCH_REDIS)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.local"
    os.environ["API_ANON_RATE"] = ""  # the client measured is one address
    import django

    django.setup()
    from django.core.cache import cache
    from django.test import Client

    from analytics.services import analytics_recompute
    from analytics.services.sensors import sensor_rollups_recompute
    from analytics.services.summaries import region_summaries_recompute
    from ingestion.services.imports import import_job_execute
    from ingestion.services.jobs import import_job_create
    from places.models import Place
    from places.services import dataset_get_or_create
    from tests.benchmarks.dataset import Parameters
    from tests.benchmarks.load import bench_data_ensure

    loaded = bench_data_ensure(
        url=bench_url, params=Parameters(places=args.places, seed=args.seed), reload=False
    )
    results: dict[str, Any] = {"set": loaded, "places_active": Place.objects.count()}

    started = time.perf_counter()
    summaries = region_summaries_recompute(full=True)
    results["full_summaries_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    sensors = sensor_rollups_recompute(full=True)
    results["full_sensors_s"] = round(time.perf_counter() - started, 2)
    results["full_s"] = round(results["full_summaries_s"] + results["full_sensors_s"], 2)
    results["regions"] = summaries.regions
    results["sensor_rollups"] = sensors.sensor_rollups

    dataset = dataset_get_or_create(slug="analytics-bench-increment")
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as tmp:
        path = Path(tmp) / "increment.csv"
        _increment_csv(path, count=args.increment, seed=args.seed, spread=args.spread)
        job = import_job_execute(job_id=import_job_create(path=path, dataset=dataset).pk)
    results["increment_added"] = job.added if job else None
    started = time.perf_counter()
    run = analytics_recompute()
    results["incremental_s"] = round(time.perf_counter() - started, 2)
    results["incremental_regions"] = run.summaries.recomputed

    cache.clear()
    client = Client(HTTP_HOST="127.0.0.1")
    results["reads"] = {
        name: _reads(client, url, n=args.reads)
        for name, url in [
            ("summaries_country", "/api/v1/stats/summaries/?level=country"),
            ("summaries_country_csv", "/api/v1/stats/summaries/?level=country&format=csv"),
            (
                "rankings",
                "/api/v1/stats/rankings/?level=country&order=per_100k_people&religion=muslim",
            ),
            ("compare", "/api/v1/stats/compare/?regions=1,2,3,4,5"),
        ]
    }
    if args.replica_url:
        urls = _viewport_boxes(count=20, seed=args.seed)
        _viewport_run(client, urls, n=5)  # warm the connection and the plan cache
        idle = _viewport_run(client, urls, n=60)
        results["viewport"] = {
            "idle": {
                "views": len(idle),
                "p50_ms": round(statistics.median(idle), 1),
                "p95_ms": round(_p(idle, 0.95), 1),
            },
            "recompute_on_replica": _viewport_during_recompute(
                client, urls, bench_url=bench_url, replica_url=args.replica_url
            ),
            "recompute_on_primary": _viewport_during_recompute(
                client, urls, bench_url=bench_url, replica_url=""
            ),
        }
    worst_p95 = max(r["p95_ms"] for r in results["reads"].values())
    results["targets"] = {
        "full ≤ 60 s": results["full_s"] <= 60,
        "incremental ≤ 5 s": results["incremental_s"] <= 5,
        "stored reads p95 ≤ 50 ms": worst_p95 <= 50,
    }
    RESULTS.mkdir(exist_ok=True)
    lines = [
        "# Analytics",
        "",
        f"{results['places_active']:,} places, {results['regions']} regions.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| full recompute (summaries + sensors) | {results['full_s']} s "
        f"({results['full_summaries_s']} + {results['full_sensors_s']}) | ≤ 60 s |",
        f"| incremental after a {args.increment:,}-place import within {args.spread}° "
        f"| {results['incremental_s']} s ({results['incremental_regions']} regions) | ≤ 5 s |",
    ]
    for name, read in results["reads"].items():
        lines.append(
            f"| read {name} (in-process) | p50 {read['p50_ms']} ms, p95 {read['p95_ms']} ms "
            f"| p95 ≤ 50 ms |"
        )
    if "viewport" in results:
        view = results["viewport"]
        idle_p95 = view["idle"]["p95_ms"]
        results["targets"]["viewport p95 during a replica recompute ≤ 1.5× idle"] = (
            view["recompute_on_replica"]["p95_ms"] or 0
        ) <= 1.5 * idle_p95
        lines.append(
            f"| viewport (zoom 12, binary, uncached) idle | p50 {view['idle']['p50_ms']} ms, "
            f"p95 {idle_p95} ms | |"
        )
        for name in ("recompute_on_replica", "recompute_on_primary"):
            run = view[name]
            lines.append(
                f"| viewport during a full recompute, {name.rsplit('_', 1)[1]} "
                f"({run['recompute_s']} s, {run['views']} views) | p50 {run['p50_ms']} ms, "
                f"p95 {run['p95_ms']} ms | p95 ≤ {1.5 * idle_p95:.1f} ms (replica) |"
            )
    (RESULTS / "analytics.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (RESULTS / "analytics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
