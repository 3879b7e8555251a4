"""Serving for ``ab.py``: the same requests to A's and B's gunicorn, in alternating rounds.

Both servers read one database and share one Redis database. Before the rounds each server
answers every request a few times, untimed (each worker's first answers pay for lazy imports
and connections). A round of one side is an
untimed warm-up request (PostgreSQL's buffers warm; for a cached figure, the cache entry it
then reads) and ``samples`` timed ones; uncached means the Redis database is emptied before
each timed request. Every request's rounds run A, B, A, B, … before the next request, so
both sides of a comparison are measured minutes apart at most. Afterwards each side is asked
every request once more and the bodies compared byte for byte (gzip undone, and each
server's own address in links written alike).

Then, unless ``wrk_rounds`` is 0, throughput: four clients (wrk) on 200 views of about 1,000
places, as ``make bench`` measures them (``serving.py``), in alternating rounds: each round
of a side runs ``/health/live/`` (the floor), the views uncached (every request a box no one
asked for before, on either side), the views cached, and the floor again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from tests.benchmarks import measure, picks
from tests.benchmarks.ab_compare import Tree, compare_sides
from tests.benchmarks.servers import Server, gunicorn_server, worker_peak_rss_kib
from tests.benchmarks.serving import four_clients

logger = logging.getLogger("bench")


@dataclass(frozen=True)
class Probe:
    key: str
    label: str
    path: str
    cached: bool


def probes(*, box_places: int) -> tuple[list[Probe], list[Probe], dict[str, Any]]:
    """The timed requests, those only compared, and what was picked: boxes and tiles chosen
    from the loaded places as ``make bench`` chooses them (Django must point at the serving
    database)."""
    lon, lat = picks.positions()
    big = picks.box_holding(lon, lat, places=box_places)
    legal = picks.densest_square(lon, lat, cells=round(picks.LEGAL_SIDE / picks.CELL))
    tile = picks.densest_tile(lon, lat, z=10)
    parent = picks.tile_at(lon, lat, z=7, x=tile.x >> 3, y=tile.y >> 3)
    region = f"4/{tile.x >> 6}/{tile.y >> 6}"
    chosen = {
        "big_box": {**big.as_dict(), "tiles_across_at_zoom_10": big.tiles_across},
        "densest_legal_view": legal.as_dict(),
        "dense_tile": {"tile": tile.path, "places": tile.places},
        "cluster_tile": {"tile": parent.path, "places": parent.places},
        "region_tile": {"tile": region, "level": "country"},
    }
    view = f"/api/v1/viewport/?bbox={big.text}&zoom={big.zoom}"
    # B lists active places unless told otherwise, A every status: asked alike of both.
    page = f"/api/v1/places/?bbox={big.text}&limit=1000"
    one_answer = min(big.places, settings.PLACES_API_MAX_PAGE_SIZE)
    specs = [
        # First: its warm-up is the first thing each server answers, so the workers' peak
        # RSS read right after it is what answering it costs.
        (
            "places_big",
            f"places/ {one_answer:,} features in one answer, GeoJSON",
            f"/api/v1/places/?bbox={big.text}&limit={one_answer}&status=active",
        ),
        ("viewport_bin", f"viewport, {big.places:,}-place box, binary", f"{view}&format=bin"),
        (
            "legal_view_bin",
            f"viewport, densest zoom-10 view ({legal.places:,} places), binary",
            f"/api/v1/viewport/?bbox={legal.text}&zoom={legal.zoom}&format=bin",
        ),
        ("tile_dense", f"tile {tile.path} (places)", f"/tiles/places/{tile.path}.pbf"),
        ("tile_clusters", f"tile {parent.path} (clusters)", f"/tiles/places/{parent.path}.pbf"),
        ("places_page", "places/ 1,000 features, status=active", f"{page}&status=active"),
        (
            "region_tile",
            f"region tile {region} (countries)",
            f"/tiles/regions/{region}.pbf?level=country",
        ),
    ]
    timed = [
        Probe(f"{key}_{kind}", f"{label}, {kind}", path, kind == "cached")
        for key, label, path in specs
        for kind in ("uncached", "cached")
        # Neither is stored (free-form queries over the size limit): no cached figure.
        if not (key in ("legal_view_bin", "places_big") and kind == "cached")
    ]
    floor = "floor: /health/live/ (no database or cache)"
    timed.append(Probe("floor_health", floor, "/health/live/", cached=True))
    compared = [
        Probe("places_page_default_status", "places/ 1,000 features, no status", page, False),
        Probe("viewport_json", "viewport, big box, JSON", f"{view}&format=json", False),
        Probe("tilejson_places", "TileJSON of the places", "/tiles/places.json", False),
    ]
    return timed, compared, chosen


def _peak_rss_mib(servers: dict[str, Server]) -> dict[str, int]:
    """The highest peak RSS (VmHWM) among each side's workers, in MiB."""
    return {side: max(worker_peak_rss_kib(s.pid)) // 1024 for side, s in servers.items()}


def _decoded(answer: measure.Answer) -> bytes:
    if answer.headers.get("content-encoding") == "gzip":
        return gzip.decompress(answer.body)
    return answer.body


def _round(server: Server, probe: Probe, *, samples: int, flush: Callable[[], Any]) -> list[float]:
    """One round of one side: an untimed warm-up, then ``samples`` timed requests."""
    flush()
    measure.fetch(server.host, server.port, probe.path)
    times = []
    for _ in range(samples):
        if not probe.cached:
            flush()
        answer = measure.fetch(server.host, server.port, probe.path)
        if answer.status != 200:
            raise RuntimeError(f"{server.name} {probe.path}: HTTP {answer.status}")
        times.append(answer.ms)
    return times


def _json_differences(a: Any, b: Any, where: str, found: list[str], limit: int = 8) -> None:
    """The first ``limit`` paths where two JSON values part."""
    if len(found) >= limit or a == b:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        if only_a or only_b:
            found.append(f"{where or '.'}: keys only in A {only_a}, only in B {only_b}")
        for key in sorted(a.keys() & b.keys()):
            _json_differences(a[key], b[key], f"{where}.{key}", found, limit)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _json_differences(x, y, f"{where}[{i}]", found, limit)
    else:
        found.append(f"{where or '.'}: A {json.dumps(a)[:80]}, B {json.dumps(b)[:80]}")


def _difference(a: bytes, b: bytes, path: str) -> dict[str, Any]:
    """Where two bodies part: sizes, first byte, then the JSON paths or the tiles' features
    per layer."""
    first = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    out: dict[str, Any] = {
        "same": False,
        "bytes_a": len(a),
        "bytes_b": len(b),
        "first_difference_at": first,
    }
    if path.split("?")[0].endswith(".pbf"):
        out["features"] = {"A": measure.mvt_features(a), "B": measure.mvt_features(b)}
        return out
    try:
        found: list[str] = []
        _json_differences(json.loads(a), json.loads(b), "", found)
        out["json_differences"] = found
    except ValueError:
        pass
    return out


def _answer(server: Server, path: str) -> bytes:
    """The body, with the server's own address (in links, on its own port) written alike."""
    body = _decoded(measure.fetch(server.host, server.port, path))
    return body.replace(f"{server.host}:{server.port}".encode(), b"server")


def _answers_compared(servers: dict[str, Server], asked: list[Probe]) -> dict[str, Any]:
    out = {}
    for probe in asked:
        a, b = (_answer(server, probe.path) for server in servers.values())
        out[probe.key] = (
            {"same": True, "bytes": len(a)} if a == b else _difference(a, b, probe.path)
        )
        if a != b:
            logger.warning("%s: A and B answer differently: %s", probe.key, out[probe.key])
    return out


def _which_code(trees: dict[str, Tree], servers: dict[str, Server]) -> dict[str, Any]:
    """Evidence that each server runs its own tree: its working directory (first on its
    ``sys.path``) and a digest of the OpenAPI schema it generates."""
    out = {}
    for side, server in servers.items():
        schema = measure.fetch(server.host, server.port, "/api/schema/?format=json")
        out[side] = {
            "cwd": os.readlink(f"/proc/{server.pid}/cwd"),
            "schema_sha256": hashlib.sha256(_decoded(schema)).hexdigest()[:16],
        }
        if out[side]["cwd"] != str(trees[side].root):
            raise RuntimeError(f"server {side} runs in {out[side]['cwd']}, not {trees[side].root}")
    return out


def _row(probe: Probe, by_side: dict[str, list[list[float]]]) -> dict[str, Any]:
    row: dict[str, Any] = {"label": probe.label, "path": probe.path}
    for side, rounds in by_side.items():
        pooled = [t for r in rounds for t in r]
        row[side] = {
            "n": len(pooled),
            "p50_ms": round(statistics.median(pooled), 1),
            "p95_ms": round(measure.percentile(pooled, 95), 1),
            # Two decimals: at a millisecond or so, tenths would hide the noise itself.
            "round_p50_ms": [round(statistics.median(r), 2) for r in rounds],
        }
    a, b = row["A"], row["B"]
    return row | compare_sides(
        a_rounds=a["round_p50_ms"], b_rounds=b["round_p50_ms"], a=a["p50_ms"], b=b["p50_ms"]
    )


# The throughput rounds' small views: as many as ``make bench`` rotates through, of about as
# many places, and the seed it picks them with.
SMALL_VIEWS = 200
SMALL_VIEW_PLACES = 1_000
SMALL_VIEW_SEED = 20_240_601


def small_view_boxes() -> list[picks.Box]:
    """The 1K-place views of ``make bench``'s four-client runs."""
    lon, lat = picks.positions()
    return picks.boxes_of_about(
        lon, lat, places=SMALL_VIEW_PLACES, count=SMALL_VIEWS, seed=SMALL_VIEW_SEED
    )


def _throughput_round(
    server: Server, small: list[picks.Box], *, box_set: int, seconds: int, flush: Callable[[], Any]
) -> dict[str, Any]:
    """One side's round, as ``make bench`` runs its four clients (``serving.four_clients``),
    with each view run's share of the mean of the round's two floors."""
    out = four_clients(
        server.host, server.port, small, seconds=seconds, flush=flush, box_set=box_set
    )
    floor = (
        out["floor_before"]["requests_per_second"] + out["floor_after"]["requests_per_second"]
    ) / 2
    for kind in ("uncached", "cached"):
        out[kind]["share_of_floor"] = round(out[kind]["requests_per_second"] / floor, 3)
    return out


def _throughput_rows(by_side: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per kind (floor, uncached, cached): each side's req/s and share of the floor per round,
    and B against A on seconds per request (lower is better, as for the timed requests)."""
    rows: dict[str, Any] = {}
    for kind in ("floor", "uncached", "cached"):
        per_side: dict[str, Any] = {}
        for side, rounds in by_side.items():
            if kind == "floor":
                rps = [
                    (
                        r["floor_before"]["requests_per_second"]
                        + r["floor_after"]["requests_per_second"]
                    )
                    / 2
                    for r in rounds
                ]
                shares: list[float] = []
            else:
                rps = [r[kind]["requests_per_second"] for r in rounds]
                shares = [r[kind]["share_of_floor"] for r in rounds]
            per_side[side] = {
                "round_requests_per_second": rps,
                "requests_per_second": round(statistics.median(rps)),
                "round_share_of_floor": shares,
                "share_of_floor": round(statistics.median(shares), 3) if shares else None,
                "round_p95_ms": [r[kind]["p95_ms"] for r in rounds] if kind != "floor" else [],
                "cpu_ms_per_request": (
                    {
                        k: round(
                            statistics.median(r[kind]["cpu_ms_per_request"][k] for r in rounds), 3
                        )
                        for k in rounds[0][kind]["cpu_ms_per_request"]
                    }
                    if kind != "floor"
                    else {}
                ),
            }
        a, b = per_side["A"], per_side["B"]
        seconds_a = [1 / x for x in a["round_requests_per_second"]]
        seconds_b = [1 / x for x in b["round_requests_per_second"]]
        rows[kind] = {
            **per_side,
            **compare_sides(
                a_rounds=seconds_a,
                b_rounds=seconds_b,
                a=statistics.median(seconds_a),
                b=statistics.median(seconds_b),
            ),
        }
    return rows


def run(
    *,
    trees: dict[str, Tree],
    database_url: str,
    redis_url: str,
    workers: int,
    rounds: int,
    samples: int,
    box_places: int,
    wrk_rounds: int = 0,
    wrk_seconds: int = 8,
) -> dict[str, Any]:
    import redis

    cache = redis.Redis.from_url(redis_url)
    timed, compared, chosen = probes(box_places=box_places)
    logger.info("picked: %s", json.dumps(chosen))
    across = chosen["big_box"]["tiles_across_at_zoom_10"]
    # The big box may be wider than a client may ask for; both URLconfs honour this.
    extra_env = {"BENCH_VIEWPORT_MAX_TILES": str(across)} if across > picks.MAX_TILES_ACROSS else {}
    log_dir = Path(tempfile.mkdtemp(prefix="places-ab-logs-"))
    times: dict[str, dict[str, list[list[float]]]] = {}
    with ExitStack() as stack:
        servers = {
            side: stack.enter_context(
                gunicorn_server(
                    database_url=database_url,
                    redis_url=redis_url,
                    workers=workers,
                    log_dir=log_dir,
                    extra_env=extra_env,
                    cwd=tree.root,
                    name=f"gunicorn-{side}",
                )
            )
            for side, tree in trees.items()
        }
        code = _which_code(trees, servers)
        # Each worker's first answers pay for lazy imports and connections: not measured.
        # The workers' peak RSS is read at start and after each request's warm-up (a high
        # water mark: each reading includes every request before it).
        rss_mib = {"at start": _peak_rss_mib(servers)}
        for probe in timed:
            for server in servers.values():
                for _ in range(2 * workers):
                    measure.fetch(server.host, server.port, probe.path)
            rss_mib[f"after {probe.key}"] = _peak_rss_mib(servers)
        for probe in timed:
            times[probe.key] = {side: [] for side in servers}
            for _ in range(rounds):
                for side, server in servers.items():
                    times[probe.key][side].append(
                        _round(
                            server,
                            probe,
                            samples=samples,
                            flush=lambda: measure.caches_emptied(cache, database_url),
                        )
                    )
            row = _row(probe, times[probe.key])
            logger.info("%s: A %s ms, B %s ms", probe.key, row["A"]["p50_ms"], row["B"]["p50_ms"])
        measure.caches_emptied(cache, database_url)
        answers = _answers_compared(servers, timed + compared)
        rss = {side: worker_peak_rss_kib(server.pid) for side, server in servers.items()}
        throughput: dict[str, list[dict[str, Any]]] = {side: [] for side in servers}
        small = small_view_boxes() if wrk_rounds else []
        for number in range(wrk_rounds):
            # A first in even rounds, B first in odd ones: neither side always follows the other.
            order = list(servers.items()) if number % 2 == 0 else list(servers.items())[::-1]
            for side, server in order:
                throughput[side].append(
                    _throughput_round(
                        server,
                        small,
                        box_set=2 * number + (side == "B"),
                        seconds=wrk_seconds,
                        flush=lambda: measure.caches_emptied(cache, database_url),
                    )
                )
                logger.info(
                    "wrk round %s %s: uncached %s, cached %s req/s",
                    number + 1,
                    side,
                    throughput[side][-1]["uncached"]["requests_per_second"],
                    throughput[side][-1]["cached"]["requests_per_second"],
                )
    return {
        "picked": chosen,
        "code": code,
        "requests": {probe.key: _row(probe, times[probe.key]) for probe in timed},
        "answers": answers,
        "worker_peak_rss_mib": {side: [kib // 1024 for kib in v] for side, v in rss.items()},
        "worker_peak_rss_mib_after": rss_mib,
        "throughput": (
            {"rounds": throughput, "compared": _throughput_rows(throughput)} if wrk_rounds else None
        ),
        "log_dir": str(log_dir),
    }
