#!/usr/bin/env python
"""Interleaved A/B benchmark (``make bench-ab``): the code at a base ref (A) against this tree (B).

On a shared, noisy machine two runs hours apart cannot be compared, so A and B are measured
in one run, in alternating rounds (A, B, A, B, …), and a difference between them counts only
when it is larger than the noise between neighbouring rounds of the same code (A against A,
B against B) and most rounds agree on it (``ab_compare.py``).
Results go to ``results/ab.{json,md}``.

- **A** is a git worktree of ``--base`` (``0580afa`` by default: the code before issue 11)
  under ``/tmp/places-ab-<ref>``, removed at exit; **B** is this working tree as it stands.
  Both run with this project's ``.venv``, so the dependencies are the same.
- **Serving**: one database (``BENCH_AB_DATABASE_URL``) loaded through this tree's loader
  (``load.py``; reused while its fingerprint matches) and migrated by this tree; A and B are
  gunicorn servers with the bench's production settings (``servers.py``) on two ports,
  sharing one Redis database (``BENCH_AB_REDIS_URL``), emptied before every uncached
  request. Each request is timed in ``--rounds`` rounds per side of ``--samples`` requests;
  A's and B's answers to the same request are compared byte for byte (after gzip).
- **Imports**: each tree's own ``imports.py`` child (cwd and ``sys.path`` that tree's) imports
  one generated CSV, the same file for both, into a database of that tree's own, migrated by
  that tree: a first import, then a re-import of the same file, in ``--import-rounds``
  alternating rounds.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.ab_compare import Tree  # noqa: E402
from tests.benchmarks.ab_imports import KINDS  # noqa: E402

RESULTS = Path(__file__).with_name("results")
DEFAULT_BASE = "0580afa"
DEFAULT_DB = "postgis://postgres@127.0.0.1:5432/places_bench_ab"
# Not the database `make bench` empties (10): the two may run on the same machine.
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"
logger = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="git ref measured as A")
    parser.add_argument("--places", type=int, default=300_000, help="generated places served")
    parser.add_argument("--seed", type=int, default=20_240_601, help="generator seed")
    parser.add_argument("--reload", action="store_true", help="reload even if the set matches")
    parser.add_argument(
        "--box-places", type=int, default=None, help="places in the big box (a tenth of --places)"
    )
    parser.add_argument("--rounds", type=int, default=8, help="serving rounds per side")
    parser.add_argument("--samples", type=int, default=7, help="requests per round")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per side")
    parser.add_argument(
        "--wrk-rounds",
        type=int,
        default=3,
        help="throughput rounds per side (four clients on the 1K views; 0 leaves them out)",
    )
    parser.add_argument("--wrk-seconds", type=int, default=8, help="seconds of each wrk run")
    parser.add_argument("--import-rows", type=int, default=200_000)
    parser.add_argument("--import-rounds", type=int, default=5, help="import rounds per side")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-imports", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for ab.json, ab.md")
    return parser.parse_args(argv)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True)
    return done.stdout.strip()


@contextmanager
def base_worktree(ref: str) -> Iterator[Tree]:
    """A detached worktree of ``ref`` outside the project, removed (forced) however we exit."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    name = re.sub(r"[^\w.-]", "-", ref)
    path = Path(tempfile.gettempdir()) / f"places-ab-{name}"

    def remove() -> None:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True
        )
        shutil.rmtree(path, ignore_errors=True)

    remove()  # left over by a run that was killed (SIGKILL skips the finally below)
    # --force: a worktree whose folder was deleted stays registered until pruned.
    _git("worktree", "add", "--force", "--detach", str(path), commit)
    logger.info("worktree of %s (%s) at %s", ref, commit[:10], path)
    try:
        yield Tree(side="A", root=path, commit=commit)
    finally:
        remove()
        logger.info("worktree %s removed", path)


# Report ---------------------------------------------------------------------------------


