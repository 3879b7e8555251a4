#!/usr/bin/env python
"""Benchmarks (``make bench``): results go to tests/benchmarks/results.{json,md}.

Runs against its own database (``places_bench``), never the development one. Each figure is
the median of several runs, beside a baseline measured in the same run on the same rows.

1. Sample import: the GB places-of-worship CSV (34,613 rows) through the real pipeline
   (read + COPY + validate + point-in-polygon + diff + upsert + change log), into a new
   dataset, then again unchanged. Baseline: a plain Django ``bulk_create`` of the same rows
   (parsing only; no validation, regions or change log), so the ratio shows what the whole
   pipeline costs against the ORM's fastest insert path.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_DATABASE_URL", "postgis://postgres@127.0.0.1:5432/places_bench"
)
os.environ.setdefault("LOG_LEVEL", "WARNING")
# As in production: no query log, no debug pages.
os.environ["DEBUG"] = "false"
# Stored copies of the benchmark's files stay out of the development media folder.
os.environ["MEDIA_ROOT"] = tempfile.mkdtemp(prefix="places-bench-media-")

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RESULTS = Path(__file__).with_name("results")


def _fresh_database() -> None:
    """Drop and recreate the benchmark database, so every run starts from the same state."""
    import environ
    import psycopg
    from psycopg import sql

    config = environ.Env.db_url_config(os.environ["DATABASE_URL"])
    with psycopg.connect(
        host=config.get("HOST") or "127.0.0.1",
        port=config.get("PORT") or 5432,
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(config["NAME"])
            )
        )
    subprocess.run([sys.executable, str(ROOT / "bin" / "ensure-database")], check=True)


SERVING_BOX = "-0.5,51.3,0.3,51.7"  # Greater London
SERVING_RUNS = 15


def _serving_benchmark(*, plain_dataset: object) -> dict[str, object]:
    """Viewport and tiles, uncached and cached, beside a naive drf-gis endpoint (baseline)."""
    from django.core.cache import cache
    from django.test import Client
    from django.urls import path
    from rest_framework import generics
    from rest_framework_gis.filters import InBBoxFilter
    from rest_framework_gis.serializers import GeoFeatureModelSerializer

    from places.models import Place

    class NaiveSerializer(GeoFeatureModelSerializer):
        class Meta:
            model = Place
            geo_field = "location"
            fields = ["id", "name", "religion", "dataset"]

    class NaiveList(generics.ListAPIView):
        """The obvious way, built only here: drf-gis serializer + InBBoxFilter, unpaginated."""

        queryset = Place.objects.all()
        serializer_class = NaiveSerializer
        filter_backends = [InBBoxFilter]
        bbox_filter_field = "location"
        bbox_filter_include_overlapping = True

    from config import urls as root_urls

    root_urls.urlpatterns.append(path("bench/naive/", NaiveList.as_view()))
    client = Client(HTTP_HOST="localhost")
    z, x, y = 11, 1023, 681  # a dense London tile

    def timed(url: str, *, cached: bool, **headers: str) -> dict[str, float]:
        samples, size = [], 0
        for _ in range(SERVING_RUNS):
            if not cached:
                cache.clear()
            started = time.perf_counter()
            response = client.get(url, **headers)
            samples.append((time.perf_counter() - started) * 1000)
            size = len(response.content)
            assert response.status_code == 200, (url, response.status_code)
        return {"median_ms": round(statistics.median(samples), 1), "bytes": size}

    gz = {"HTTP_ACCEPT_ENCODING": "gzip"}
    viewport = f"/api/v1/viewport/?bbox={SERVING_BOX}&zoom=12"
    requests = {
        "baseline: naive drf-gis GeoJSON (no pagination)": timed(
            f"/bench/naive/?in_bbox={SERVING_BOX}", cached=True
        ),
        "viewport JSON, uncached": timed(viewport, cached=False, **gz),
        "viewport binary, uncached": timed(viewport + "&format=bin", cached=False, **gz),
        "viewport binary, cached": timed(viewport + "&format=bin", cached=True, **gz),
        "places API GeoJSON page (limit 10000)": timed(
            f"/api/v1/places/?bbox={SERVING_BOX}&limit=10000", cached=True
        ),
        f"tile {z}/{x}/{y}, uncached": timed(f"/tiles/places/{z}/{x}/{y}.pbf", cached=False, **gz),
        f"tile {z}/{x}/{y}, cached": timed(f"/tiles/places/{z}/{x}/{y}.pbf", cached=True, **gz),
        "tile 5/15/10 (clusters), uncached": timed("/tiles/places/5/15/10.pbf", cached=False, **gz),
    }
    return {"places": Place.objects.count(), "requests": requests}


def main() -> None:
    _fresh_database()
    import django

    django.setup()
    from django.contrib.gis.geos import Point
    from django.core.management import call_command

    from ingestion.services.imports import import_job_create, import_job_execute
    from ingestion.services.regions import PRESETS, region_load
    from places.models import Place
    from places.services import dataset_get_or_create

    call_command("migrate", verbosity=0)
    sample = ROOT / "ingestion" / "sample_data"
    region_load(
        path=sample / "ne_50m_admin_0_countries.geojson.gz",
        source=PRESETS["ne-countries"],
        dataset=dataset_get_or_create(slug="natural-earth"),
    )
    region_load(
        path=sample / "ons_lad_2024_uk_generalised.geojson.gz",
        source=PRESETS["ons-lad"],
        dataset=dataset_get_or_create(slug="ons-lad-2024"),
    )
    csv_path = sample / "osm_pow_gb_excl_wales.csv.gz"

    first, again, baseline = [], [], []
    plain = None
    rows = 0
    for _ in range(RUNS):
        dataset = dataset_get_or_create(slug=f"bench-{uuid.uuid4().hex[:8]}")
        started = time.perf_counter()
        job = import_job_execute(job_id=import_job_create(path=csv_path, dataset=dataset).pk)
        first.append(time.perf_counter() - started)
        rows = job.rows_read
        started = time.perf_counter()
        import_job_execute(job_id=import_job_create(path=csv_path, dataset=dataset).pk)
        again.append(time.perf_counter() - started)

        # Baseline: the ORM's bulk_create of the same rows, parsed with the csv module.
        plain = dataset_get_or_create(slug=f"bench-orm-{uuid.uuid4().hex[:8]}")
        started = time.perf_counter()
        seen: set[str] = set()
        objects = []
        with gzip.open(csv_path, "rt", encoding="utf-8") as fh:
            for record in csv.DictReader(fh):
                key = f"osm:{record['osm_type']}/{record['osm_id']}"
                if key in seen:
                    continue
                seen.add(key)
                objects.append(
                    Place(
                        dataset=plain,
                        source_key=key,
                        name=record["name"],
                        religion=record["faith"].lower(),
                        religion_raw=record["faith"],
                        denomination_raw=record["denomination"],
                        location=Point(float(record["lon"]), float(record["lat"]), srid=4326),
                    )
                )
        Place.objects.bulk_create(objects, batch_size=5000)
        baseline.append(time.perf_counter() - started)

    def summary(seconds: list[float]) -> dict[str, float]:
        median = statistics.median(seconds)
        return {
            "median_seconds": round(median, 3),
            "rows_per_second": round(rows / median),
            "runs": [round(s, 3) for s in seconds],
        }

    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "sample_import": {
            "rows": rows,
            "pipeline_first_import": summary(first),
            "pipeline_reimport_unchanged": summary(again),
            "baseline_orm_bulk_create": summary(baseline),
        },
    }
    s = results["sample_import"]
    s["ratio_first_vs_baseline"] = round(
        s["pipeline_first_import"]["rows_per_second"]
        / s["baseline_orm_bulk_create"]["rows_per_second"],
        2,
    )
    results["serving"] = _serving_benchmark(plain_dataset=plain)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Benchmark results ({results['machine']['date']}, {os.cpu_count()} cores)",
        "",
        f"Sample import: {rows} rows of the GB CSV, median of {RUNS} runs.",
        "",
        "| path | median s | rows/s |",
        "|---|---:|---:|",
        *(
            f"| {name} | {s[key]['median_seconds']} | {s[key]['rows_per_second']} |"
            for name, key in [
                ("pipeline, first import", "pipeline_first_import"),
                ("pipeline, re-import unchanged", "pipeline_reimport_unchanged"),
                ("baseline: ORM bulk_create (no checks)", "baseline_orm_bulk_create"),
            ]
        ),
        "",
        f"Pipeline / baseline (first import): {s['ratio_first_vs_baseline']}×",
        "",
    ]
    lines += [
        f"Serving, in-process (Django test client, no gunicorn), sample data: "
        f"{results['serving']['places']} places; box {SERVING_BOX}; median of "
        f"{SERVING_RUNS} requests.",
        "",
        "| request | median ms | bytes |",
        "|---|---:|---:|",
        *(
            f"| {name} | {row['median_ms']} | {row['bytes']} |"
            for name, row in results["serving"]["requests"].items()
        ),
        "",
    ]
    (RESULTS / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
