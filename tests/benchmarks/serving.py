"""The serving benchmark: our endpoints over HTTP through gunicorn, then the two baselines.

"Uncached" means the bench's Redis database (the app's cache, nothing else) is emptied
before each timed request, so every answer is built again from PostgreSQL; the SQL is the
same as for a first visitor. PostgreSQL's own buffers stay warm (one untimed request first).
Under wrk, where nothing can run between requests, each request asks for a box moved by a
fraction of a metre instead (another cache key, the same rows), and the cache's size
afterwards shows that every request was a miss.

The big GeoJSON page (100,000 features) is timed beside its floors, request by request: the
same features' JSON written by PostgreSQL and fetched by psycopg in this process, once as
one statement (the page built whole) and once as the streamed page's own statements. The
gunicorn workers' peak RSS is read before and after it.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import struct
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psycopg
import redis

from places.geo import parse_bbox
from places.serving import features
from places.serving.fields import PROPERTIES
from places.serving.query import PlaceQuery
from tests.benchmarks import fixed_load, measure, picks
from tests.benchmarks.servers import (
    Server,
    gunicorn_server,
    nginx_server,
    tipg_server,
    worker_peak_rss_kib,
)

logger = logging.getLogger("bench")
TIPG_COLLECTION = "public.places_place"
# The places' point (tipg would otherwise pick the first geometry column, the footprint) and
# the properties ours return, so that both answers carry the same.
TIPG_PARAMS = "geom-column=location&properties=name,religion,dataset_id"
LIMIT_CANDIDATES = (1_000_000, 200_000, 100_000, 50_000, 20_000, 10_000, 5_000, 1_000)


def _body(answer: measure.Answer) -> bytes:
    if answer.headers.get("content-encoding") == "gzip":
        return gzip.decompress(answer.body)
    return answer.body


def _viewport_points(answer: measure.Answer) -> int:
    body = _body(answer)
    if body[:4] == b"PLV1":
        kind, n = struct.unpack_from("<B3xI", body, 4)
        if kind != 0:
            raise RuntimeError("the viewport answered clusters where points were expected")
        return n
    data = json.loads(body)
    if data.get("kind") != "points":
        raise RuntimeError("the viewport answered clusters where points were expected")
    return len(data["ids"])


def _features(answer: measure.Answer) -> int:
    data = json.loads(_body(answer))
    return len(data["features"]) if isinstance(data, dict) else len(data)


def _mvt_features(answer: measure.Answer) -> int:
    return sum(measure.mvt_features(_body(answer)).values())


def _next_link(data: dict[str, Any]) -> str | None:
    if data.get("next"):
        return data["next"]
    for link in data.get("links", []):
        if link.get("rel") == "next":
            return link["href"]
    return None


def _largest_limit(host: str, port: int) -> int:
    """The largest ``limit`` places/ accepts (asked on a tiny box, so it costs nothing)."""
    for limit in LIMIT_CANDIDATES:
        answer = measure.fetch(host, port, f"/api/v1/places/?bbox=0,0,0.0001,0.0001&limit={limit}")
        if answer.status == 200:
            return limit
    raise RuntimeError("places/ accepts none of the usual limits")


def _walk_pages(host: str, port: int, first: str, flush: Any) -> dict[str, Any]:
    """Follow ``next`` from the first page to the last; total time, bytes and features."""
    flush()
    path, pages, features, total_ms, total_bytes = first, 0, 0, 0.0, 0
    while path:
        answer = measure.fetch(host, port, path)
        if answer.status != 200:
            raise RuntimeError(f"{path}: HTTP {answer.status}")
        data = json.loads(_body(answer))
        pages += 1
        features += len(data["features"])
        total_ms += answer.ms
        total_bytes += len(answer.body)
        link = _next_link(data)
        path = None
        if link:
            parts = urlsplit(link)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
    return {
        "pages": pages,
        "features": features,
        "total_ms": round(total_ms, 1),
        "bytes": total_bytes,
    }


def _floor_one_statement(query: PlaceQuery, limit: int) -> int:
    """PostgreSQL writes the page's JSON in one statement (the page as built whole),
    fetched by psycopg in this process: no Django view, no gzip, no HTTP. Returns features."""
    page = features.feature_page(
        query=query, properties=list(PROPERTIES), fmt="geojson", after=0, limit=limit
    )
    return page.returned


def _floor_chunks(query: PlaceQuery, limit: int) -> int:
    """The statements of a streamed page alone (ids, then the features' JSON a chunk at a
    time, in one snapshot), fetched by psycopg in this process. Returns features."""
    with features.read_snapshot():
        ids, _ = features.page_ids(query=query, after=0, limit=limit)
        for start in range(0, len(ids), features.CHUNK_FEATURES):
            features.feature_records(
                ids=ids[start : start + features.CHUNK_FEATURES],
                properties=list(PROPERTIES),
                fmt="geojson",
            )
    return len(ids)


# The least any server pays to hand out a view's points: PostgreSQL reads the same places'
# ids, positions and religions and psycopg receives them, binary, in this process (no
# aggregation into columns, no Django, no gzip, no HTTP).
POINTS_FLOOR_SQL = """
SELECT p.id, ST_X(p.location)::float4, ST_Y(p.location)::float4, p.religion
FROM places_place p WHERE {condition}
"""


def _points_floor(query: PlaceQuery, samples: int, database_url: str) -> dict[str, Any]:
    """Median and p95 of reading a box's points as plainly as PostgreSQL can (see above)."""
    condition, params = query.where()
    times = []
    dsn = "postgresql://" + database_url.split("://", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET jit = off")
        for i in range(samples + 1):
            started = time.perf_counter()
            with conn.cursor(binary=True) as cursor:
                cursor.execute(POINTS_FLOOR_SQL.format(condition=condition), params)
                n = len(cursor.fetchall())
            if i:  # the first read is a warm-up, as for every figure
                times.append((time.perf_counter() - started) * 1000)
    return {**measure.summarise(times), "points": n}


def _big_page_against_floors(
    host: str,
    port: int,
    path: str,
    *,
    query: PlaceQuery,
    limit: int,
    samples: int,
    flush: Any,
    tipg: tuple[Server, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Our big GeoJSON page over HTTP, uncached, interleaved request by request with the two
    SQL floors and, given ``tipg`` (its server and path), tipg's answer for the same
    features, after one untimed round: all of them meet the same machine, whatever else
    runs on it."""

    def timed(work: Any) -> tuple[float, Any]:
        started = time.perf_counter()
        result = work()
        return (time.perf_counter() - started) * 1000, result

    def fetched(server_host: str, server_port: int, server_path: str) -> measure.Answer:
        answer = measure.fetch(server_host, server_port, server_path)
        if answer.status != 200:
            raise RuntimeError(f"{server_path}: HTTP {answer.status}: {answer.body[:300]!r}")
        return answer

    times: dict[str, list[float]] = {"ours": [], "one_statement": [], "chunks": [], "tipg": []}
    last: dict[str, Any] = {}
    for i in range(samples + 1):
        flush()
        last["ours"] = fetched(host, port, path)
        round_ms = {"ours": last["ours"].ms}
        round_ms["one_statement"], last["one_statement"] = timed(
            lambda: _floor_one_statement(query, limit)
        )
        round_ms["chunks"], last["chunks"] = timed(lambda: _floor_chunks(query, limit))
        if tipg:
            last["tipg"] = fetched(tipg[0].host, tipg[0].port, tipg[1])
            round_ms["tipg"] = last["tipg"].ms
        if i:  # the first round warms every path
            for key, ms in round_ms.items():
                times[key].append(ms)
    found: dict[str, dict[str, Any]] = {}
    for key in ("ours", "tipg"):
        if times[key]:
            answer = last[key]
            found[key] = {
                **measure.summarise(times[key]),
                "bytes": len(answer.body),
                "encoding": answer.headers.get("content-encoding", "identity"),
                "last": answer,
            }
    for key in ("one_statement", "chunks"):
        found[key] = {**measure.summarise(times[key]), "features": last[key]}
    return found


def _tile_against_tipg(
    host: str, port: int, path: str, *, tipg: Server, tipg_path: str, samples: int, flush: Any
) -> dict[str, dict[str, Any]]:
    """Our tile uncached and tipg's same tile, request by request in the same rounds (each
    first in every other round), after one untimed round: measured minutes apart, the two
    met different machines (on this shared one our p50 moved between 18 and 29 ms from run
    to run, tipg's between 26 and 36)."""
    times: dict[str, list[float]] = {"ours": [], "tipg": []}
    last: dict[str, measure.Answer] = {}
    servers = {"ours": (host, port, path), "tipg": (tipg.host, tipg.port, tipg_path)}
    for i in range(samples + 1):
        flush()
        # Who goes first alternates (A B, B A, ...): neither always meets the machine right
        # after the flush.
        for key in ("ours", "tipg") if i % 2 else ("tipg", "ours"):
            server_host, server_port, server_path = servers[key]
            answer = measure.fetch(server_host, server_port, server_path)
            if answer.status != 200:
                raise RuntimeError(f"{server_path}: HTTP {answer.status}: {answer.body[:300]!r}")
            last[key] = answer
            if i:  # the first round warms both
                times[key].append(answer.ms)
    return {
        key: {
            **measure.summarise(times[key]),
            "bytes": len(last[key].body),
            "encoding": last[key].headers.get("content-encoding", "identity"),
            "last": last[key],
        }
        for key in times
    }


def _row(result: dict[str, Any], label: str, **extra: Any) -> dict[str, Any]:
    result = {k: v for k, v in result.items() if k != "last"}
    return {"label": label, **result, **extra}


# Distinct boxes the four clients' uncached run may ask for: more than they ask for in one.
UNCACHED_BOXES = 30_000


def four_clients(
    host: str,
    port: int,
    small: list[picks.Box],
    *,
    seconds: int,
    flush: Callable[[], Any],
    box_set: int = 0,
    entries_written: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """Four clients at once (wrk, 2 threads, ``seconds`` a run) on the ``small`` views:
    ``/health/live/`` (the floor), the views uncached, the views cached, the floor again;
    the targets compare each view run with the mean of the two floors.

    Uncached, every request is a box no one asked for before: each view moved by its own
    multiple of 1e-7 degrees, ``UNCACHED_BOXES`` of them; ``box_set`` k takes the k-th such
    set, so that runs against one cache (``ab.py``'s rounds) never repeat a box.
    ``entries_written``, if given, is read right after the uncached run (the cache's size:
    every request a miss when it matches the requests)."""
    cached_paths = [f"/api/v1/viewport/?bbox={b.text}&zoom={b.zoom}&format=bin" for b in small]
    shifts = math.ceil(UNCACHED_BOXES / len(small))
    uncached_paths = [
        f"/api/v1/viewport/?bbox={b.shifted((box_set * shifts + j) * 1e-7)}"
        f"&zoom={b.zoom}&format=bin"
        for j in range(1, shifts + 1)
        for b in small
    ]

    def wrk(paths: list[str]) -> dict[str, Any]:
        return measure.wrk_with_cpu(host, port, paths, connections=4, threads=2, seconds=seconds)

    runs = {"floor_before": wrk(["/health/live/"])}
    flush()
    runs["uncached"] = wrk(uncached_paths)
    if entries_written is not None:
        runs["uncached"]["cache_entries_written"] = entries_written()
    measure.timed(host, port, cached_paths, samples=len(cached_paths), warmup=0)
    runs["cached"] = wrk(cached_paths)
    runs["floor_after"] = wrk(["/health/live/"])
    return runs


def run(
    *,
    database_url: str,
    redis_url: str,
    workers: int,
    samples: int,
    slow_samples: int,
    wrk_seconds: int,
    box_places: int,
    small_box_places: int,
    seed: int,
    baselines: bool,
    load_connections: int = 8,
    load_seconds: int = 10,
    only_load_run: bool = False,
) -> dict[str, Any]:
    """Every serving figure, or with ``only_load_run`` the load run alone (``fixed_load``)."""
    cache = redis.Redis.from_url(redis_url)

    def flush() -> None:
        measure.caches_emptied(cache, database_url)

    lon, lat = picks.positions()
    big = picks.box_holding(lon, lat, places=box_places)
    legal = picks.densest_square(lon, lat, cells=round(picks.LEGAL_SIDE / picks.CELL))
    small = picks.boxes_of_about(lon, lat, places=small_box_places, count=200, seed=seed)
    tile = picks.densest_tile(lon, lat, z=10)
    parent = picks.tile_at(lon, lat, z=7, x=tile.x >> 3, y=tile.y >> 3)
    del lon, lat
    chosen = {
        "box_100k": {**big.as_dict(), "tiles_across_at_zoom_10": big.tiles_across},
        "densest_legal_view": legal.as_dict(),
        "small_boxes": {
            "count": len(small),
            "places_median": int(np.median([b.places for b in small])),
            "zooms": sorted({b.zoom for b in small}),
        },
        "dense_tile": {"tile": tile.path, "places": tile.places},
        "cluster_tile": {"tile": parent.path, "places": parent.places},
    }
    logger.info("picked: %s", json.dumps(chosen))
    log_dir = Path(tempfile.mkdtemp(prefix="places-bench-logs-"))
    rows: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"picked": chosen, "requests": rows, "log_dir": str(log_dir)}

    extra_env = {}
    if big.tiles_across > picks.MAX_TILES_ACROSS:
        extra_env["BENCH_VIEWPORT_MAX_TILES"] = str(big.tiles_across)
    flush()
    with gunicorn_server(
        database_url=database_url,
        redis_url=redis_url,
        workers=workers,
        log_dir=log_dir,
        extra_env=extra_env,
    ) as web:
        host, port = web.host, web.port
        out["rss_kib"] = {"at_start": worker_peak_rss_kib(web.pid)}

        def load_run() -> dict[str, Any]:
            with nginx_server(upstream=web, log_dir=log_dir) as proxy:
                runs = fixed_load.paths(small=small, tile=tile)
                return {
                    "connections": load_connections,
                    "seconds": load_seconds,
                    "runs": fixed_load.run(
                        host=proxy.host,
                        port=proxy.port,
                        runs=runs,
                        connections=load_connections,
                        seconds=load_seconds,
                    ),
                }

        if only_load_run:
            out["load"] = load_run()
            out["rss_kib"]["ours"] = worker_peak_rss_kib(web.pid)
            return out

        def ours(path: str, *, cached: bool, n: int = samples, **kw: Any) -> dict[str, Any]:
            return measure.timed(
                host, port, path, samples=n, before=None if cached else flush, **kw
            )

        vp = f"/api/v1/viewport/?bbox={big.text}&zoom={big.zoom}"
        for key, label, path, cached in [
            ("viewport_bin_uncached", "viewport, binary, uncached", vp + "&format=bin", False),
            ("viewport_json_uncached", "viewport, JSON, uncached", vp + "&format=json", False),
            ("viewport_bin_cached", "viewport, binary, cached", vp + "&format=bin", True),
        ]:
            result = ours(path, cached=cached)
            rows[key] = _row(
                result,
                label,
                box="box_100k",
                places=_viewport_points(result["last"]),
                expected=big.places,
            )
        legal_vp = f"/api/v1/viewport/?bbox={legal.text}&zoom={legal.zoom}&format=bin"
        for key, label, cached in [
            ("legal_view_bin_uncached", "densest zoom-10 view, binary, uncached", False),
            ("legal_view_bin_cached", "densest zoom-10 view, binary, cached", True),
        ]:
            result = ours(legal_vp, cached=cached)
            rows[key] = _row(
                result,
                label,
                box="densest_legal_view",
                places=_viewport_points(result["last"]),
                expected=legal.places,
            )
        floor = _points_floor(PlaceQuery(bbox=parse_bbox(legal.text)), samples, database_url)
        rows["legal_view_floor"] = {
            "label": "floor: PostgreSQL reads that view's points (psycopg, binary, no HTTP)",
            "box": "densest_legal_view",
            **floor,
            "places": floor["points"],
            "expected": legal.places,
        }

        limit = _largest_limit(host, port)
        first_page = f"/api/v1/places/?bbox={big.text}&limit={limit}"
        tipg_items = f"/collections/{TIPG_COLLECTION}/items?bbox={big.text}&{TIPG_PARAMS}"
        out["rss_kib"]["before_big_geojson"] = worker_peak_rss_kib(web.pid)
        with ExitStack() as stack:
            # tipg answers the same features in the same rounds: the ratio the issue's
            # target names is then taken under the same load.
            tipg_peer = (
                stack.enter_context(
                    tipg_server(
                        database_url=database_url,
                        workers=workers,
                        max_features_per_query=max(big.places * 2, 10_000),
                        max_features_per_tile=20_000,
                        log_dir=log_dir,
                    )
                )
                if baselines
                else None
            )
            measured = _big_page_against_floors(
                host,
                port,
                first_page,
                query=PlaceQuery(bbox=parse_bbox(big.text)),
                limit=limit,
                samples=max(slow_samples, min(samples, 5)),
                flush=flush,
                tipg=(tipg_peer, f"{tipg_items}&limit={limit}") if tipg_peer else None,
            )
            tile_pair = (
                _tile_against_tipg(
                    host,
                    port,
                    f"/tiles/places/{tile.path}.pbf",
                    tipg=tipg_peer,
                    tipg_path=f"/collections/{TIPG_COLLECTION}/tiles/WebMercatorQuad/"
                    f"{tile.path}?{TIPG_PARAMS}",
                    samples=samples,
                    flush=flush,
                )
                if tipg_peer
                else None
            )
        # The worker that answered the big page (and only such pages so far, besides the
        # views and the dense tile) shows what answering it costs in memory (a peak).
        out["rss_kib"]["after_big_geojson"] = worker_peak_rss_kib(web.pid)
        result = measured["ours"]
        rows["places_first_page_uncached"] = _row(
            result,
            f"places/ GeoJSON, first page (limit {limit}), uncached",
            box="box_100k",
            features=_features(result["last"]),
            limit=limit,
            expected=min(limit, big.places),
        )
        if "tipg" in measured:
            rows["tipg_items_interleaved"] = _row(
                measured["tipg"],
                f"baseline: tipg items (limit {limit}), in the same rounds as ours",
                box="box_100k",
                features=_features(measured["tipg"]["last"]),
                expected=min(limit, big.places),
            )
        if tile_pair:
            rows["tile_dense_uncached_interleaved"] = _row(
                tile_pair["ours"],
                f"tile {tile.path} (places), uncached, in the same rounds as tipg's",
                places=tile.places,
                features=_mvt_features(tile_pair["ours"]["last"]),
            )
            rows["tipg_tile_interleaved"] = _row(
                tile_pair["tipg"],
                f"baseline: tipg tile {tile.path}, in the same rounds as ours",
                places=tile.places,
                features=_mvt_features(tile_pair["tipg"]["last"]),
                expected=tile.places,
            )
        for key, label in [
            ("one_statement", "floor: PostgreSQL writes that page's JSON, one statement"),
            ("chunks", "floor: the streamed page's statements alone (ids, then chunks)"),
        ]:
            rows[f"places_floor_{key}"] = _row(
                measured[key],
                f"{label} (psycopg, no HTTP)",
                box="box_100k",
                expected=min(limit, big.places),
            )
        walk = _walk_pages(host, port, first_page, flush)
        rows["places_all_pages_uncached"] = {
            "label": f"places/ GeoJSON, all {walk['pages']} pages of {limit}, uncached",
            "box": "box_100k",
            "p50_ms": walk["total_ms"],
            "n": 1,
            **walk,
            "expected": big.places,
        }

        for key, label, t, cached in [
            ("tile_dense_uncached", f"tile {tile.path} (places), uncached", tile, False),
            ("tile_dense_cached", f"tile {tile.path} (places), cached", tile, True),
            ("tile_clusters_uncached", f"tile {parent.path} (clusters), uncached", parent, False),
            ("tile_clusters_cached", f"tile {parent.path} (clusters), cached", parent, True),
        ]:
            result = ours(f"/tiles/places/{t.path}.pbf", cached=cached)
            # A cluster tile's features are clusters: it covers the places, not them.
            counted = "clusters" if t.z < 10 else "features"
            rows[key] = _row(
                result, label, places=t.places, **{counted: _mvt_features(result["last"])}
            )
        rows["tilejson"] = _row(ours("/tiles/places.json", cached=True), "TileJSON")
        # The floor under every figure: gunicorn, Django's middleware, no database or cache.
        rows["floor_health"] = _row(ours("/health/live/", cached=True), "floor: /health/live/")

        small_paths = [f"/api/v1/viewport/?bbox={b.text}&zoom={b.zoom}&format=bin" for b in small]
        result = ours(small_paths, cached=False, n=max(samples, 50))
        rows["small_bin_uncached"] = _row(result, "1K-place views, binary, uncached, 1 client")
        result = ours(small_paths, cached=True, n=max(samples, 50), warmup=len(small_paths))
        rows["small_bin_cached"] = _row(result, "1K-place views, binary, cached, 1 client")

        concurrency = four_clients(
            host,
            port,
            small,
            seconds=wrk_seconds,
            flush=flush,
            entries_written=cache.dbsize,
        )
        out["concurrency"] = concurrency
        out["load"] = load_run()
        out["rss_kib"]["ours"] = worker_peak_rss_kib(web.pid)

        if baselines:
            naive = f"/bench/naive/?in_bbox={big.text}"
            result = measure.timed(host, port, naive, samples=slow_samples, warmup=0)
            rows["naive_100k"] = _row(
                result,
                "baseline: naive drf-gis GeoJSON, unpaginated",
                box="box_100k",
                features=_features(result["last"]),
                expected=big.places,
            )
            out["rss_kib"]["after_naive"] = worker_peak_rss_kib(web.pid)

    if baselines:
        with tipg_server(
            database_url=database_url,
            workers=workers,
            max_features_per_query=max(big.places * 2, 10_000),
            max_features_per_tile=20_000,
            log_dir=log_dir,
        ) as tipg:
            items = f"/collections/{TIPG_COLLECTION}/items?bbox={big.text}&{TIPG_PARAMS}"
            result = measure.timed(
                tipg.host, tipg.port, f"{items}&limit={limit}", samples=slow_samples
            )
            rows["tipg_items_page"] = _row(
                result,
                f"baseline: tipg items (limit {limit})",
                box="box_100k",
                features=_features(result["last"]),
                expected=min(limit, big.places),
            )
            result = measure.timed(
                tipg.host, tipg.port, f"{items}&limit={big.places * 2}", samples=slow_samples
            )
            rows["tipg_items_all"] = _row(
                result,
                "baseline: tipg items, all in one answer",
                box="box_100k",
                features=_features(result["last"]),
                expected=big.places,
            )
            tiles = f"/collections/{TIPG_COLLECTION}/tiles/WebMercatorQuad/{tile.path}"
            result = measure.timed(tipg.host, tipg.port, f"{tiles}?{TIPG_PARAMS}", samples=samples)
            rows["tipg_tile_dense"] = _row(
                result,
                f"baseline: tipg tile {tile.path}",
                places=tile.places,
                features=_mvt_features(result["last"]),
                # tipg leaves out the places in the tile's margin, which ours carries.
                expected=tile.places,
            )
    _check_coverage(rows)
    return out


def _check_coverage(rows: dict[str, dict[str, Any]]) -> None:
    """Flag any answer that did not cover the places it should: the comparisons would lie."""
    for key, row in rows.items():
        expected = row.pop("expected", None)
        covers = row.get("features", row.get("places"))
        if expected is not None and covers != expected:
            row["mismatch"] = f"covers {covers}, expected {expected}"
            logger.warning("%s: %s", key, row["mismatch"])