def _commit(sha: str) -> dict[str, str]:
    return {"sha": sha, "subject": _git("log", "-1", "--format=%s", sha)[:120]}


def markdown(results: dict[str, Any]) -> str:
    m, p = results["machine"], results["parameters"]
    a, b = results["base"], results["current"]
    dirty = b.get("uncommitted") or []
    lines = [
        f"# A/B benchmark: `{a['ref']}` (A) against this tree (B), {m['date']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_mib']} MiB; PostgreSQL "
        f"{m['postgresql']}, PostGIS {m['postgis']}, Redis {m['redis']}, Python {m['python']}, "
        f"{m['gunicorn']}. Load average at start {m['load_average_at_start']}, at end "
        f"{m['load_average_at_end']}. Whole run {results['elapsed_seconds']:.0f} s.",
        "",
        f"- A: `{a['sha'][:10]}` ({a['subject']}), in a worktree of its own.",
        f"- B: `{b['sha'][:10]}` ({b['subject']})"
        + (f", with uncommitted changes in {', '.join(dirty)}." if dirty else "."),
        "",
        "Both with the project's `.venv`. Rounds alternate A, B, A, B (imports: B first in "
        "even rounds). *B/A* is the ratio of the medians over all rounds; *paired* the median "
        "of each round's B over its A (slow drift cancels); *best* B's fastest round over A's "
        "(the least disturbed); *noise* the typical factor between neighbouring "
        "rounds of the same code (A/A and B/B). A change counts only when the paired ratio "
        "lies beyond the noise and at least three rounds in four agree; anything else reads "
        "*within noise*, which is what no regression means here.",
    ]
    serving = results.get("serving")
    if serving:
        lines += _serving_markdown(results["data"], serving, p)
    imports = results.get("imports")
    if imports:
        lines += _imports_markdown(imports, p)
    return "\n".join(lines + _noise_markdown(results)) + "\n"


def _noise_markdown(results: dict[str, Any]) -> list[str]:
    """How noisy this run was: the A/A factors the readings were held against."""
    rows = list(results.get("serving", {}).get("requests", {}).values())
    rows += [results["imports"][key] for key in KINDS if key in results.get("imports", {})]
    if not rows:
        return []
    noise = sorted(row["noise"] for row in rows)
    return [
        "",
        "## Noise",
        "",
        f"Typical factor between neighbouring rounds of the same code, per request or import: "
        f"{noise[0]} to {noise[-1]} (median {noise[len(noise) // 2]}). The machine is shared: "
        "figures from another run, or another hour, are not comparable with these; only A "
        "and B of the same run are.",
    ]


