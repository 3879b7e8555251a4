"""Replica lag under an import, and how long a committed write takes to be readable there.

``make bench`` runs it after the analytics figures; results in ``results/replica_lag.{json,md}``.
On a database of its own (``BENCH_LAG_DATABASE_URL``, default ``…/places_bench_lag``, made
afresh, with the sample regions), which the streaming replica of ``bin/replica-up`` copies
like every database of the cluster, a first import of ``--rows`` generated rows runs in a
child process (the real importer, two connections) while this process, every
``--interval`` seconds:

- reads the replica's lag on the primary (``pg_stat_replication``: bytes between the
  primary's current WAL position and the replica's replay position, and ``replay_lag``);
- commits one row to a probe table on the primary and polls the replica (every 2 ms) until
  that row is visible there: write-to-visible, what a researcher's read after a write waits.

The same is measured idle for ``--idle-seconds`` before the import, for contrast. Without
``REPLICA_DATABASE_URL`` (or ``--replica-url``) there is nothing to measure and it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("results")
DEFAULT_DB = "postgis://postgres@127.0.0.1:5432/places_bench_lag"
VISIBLE_TIMEOUT = 30.0


def _dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def _replica_url(url: str, replica_base: str) -> str:
    """The benchmark database's name on the replica's server."""
    name = url.rsplit("/", 1)[1]
    return replica_base.rsplit("/", 1)[0] + "/" + name


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p99": round(_percentile(values, 99), 2),
        "max": round(max(values), 2),
    }


class Sampler:
    """Lag and write-to-visible samples, one round every ``interval`` seconds."""

    def __init__(self, primary: str, replica: str, interval: float) -> None:
        self.primary = psycopg.connect(_dsn(primary), autocommit=True)
        self.replica = psycopg.connect(_dsn(replica), autocommit=True)
        self.interval = interval
        self.primary.execute(
            "CREATE TABLE IF NOT EXISTS bench_lag_probe (id bigserial PRIMARY KEY, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        self._wait_visible("SELECT to_regclass('bench_lag_probe') IS NOT NULL", ())

    def _wait_visible(self, sql: str, params: tuple) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < VISIBLE_TIMEOUT:
            row = self.replica.execute(sql, params).fetchone()
            if row and row[0]:
                return (time.perf_counter() - started) * 1000
            time.sleep(0.002)
        raise TimeoutError(f"not visible on the replica after {VISIBLE_TIMEOUT} s")

    def one_round(self) -> dict[str, float | None]:
        lag = self.primary.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), "
            "extract(epoch FROM replay_lag) * 1000 FROM pg_stat_replication "
            "ORDER BY replay_lsn LIMIT 1"
        ).fetchone()
        started = time.perf_counter()
        (probe,) = self.primary.execute(
            "INSERT INTO bench_lag_probe DEFAULT VALUES RETURNING id"
        ).fetchone()
        committed = (time.perf_counter() - started) * 1000
        visible = self._wait_visible("SELECT 1 FROM bench_lag_probe WHERE id = %s", (probe,))
        return {
            "lag_bytes": float(lag[0]) if lag and lag[0] is not None else None,
            "replay_lag_ms": float(lag[1]) if lag and lag[1] is not None else None,
            "commit_ms": committed,
            "write_to_visible_ms": committed + visible,
        }

    def run(self, until: threading.Event | float) -> list[dict[str, float | None]]:
        rounds = []
        while True:
            if isinstance(until, threading.Event):
                if until.is_set():
                    break
            elif time.monotonic() >= until:
                break
            rounds.append(self.one_round())
            time.sleep(self.interval)
        return rounds


def _figures(rounds: list[dict[str, float | None]]) -> dict[str, Any]:
    def column(key: str) -> list[float]:
        return [r[key] for r in rounds if r[key] is not None]  # type: ignore[misc]

    return {
        "rounds": len(rounds),
        "lag_kib": _summary([b / 1024 for b in column("lag_bytes")]),
        "replay_lag_ms": _summary(column("replay_lag_ms")),
        "write_to_visible_ms": _summary(column("write_to_visible_ms")),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the import")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between rounds")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--replica-url", default=os.environ.get("REPLICA_DATABASE_URL", ""))
    args = parser.parse_args(argv)
    if not args.replica_url:
        print("replica_lag: no REPLICA_DATABASE_URL (bin/replica-up): nothing to measure")
        return
    url = os.environ.get("BENCH_LAG_DATABASE_URL", DEFAULT_DB)
    os.environ["BENCH_DATABASE_URL"] = url
    sys.path.insert(0, str(ROOT))
    from tests.benchmarks import imports

    imports._fresh_database()
    imports._prepare()
    sampler = Sampler(url, _replica_url(url, args.replica_url), args.interval)
    idle = sampler.run(time.monotonic() + args.idle_seconds)

    media = tempfile.mkdtemp(prefix="places-bench-lag-")
    with tempfile.TemporaryDirectory(prefix="places-bench-lag-") as folder:
        path = imports.generate_csv(Path(folder) / "lag.csv", rows=args.rows)
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def load() -> None:
            try:
                outcome["import"] = imports._child("import", path, "bench-lag", media)
            finally:
                done.set()

        worker = threading.Thread(target=load)
        started = time.perf_counter()
        worker.start()
        loaded = sampler.run(done)
        worker.join()
        seconds = time.perf_counter() - started
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": args.rows,
        "import_seconds": round(seconds, 1),
        "interval_s": args.interval,
        "idle": _figures(idle),
        "during_import": _figures(loaded),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replica_lag.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "replica_lag.md").write_text(text)
    sys.stdout.write(text)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Replica lag ({results['date']})",
        "",
        f"A first import of {results['rows']:,} generated rows ({results['import_seconds']} s) "
        f"on the primary; one round every {results['interval_s']} s: the replica's lag "
        "(pg_stat_replication) and a committed probe row's time until the replica shows it. "
        f"Load average after: {', '.join(map(str, results['load_average_after']))}.",
        "",
        "| figure | idle p50 | idle p99 | import p50 | import p99 | import max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in [
        ("lag_kib", "lag, KiB of WAL not yet replayed"),
        ("replay_lag_ms", "replay_lag, ms"),
        ("write_to_visible_ms", "write-to-visible, ms"),
    ]:
        idle, busy = results["idle"][key], results["during_import"][key]
        lines.append(
            f"| {label} | {idle.get('p50', '')} | {idle.get('p99', '')} | "
            f"{busy.get('p50', '')} | {busy.get('p99', '')} | {busy.get('max', '')} |"
        )
    rounds = (results["idle"]["rounds"], results["during_import"]["rounds"])
    lines += ["", f"Rounds: {rounds[0]} idle, {rounds[1]} during the import."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
