"""Load the generated places into the benchmark database, or reuse what is already there.

A loaded database remembers the fingerprint of the set it holds (table ``bench_meta``); a run
asking for the same parameters reuses it instead of importing a million rows again. Anything
else (other parameters, a new generator version, another cities file, a place count that no
longer matches) drops the database and loads it again through the project's own importer.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import environ
import psycopg
from psycopg import sql

from tests.benchmarks.dataset import CITIES, Parameters, generate_csv

ROOT = Path(__file__).resolve().parents[2]
DATASET_SLUG = "bench-generated"
logger = logging.getLogger("bench")

META_DDL = """
CREATE TABLE IF NOT EXISTS bench_meta (
    fingerprint text PRIMARY KEY,
    parameters jsonb NOT NULL,
    places integer NOT NULL,
    load_seconds double precision NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
)
"""


def _connect_params(url: str) -> dict[str, Any]:
    config = environ.Env.db_url_config(url)
    return {
        "host": config.get("HOST") or "127.0.0.1",
        "port": config.get("PORT") or 5432,
        "user": config.get("USER") or "postgres",
        "password": config.get("PASSWORD") or None,
        "dbname": config["NAME"],
    }


def loaded_fingerprint(url: str) -> dict[str, Any] | None:
    """What the benchmark database holds, if it holds a complete generated set."""
    params = _connect_params(url)
    try:
        with psycopg.connect(**params, autocommit=True) as conn:
            if not conn.execute("SELECT to_regclass('bench_meta')").fetchone()[0]:
                return None
            row = conn.execute(
                "SELECT fingerprint, parameters, places, load_seconds, loaded_at FROM bench_meta"
            ).fetchone()
            if row is None:
                return None
            count = conn.execute(
                "SELECT count(*) FROM places_place p JOIN places_dataset d "
                "ON d.id = p.dataset_id WHERE d.slug = %s AND p.status = 'active'",
                [DATASET_SLUG],
            ).fetchone()[0]
    except psycopg.OperationalError:
        return None  # no such database yet
    fingerprint, parameters, places, load_seconds, loaded_at = row
    if count != places:
        logger.warning("bench database holds %s places, its record says %s", count, places)
        return None
    return {
        "fingerprint": fingerprint,
        "parameters": parameters,
        "places": places,
        "load_seconds": load_seconds,
        "loaded_at": loaded_at.isoformat(),
    }


def ensure_database_exists(url: str) -> None:
    """Create the database (with PostGIS) if it is missing; leave it alone otherwise."""
    subprocess.run(
        [sys.executable, str(ROOT / "bin" / "ensure-database")],
        check=True,
        env={**os.environ, "DATABASE_URL": url},
        stdout=subprocess.DEVNULL,
    )


def recreate_database(url: str) -> None:
    """Drop the database at ``url`` (closing this process's connections) and create it empty."""
    from django.db import connections

    connections.close_all()
    params = _connect_params(url)
    name = params.pop("dbname")
    with psycopg.connect(**params, dbname="postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    ensure_database_exists(url)


def bench_data_ensure(*, url: str, params: Parameters, reload: bool) -> dict[str, Any]:
    """The generated set is in the database at ``url`` (Django must point there).

    Returns what was loaded and whether it was reused.
    """
    from django.core.management import call_command

    fingerprint = params.fingerprint()
    current = None if reload else loaded_fingerprint(url)
    if current and current["fingerprint"] == fingerprint:
        # Schema changes that came after the load still apply to the reused database.
        call_command("migrate", verbosity=0)
        logger.info("reusing the loaded set (%s places, %s)", current["places"], fingerprint)
        return {**current, "reused": True}

    logger.info("loading %s generated places (fingerprint %s)", params.places, fingerprint)
    recreate_database(url)
    call_command("migrate", verbosity=0)

    from ingestion.models import ImportState
    from ingestion.services.imports import import_job_execute
    from ingestion.services.jobs import import_job_create
    from places.services import dataset_get_or_create
    from tests.benchmarks.regions import load_sample_regions

    # Countries first, so that the import assigns each place its country as in production.
    load_sample_regions(districts=False)
    dataset = dataset_get_or_create(
        slug=DATASET_SLUG,
        defaults={
            "name": "Generated benchmark places",
            "licence": "CC BY 4.0 (positions derived from GeoNames cities)",
            "attribution": "GeoNames (geonames.org), CC BY 4.0",
        },
    )
    with tempfile.TemporaryDirectory(prefix="places-bench-") as tmp:
        csv_path = Path(tmp) / f"bench-places-{fingerprint}.csv"
        started = time.perf_counter()
        generate_csv(params, csv_path)
        generate_seconds = time.perf_counter() - started
        started = time.perf_counter()
        job = import_job_execute(job_id=import_job_create(path=csv_path, dataset=dataset).pk)
        load_seconds = time.perf_counter() - started
    if job is None or job.state != ImportState.DONE or job.added != params.places:
        raise RuntimeError(
            f"loading the generated set failed: {job and job.state}, "
            f"{job and job.added} added of {params.places}, {job and job.error}"
        )
    with psycopg.connect(**_connect_params(url), autocommit=True) as conn:
        conn.execute(META_DDL)
        conn.execute("TRUNCATE bench_meta")
        conn.execute(
            "INSERT INTO bench_meta (fingerprint, parameters, places, load_seconds) "
            "VALUES (%s, %s, %s, %s)",
            [fingerprint, json.dumps(params.__dict__), params.places, load_seconds],
        )
        # Visibility map and statistics as a long-running database would have them.
        conn.execute("VACUUM ANALYZE places_place")
    logger.info("loaded %s places in %.0f s", params.places, load_seconds)
    return {
        "fingerprint": fingerprint,
        "parameters": params.__dict__,
        "places": params.places,
        "generate_seconds": round(generate_seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "reused": False,
        "cities_file": str(CITIES.relative_to(ROOT)),
    }
