"""Imports for ``ab.py``: each tree's own import benchmark child, in alternating rounds.

The import code moved between trees (``import_job_create`` left ``ingestion.services.imports``
for ``ingestion.services.jobs``), so every process here runs inside its tree: its own
``imports.py`` as the child (an import in a fresh process, reporting seconds and peak RSS), its
own migrations and regions on a database of its own (``<serving db>_imports_a`` or ``_b``),
its own ``_empty_places`` between rounds. The CSV is generated once, so both read the same file.

A round is a first import into an empty dataset on each side, then a re-import of the same
file (nothing changed) on each side: A, B, A, B in odd rounds, B, A, B, A in even ones, so
that a load rising or falling over the run does not always fall on the same side. Each import
starts after a CHECKPOINT, so that the previous import's dirty pages are written out before
its clock starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from tests.benchmarks.ab_compare import Tree, compare_sides
from tests.benchmarks.imports import SEED, generate_csv
from tests.benchmarks.load import _connect_params

logger = logging.getLogger("bench")
KINDS = {"first_import": "first import", "reimport_unchanged": "re-import, unchanged"}


def _environment(database_url: str, media: str) -> dict[str, str]:
    env = {**os.environ, "BENCH_DATABASE_URL": database_url, "MEDIA_ROOT": media}
    env.pop("PYTHONPATH", None)
    return env


def _in_tree(tree: Tree, code: str, env: dict[str, str]) -> None:
    """Python run in the tree (its cwd, hence first on ``sys.path``), on that tree's modules."""
    subprocess.run([sys.executable, "-c", code], cwd=tree.root, env=env, check=True)


def _checkpoint(url: str) -> None:
    with psycopg.connect(**_connect_params(url), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _import(tree: Tree, *, csv_path: Path, slug: str, env: dict[str, str]) -> dict[str, Any]:
    """One import through the tree's own benchmark child; what it reports."""
    script = tree.root / "tests" / "benchmarks" / "imports.py"
    done = subprocess.run(
        [sys.executable, str(script), "--child", "import", "--path", str(csv_path), "--slug", slug],
        cwd=tree.root,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{tree.side}'s import failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(runs: dict[str, list[dict[str, Any]]], rows: int) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for side, done in runs.items():
        seconds = statistics.median(r["seconds"] for r in done)
        row[side] = {
            "median_seconds": round(seconds, 2),
            "rows_per_second": round(rows / seconds),
            "apply_seconds": round(statistics.median(r["apply_seconds"] for r in done), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
            "round_seconds": [round(r["seconds"], 2) for r in done],
            "counts": done[-1]["counts"],
            # Each tree names its own steps (B's pipeline is split by phase).
            "round_step_seconds": [r.get("step_seconds", {}) for r in done],
        }
    a, b = row["A"], row["B"]
    row |= compare_sides(
        a_rounds=a["round_seconds"],
        b_rounds=b["round_seconds"],
        a=a["median_seconds"],
        b=b["median_seconds"],
    )
    row["peak_rss_ratio_b_a"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
    row["same_counts"] = a["counts"] == b["counts"]
    return row


def run(*, trees: dict[str, Tree], database_url: str, rows: int, rounds: int) -> dict[str, Any]:
    urls = {side: f"{database_url}_imports_{side.lower()}" for side in trees}
    media = tempfile.mkdtemp(prefix="places-ab-media-")
    envs = {side: _environment(urls[side], media) for side in trees}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {side: [] for side in trees} for kind in KINDS
    }
    try:
        with tempfile.TemporaryDirectory(prefix="places-ab-") as folder:
            csv_path = generate_csv(Path(folder) / f"places_{rows}.csv", rows=rows, seed=SEED)
            size = csv_path.stat().st_size
            for side, tree in trees.items():
                logger.info("imports: migrating and loading regions into %s", urls[side])
                _in_tree(
                    tree,
                    "from tests.benchmarks import imports\n"
                    "imports._fresh_database()\nimports._prepare()",
                    envs[side],
                )
            for number in range(rounds):
                # A first in odd rounds, B first in even ones: a load that rises or falls over
                # the run does not always fall on the same side.
                order = list(trees) if number % 2 == 0 else list(reversed(trees))
                for side in order if number else ():
                    _in_tree(
                        trees[side],
                        "from tests.benchmarks import imports\nimports._empty_places()",
                        envs[side],
                    )
                for kind in KINDS:
                    for side in order:
                        _checkpoint(urls[side])
                        result = _import(
                            trees[side], csv_path=csv_path, slug=f"ab-{number}", env=envs[side]
                        )
                        runs[kind][side].append(result)
                        logger.info(
                            "imports: round %s, %s, %s: %.1f s",
                            number + 1,
                            side,
                            KINDS[kind],
                            result["seconds"],
                        )
    finally:
        shutil.rmtree(media, ignore_errors=True)
    return {
        "file": {"rows": rows, "bytes": size, "seed": SEED},
        "databases": urls,
        **{kind: _row(runs[kind], rows) for kind in KINDS},
    }
