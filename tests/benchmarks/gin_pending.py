#!/usr/bin/env python
"""The name search's trigram indexes under an import's inserts, by GIN pending list.

    .venv/bin/python tests/benchmarks/gin_pending.py [--rounds R]

Copies 70 % of the bench database's place names (``BENCH_DATABASE_URL``, loaded by
``make bench``) into a table of its own with the two trigram indexes places have, then
inserts the other 30 % in six batches, each in a transaction as the importer's (work_mem
256 MB), in interleaved rounds of three ways:

- **default**: the pending list merged whenever it passes ``gin_pending_list_limit`` (4 MB);
- **1 GB, merged per batch**: the limit raised for the batch, ``gin_clean_pending_list()``
  at its end;
- **no pending list**: ``fastupdate`` off, every entry into the tree as it comes.

Prints the seconds of each and writes them with their medians to
``results/gin-pending.{json,md}``; the table is dropped at the end. Measured for issue 14
(README, *what was tried*), not run by ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import psycopg

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = "bench_gin_pending"
INDEXES = {
    f"{TABLE}_upper": "upper(name) gin_trgm_ops",
    f"{TABLE}_unaccent": "upper(places_unaccent(name)) gin_trgm_ops",
}


def _fresh(conn: psycopg.Connection, fastupdate: bool) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} AS SELECT id, name FROM places_place WHERE id % 10 < 7")
    for name, expression in INDEXES.items():
        conn.execute(
            f"CREATE INDEX {name} ON {TABLE} USING gin ({expression}) "
            f"WITH (fastupdate = {'on' if fastupdate else 'off'})"
        )
    conn.execute(f"VACUUM ANALYZE {TABLE}")


def _insert(conn: psycopg.Connection, way: str) -> float:
    started = time.perf_counter()
    for batch in range(6):
        with conn.transaction():
            conn.execute("SET LOCAL work_mem = '256MB'")
            if way == "1 GB, merged per batch":
                conn.execute("SET LOCAL gin_pending_list_limit = '1GB'")
            conn.execute(
                f"INSERT INTO {TABLE} SELECT id, name FROM places_place "
                f"WHERE id % 10 >= 7 AND id % 6 = {batch} ORDER BY location"
            )
            if way == "1 GB, merged per batch":
                for name in INDEXES:
                    conn.execute("SELECT gin_clean_pending_list(%s::regclass)", [name])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/places_bench")
    url = url.replace("postgis://", "postgresql://", 1)
    seconds: dict[str, list[float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET jit = off")
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE id % 10 < 7), count(*) FILTER (WHERE id % 10 >= 7) "
            "FROM places_place"
        ).fetchone()
        if counts is None:  # an aggregate always answers one row
            raise SystemExit("the count of places returned no row")
        kept, inserted = counts
        try:
            for number in range(args.rounds):
                for way in ["default", "1 GB, merged per batch", "no pending list"]:
                    _fresh(conn, fastupdate=way != "no pending list")
                    seconds.setdefault(way, []).append(_insert(conn, way))
                    print(number, way, round(seconds[way][-1], 2), flush=True)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    lines = [
        f"# Trigram indexes under six batches of inserts, by GIN pending list "
        f"({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores)",
        "",
        f"{inserted:,} of the bench database's place names inserted in six transactions "
        f"into a table holding the other {kept:,}, with the two trigram indexes places have "
        f"({args.rounds} interleaved rounds; load average after: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}).",
        "",
        "| pending list | median s | rounds (s) |",
        "|---|---:|---|",
    ]
    for way, values in seconds.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"| {way} | {statistics.median(values):.2f} | {rounds} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gin-pending.json").write_text(json.dumps(seconds, indent=2) + "\n")
    (RESULTS / "gin-pending.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