def _serving_markdown(data: dict, serving: dict, p: dict) -> list[str]:
    picked = serving["picked"]
    lines = [
        "",
        "## Serving",
        "",
        f"{data['places']:,} generated places (seed {data['parameters']['seed']}, "
        f"{'reused' if data['reused'] else 'loaded'}), one database for both sides, migrated "
        f"by B. gunicorn, {p['workers']} gthread workers per side (config/gunicorn.py), "
        "production settings; one "
        f"client, gzip accepted; {p['rounds']} rounds × {p['samples']} requests per side; "
        "uncached = Redis emptied before each request. Big box "
        f"`{picked['big_box']['bbox']}` ({picked['big_box']['places']:,} places).",
        "",
        "| request | A p50 | A p95 | B p50 | B p95 | B/A p50 | paired | best | noise "
        "| B slower | reading |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in serving["requests"].values():
        lines.append(
            f"| {row['label']} | {row['A']['p50_ms']} | {row['A']['p95_ms']} | "
            f"{row['B']['p50_ms']} | {row['B']['p95_ms']} | {row['ratio_b_a']} | "
            f"{row['paired_ratio_b_a']} | {row['best_ratio_b_a']} | {row['noise']} | "
            f"{row['b_slower_rounds']} of {row['rounds']} | {row['reading']} |"
        )
    lines += ["", "Same request, same body (gzip undone)?", ""]
    for key, answer in serving["answers"].items():
        if answer["same"]:
            lines.append(f"- {key}: same ({answer['bytes']:,} bytes)")
        else:
            detail = answer.get("json_differences") or answer.get("features")
            lines.append(
                f"- {key}: **different** (A {answer['bytes_a']:,} bytes, B "
                f"{answer['bytes_b']:,}; from byte {answer['first_difference_at']}): {detail}"
            )
    rss = serving["worker_peak_rss_mib"]
    steps = serving.get("worker_peak_rss_mib_after", {})
    if steps:
        lines += [
            "",
            "Highest worker peak RSS (VmHWM, MiB) at start and after each request's warm-up, "
            "in order (each includes every request before it):",
            "",
            "| after | A | B |",
            "|---|---:|---:|",
            *(f"| {step} | {v['A']} | {v['B']} |" for step, v in steps.items()),
        ]
    lines += [
        "",
        f"Worker peak RSS (VmHWM): A {rss['A']} MiB, B {rss['B']} MiB. Each server ran its "
        f"own tree (working directories {serving['code']['A']['cwd']} and "
        f"{serving['code']['B']['cwd']}; OpenAPI schemas {serving['code']['A']['schema_sha256']}"
        f" and {serving['code']['B']['schema_sha256']}).",
    ]
    if serving.get("throughput"):
        lines += _throughput_markdown(serving["throughput"]["compared"], p)
    return lines


def _throughput_markdown(rows: dict[str, Any], p: dict) -> list[str]:
    labels = {
        "floor": "floor: /health/live/",
        "uncached": "1K-place views, binary, uncached",
        "cached": "1K-place views, binary, cached",
    }
    lines = [
        "",
        f"Four clients (wrk, 2 threads, {p['wrk_seconds']} s a run), {p['wrk_rounds']} rounds "
        "per side, alternating (each round: the floor, the views uncached, cached, the floor "
        "again; the floor is the mean of its two runs). The reading compares seconds per "
        "request, as above.",
        "",
        "| run | A req/s | B req/s | A share of floor | B share of floor | A p95 ms | B p95 ms "
        "| B/A s per request | paired | noise | reading |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for kind, row in rows.items():
        a, b = row["A"], row["B"]

        def share(side: dict[str, Any]) -> str:
            return f"{side['share_of_floor']:.0%}" if side["share_of_floor"] is not None else ""

        def p95(side: dict[str, Any]) -> str:
            values = side["round_p95_ms"]
            return str(sorted(values)[len(values) // 2]) if values else ""

        lines.append(
            f"| {labels[kind]} | {a['requests_per_second']:,} | {b['requests_per_second']:,} | "
            f"{share(a)} | {share(b)} | {p95(a)} | {p95(b)} | {row['ratio_b_a']} | "
            f"{row['paired_ratio_b_a']} | {row['noise']} | {row['reading']} |"
        )
    cpu = {
        kind: (rows[kind]["A"]["cpu_ms_per_request"], rows[kind]["B"]["cpu_ms_per_request"])
        for kind in ("uncached", "cached")
    }
    lines += ["", "CPU per request (ms, medians of the rounds; every process of each kind):", ""]
    for kind, (a, b) in cpu.items():
        lines.append(
            f"- {labels[kind]}: A "
            + ", ".join(f"{k} {v}" for k, v in a.items())
            + "; B "
            + ", ".join(f"{k} {v}" for k, v in b.items())
        )
    return lines


def _imports_markdown(imports: dict, p: dict) -> list[str]:
    f = imports["file"]
    lines = [
        "",
        "## Imports",
        "",
        f"Generated CSV: {f['rows']:,} rows, {f['bytes'] / 1e6:.0f} MB (seed {f['seed']}), the "
        f"same file for both; each import a child process running its own tree's "
        f"`imports.py`, on a database of that tree's (migrated by it); {p['import_rounds']} "
        "rounds per side, CHECKPOINT before each import.",
        "",
        "| import | A s | B s | A rows/s | B rows/s | B/A s | paired | best | noise "
        "| B slower | A / B peak RSS MB | reading |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, label in KINDS.items():
        row = imports[key]
        a, b = row["A"], row["B"]
        lines.append(
            f"| {label} | {a['median_seconds']} | {b['median_seconds']} | "
            f"{a['rows_per_second']:,} | {b['rows_per_second']:,} | {row['ratio_b_a']} | "
            f"{row['paired_ratio_b_a']} | {row['best_ratio_b_a']} | {row['noise']} | "
            f"{row['b_slower_rounds']} of {row['rounds']} | {a['peak_rss_mb']} / "
            f"{b['peak_rss_mb']} | {row['reading']} |"
        )
    for key, label in KINDS.items():
        row = imports[key]
        lines.append("")
        lines.append(
            f"{label.capitalize()}: seconds per round A {row['A']['round_seconds']} s, B "
            f"{row['B']['round_seconds']} s; counts "
            + (
                f"the same on both sides {row['A']['counts']}."
                if row["same_counts"]
                else f"**differ**: A {row['A']['counts']}, B {row['B']['counts']}."
            )
        )
    return lines


def _machine(url: str, redis_url: str) -> dict[str, Any]:
    from tests.benchmarks.run import machine_facts

    facts = machine_facts(bench_url=url, redis_url=redis_url)
    for unused in ("tipg", "wrk"):
        facts.pop(unused, None)
    return facts


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    url = os.environ.get("BENCH_AB_DATABASE_URL", DEFAULT_DB)
    redis_url = os.environ.get("BENCH_AB_REDIS_URL", DEFAULT_REDIS)
    # This process (loader, box picker) uses the serving database and the A/B cache only.
    os.environ.update(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        DJANGO_SETTINGS_MODULE="config.settings.local",
        DEBUG="false",
        MEDIA_ROOT=tempfile.mkdtemp(prefix="places-ab-media-"),
    )
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    atexit.register(shutil.rmtree, os.environ["MEDIA_ROOT"], ignore_errors=True)
    # A plain kill still removes the worktree and stops the servers (finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from tests.benchmarks.load import ensure_database_exists

    ensure_database_exists(url)
    import django

    django.setup()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s ab: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    from tests.benchmarks import ab_imports, ab_serving
    from tests.benchmarks.dataset import Parameters
    from tests.benchmarks.load import bench_data_ensure

    results: dict[str, Any] = {
        "machine": _machine(url, redis_url),
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "current": {
            **_commit(_git("rev-parse", "HEAD")),
            # B is the working tree as it stands, which others may be editing.
            "uncommitted": _git("diff", "--name-only", "HEAD").splitlines(),
        },
    }
    with base_worktree(args.base) as base:
        results["base"] = {"ref": args.base, **_commit(base.commit)}
        trees = {"A": base, "B": Tree(side="B", root=ROOT, commit=results["current"]["sha"])}
        if not args.skip_serving:
            params = Parameters(places=args.places, seed=args.seed)
            results["data"] = bench_data_ensure(url=url, params=params, reload=args.reload)
            logger.info("serving: %s rounds of %s per side", args.rounds, args.samples)
            results["serving"] = ab_serving.run(
                trees=trees,
                database_url=url,
                redis_url=redis_url,
                workers=args.workers,
                rounds=args.rounds,
                samples=args.samples,
                box_places=args.box_places or args.places // 10,
                wrk_rounds=args.wrk_rounds,
                wrk_seconds=args.wrk_seconds,
            )
        if not args.skip_imports:
            logger.info(
                "imports: %s rows, %s rounds per side", args.import_rows, args.import_rounds
            )
            results["imports"] = ab_imports.run(
                trees=trees, database_url=url, rows=args.import_rows, rounds=args.import_rounds
            )
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_seconds"] = round(time.monotonic() - started)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "ab.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (args.output / "ab.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
