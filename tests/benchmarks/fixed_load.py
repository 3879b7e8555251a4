"""The load run: wrk at a fixed concurrency through nginx, as ``bin/run`` serves one server.

Three runs of ``seconds`` each with ``connections`` clients (twice gunicorn's 2 x 4 threads,
so requests also queue), each rotating through its own set of paths, after one untimed pass
over them (the cache warm, as a busy map finds it):

- **list**: ``places/`` pages of up to 1,000 features (the anonymous maximum) for the small
  views, GeoJSON;
- **viewport**: the same small views, binary;
- **tile**: the densest zoom-10 tile's 16 zoom-12 children and itself.

A run counts as clean with 0 errors: no socket error, timeout or status other than 2xx/3xx.
"""

from __future__ import annotations

from typing import Any

from tests.benchmarks import measure, picks


def paths(*, small: list[picks.Box], tile: picks.Tile) -> dict[str, list[str]]:
    children = [
        f"/tiles/places/12/{x}/{y}.pbf"
        for x in range(tile.x * 4, tile.x * 4 + 4)
        for y in range(tile.y * 4, tile.y * 4 + 4)
    ]
    return {
        "list": [f"/api/v1/places/?bbox={b.text}&limit=1000" for b in small],
        "viewport": [f"/api/v1/viewport/?bbox={b.text}&zoom={b.zoom}&format=bin" for b in small],
        "tile": [f"/tiles/places/{tile.path}.pbf", *children],
    }


def run(
    *, host: str, port: int, runs: dict[str, list[str]], connections: int, seconds: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, rotation in runs.items():
        # One untimed pass: every path answered once, so the run measures warm serving.
        measure.timed(host, port, rotation, samples=len(rotation), warmup=0)
        results[name] = measure.wrk(
            host, port, rotation, connections=connections, threads=2, seconds=seconds
        )
    return results


def markdown(load: dict[str, Any]) -> list[str]:
    lines = [
        f"Load run through nginx (wrk, {load['connections']} connections, "
        f"{load['seconds']} s each, cache warm):",
        "",
        "| endpoint | paths | requests | req/s | p50 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in load["runs"].items():
        lines.append(
            f"| {name} | {run['distinct_paths']} | {run['requests']} | "
            f"{run['requests_per_second']} | {run['p50_ms']} | {run['p99_ms']} | "
            f"{run['max_ms']} | {run['errors']} |"
        )
    return lines
