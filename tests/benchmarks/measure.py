"""Timing HTTP requests against a running server: one client, or wrk with several.

A single-client figure is the wall time from sending the request to the last body byte, on
a new connection each time (gunicorn's sync workers close the connection after every
answer, as in production), gzip accepted as browsers do. Bytes are as sent on the wire.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROTATE_LUA = Path(__file__).with_name("rotate.lua")
# Long enough for the gunicorn workers' listeners to read a notification (they would not use
# their copies while it waits unread anyway, places.version_watch).
CLEAR_SETTLE_SECONDS = 0.02
GZIP = {"Accept-Encoding": "gzip"}


@dataclass
class Answer:
    ms: float
    status: int
    body: bytes
    headers: dict[str, str]


def fetch(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection(host, port, timeout=900)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers={**GZIP, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        ms = (time.perf_counter() - started) * 1000
        return Answer(ms, response.status, body, {k.lower(): v for k, v in response.getheaders()})
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with few samples p95 is the slowest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarise(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(percentile(samples, 95), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
    }


def timed(
    host: str,
    port: int,
    paths: list[str] | str,
    *,
    samples: int,
    before: Callable[[], None] | None = None,
    warmup: int = 1,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Median and p95 of ``samples`` requests (rotating through ``paths``), after ``warmup``
    untimed ones; ``before`` runs untimed before each request (e.g. emptying the cache)."""
    paths = [paths] if isinstance(paths, str) else paths
    for i in range(warmup):
        fetch(host, port, paths[i % len(paths)], headers)
    times, sizes, encodings, answers = [], [], set(), []
    for i in range(samples):
        path = paths[i % len(paths)]
        if before:
            before()
        answer = fetch(host, port, path, headers)
        if answer.status != 200:
            raise RuntimeError(f"{path}: HTTP {answer.status}: {answer.body[:300]!r}")
        times.append(answer.ms)
        sizes.append(len(answer.body))
        encodings.add(answer.headers.get("content-encoding", "identity"))
        answers.append(answer)
    return {
        **summarise(times),
        "bytes": round(statistics.median(sizes)),
        "encoding": ",".join(sorted(encodings)),
        "last": answers[-1],
    }


def wrk(
    host: str,
    port: int,
    paths: list[str],
    *,
    connections: int,
    threads: int,
    seconds: int,
) -> dict[str, Any]:
    """Run wrk for ``seconds`` with ``connections`` clients rotating through ``paths``."""
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as fh:
        fh.write("\n".join(paths) + "\n")
        paths_file = fh.name
    try:
        result = subprocess.run(
            [
                "wrk",
                f"--threads={threads}",
                f"--connections={connections}",
                f"--duration={seconds}s",
                "--timeout=10s",
                f"--script={ROTATE_LUA}",
                f"http://{host}:{port}/",
            ],
            env={**os.environ, "WRK_PATHS": paths_file, "WRK_THREADS": str(threads)},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(paths_file)
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds_run = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "connections": connections,
        "seconds": round(seconds_run, 1),
        "requests": raw["requests"],
        "requests_per_second": round(raw["requests"] / seconds_run),
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p95_ms": round(raw["p95_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "max_ms": round(raw["max_us"] / 1000, 1),
        "errors": errors,
        "non_2xx": raw["errors_status"],
        "distinct_paths": len(set(paths)),
    }


# What each kind of process on the machine is, by its name or command line: the CPU a wrk run
# costs is read per kind (every PostgreSQL process of the machine counts, so nothing else
# should run meanwhile).
CPU_KINDS = ("postgres", "gunicorn", "redis")


def _cpu_seconds_by_kind() -> dict[str, float]:
    """CPU seconds so far of the machine's PostgreSQL, gunicorn and Redis processes, by kind:
    each one's user and system time and that of its children it has reaped
    (``/proc/<pid>/stat`` utime, stime, cutime, cstime). A backend or worker that ends is
    reaped by the postmaster or gunicorn's master, whose children's time then holds it: the
    kind's total never falls when a process ends, and one that lived only during a run
    still counts."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(CPU_KINDS, 0.0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = sum(int(value) for value in fields[11:15]) / tick
        if name.startswith("postgres") or command.startswith(b"postgres:"):
            totals["postgres"] += seconds
        elif b"gunicorn" in command:
            totals["gunicorn"] += seconds
        elif name.startswith("redis"):
            totals["redis"] += seconds
    return totals


def wrk_with_cpu(host: str, port: int, paths: list[str], **options: Any) -> dict[str, Any]:
    """``wrk``, plus the CPU each kind of process spent per request meanwhile
    (``cpu_ms_per_request``: PostgreSQL, gunicorn, Redis and wrk itself, in ms): where a
    request's cost goes when two cores are shared by all of them. A process that ends
    during the run without a parent of its kind to reap it (none here) would go uncounted."""
    before = _cpu_seconds_by_kind()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = wrk(host, port, paths, **options)
    after = _cpu_seconds_by_kind()
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = {kind: after[kind] - before[kind] for kind in CPU_KINDS}
    # wrk is this process's child: its CPU is in the children's usage once it was waited for.
    spent["wrk"] = (waited.ru_utime + waited.ru_stime) - (children.ru_utime + children.ru_stime)
    requests = max(result["requests"], 1)
    result["cpu_ms_per_request"] = {
        kind: round(seconds / requests * 1000, 3) for kind, seconds in spent.items()
    }
    return result


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """Top-level protobuf fields of a message: (field number, bytes or integer)."""
    found, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            found.append((number, value))
        elif wire == 2:
            length, pos = _varint(data, pos)
            found.append((number, data[pos : pos + length]))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return found


def mvt_features(tile: bytes) -> dict[str, int]:
    """Features per layer of a Mapbox Vector Tile (layers are field 3, a layer's name field 1,
    its features field 2), so that two servers' tiles can be checked to carry the same."""
    counts = {}
    for number, layer in _fields(tile):
        if number == 3 and isinstance(layer, bytes):
            fields = _fields(layer)
            name = next(v for n, v in fields if n == 1)
            counts[bytes(name).decode()] = sum(1 for n, _ in fields if n == 2)
    return counts


def caches_emptied(redis_client: Any, database_url: str) -> None:
    """Empty the served app's Redis cache and every gunicorn worker's copy of recent bodies
    (``places.serving.local_cache``), so that the next answer is built: a worker keeps its
    copy across a Redis flush until told by ``NOTIFY places_data_versions, 'clear'``."""
    import psycopg

    from tests.benchmarks.load import _connect_params

    redis_client.flushdb()
    with psycopg.connect(**_connect_params(database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_notify('places_data_versions', 'clear')")
    time.sleep(CLEAR_SETTLE_SECONDS)
