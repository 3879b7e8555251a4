#!/usr/bin/env python
"""First paint of the map (``make bench``): cold loads of /map/ in Debian's Chromium against
gunicorn with production settings (hashed, compressed static files from collectstatic), on
the benchmark database; results in tests/benchmarks/results/map.{json,md}.

Figures per load (tests/benchmarks/map_paint.mjs): milliseconds from navigation start to the
first frame that shows places, to the map idle, and the bytes transferred (by kind). A frame
shows places when MapLibre reports a cluster or place rendered and the canvas, read at that
feature's pixel in the frame's "render" event, holds neither the basemap's land nor its water
(the pixel is kept in each run's ``first_pixel``). The issue's budget is the first points
within 2 s of a cold load on this machine.

    .venv/bin/python tests/benchmarks/map_paint.py [--loads 5] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import environ
import psycopg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.servers import gunicorn_server  # noqa: E402

RESULTS = Path(__file__).with_name("results")
DEFAULT_BENCH_DB = "postgis://postgres@127.0.0.1:5432/places_bench"
DEFAULT_BENCH_REDIS = "redis://127.0.0.1:6379/10"
BUDGET_MS = 2000
logger = logging.getLogger("bench")


def _connect_kwargs(url: str) -> dict[str, object]:
    config = environ.Env.db_url_config(url)
    kwargs = {
        "host": config.get("HOST") or "127.0.0.1",
        "port": config.get("PORT") or 5432,
        "user": config.get("USER") or "postgres",
        "password": config.get("PASSWORD") or None,
        "dbname": config["NAME"],
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def collectstatic(static_root: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env={**env, "STATIC_ROOT": str(static_root)},
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5, help="cold loads measured")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_BENCH_DB)
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_BENCH_REDIS)
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    static_root = Path(tempfile.mkdtemp(prefix="places-bench-static-"))
    settings_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.benchmarks.settings",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": args.database_url,
    }
    logger.info("collectstatic (hashed, compressed) into %s", static_root)
    collectstatic(static_root, settings_env)
    with gunicorn_server(
        database_url=args.database_url,
        redis_url=args.redis_url,
        workers=2,
        log_dir=static_root,
        extra_env={"STATIC_ROOT": str(static_root)},
    ) as server:
        base = f"http://127.0.0.1:{server.port}"
        started = time.time()
        run = subprocess.run(
            ["node", str(Path(__file__).with_name("map_paint.mjs")), base, str(args.loads)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    with psycopg.connect(**_connect_kwargs(args.database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM places_place WHERE status = 'active'").fetchone()
    active_places = row[0] if row else 0
    runs = measured["runs"]
    first = [r["first_points_ms"] for r in runs]
    idle = [r["idle_ms"] for r in runs]
    all_sources = [r["all_sources_ms"] for r in runs]
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "loads": len(runs),
        "database": environ.Env.db_url_config(args.database_url)["NAME"],
        "active_places": active_places,
        "load_average_at_start": os.getloadavg()[0],
        "first_points_ms": {"median": statistics.median(first), "max": max(first)},
        "idle_ms": {"median": statistics.median(idle), "max": max(idle)},
        "all_sources_ms": {"median": statistics.median(all_sources), "max": max(all_sources)},
        "bytes": statistics.median(r["bytes"] for r in runs),
        "bytes_by_kind": runs[0]["bytes_by_kind"],
        "requests": runs[0]["requests"],
        "external_requests": measured["external_requests"],
        "budget_ms": BUDGET_MS,
        "within_budget": statistics.median(first) <= BUDGET_MS,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "map.json").write_text(json.dumps(results, indent=2) + "\n")
    kinds = ", ".join(f"{k} {v / 1e3:,.0f} kB" for k, v in sorted(results["bytes_by_kind"].items()))
    (RESULTS / "map.md").write_text(
        "# Map first paint\n\n"
        f"{results['when']}, {len(runs)} cold loads of /map/ (fresh browser context each) over "
        f"database {results['database']} ({results['active_places']:,} active places) in "
        "Debian's Chromium (SwiftShader WebGL), gunicorn with production settings and "
        "compressed static files; load average at start "
        f"{results['load_average_at_start']:.2f}.\n\n"
        "| figure | median | max |\n|---|---|---|\n"
        f"| first points drawn (ms from navigation) | {results['first_points_ms']['median']:,} "
        f"| {results['first_points_ms']['max']:,} |\n"
        "| places drawn and every source loaded, the basemap's included (ms; this benchmark's "
        "figure before 2026-12-04) "
        f"| {results['all_sources_ms']['median']:,} | {results['all_sources_ms']['max']:,} |\n"
        f"| map idle (ms) | {results['idle_ms']['median']:,} | {results['idle_ms']['max']:,} |\n\n"
        f"Bytes transferred: {results['bytes'] / 1e3:,.0f} kB in {results['requests']} "
        f"requests ({kinds}); external requests: {results['external_requests']}. Budget: first "
        f"points within {BUDGET_MS} ms: "
        f"{'met' if results['within_budget'] else 'NOT met'}.\n"
    )
    print((RESULTS / "map.md").read_text())


if __name__ == "__main__":
    main()
