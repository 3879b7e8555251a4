#!/usr/bin/env python
"""Sample import benchmark, in a database of its own (dropped and recreated each run).

The GB places-of-worship CSV (34,613 rows) through the real pipeline (read + COPY +
validate + point-in-polygon + diff + upsert + change log) into a new dataset, then again
unchanged. Baseline: a plain Django ``bulk_create`` of the same rows (parsing only; no
validation, regions or change log), so the ratio shows what the whole pipeline costs against
the ORM's fastest insert path.

``run.py`` starts this as a child process with ``DATABASE_URL`` set to its database and
reads the JSON it prints on its last line.
"""

from __future__ import annotations

import atexit
import csv
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
os.environ["DEBUG"] = "false"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["MEDIA_ROOT"] = tempfile.mkdtemp(prefix="places-bench-media-")
# The importer keeps a copy of every file it reads (69 MB for 1M places): not for long.
atexit.register(shutil.rmtree, os.environ["MEDIA_ROOT"], ignore_errors=True)


def main(runs: int) -> dict[str, object]:
    import django

    django.setup()
    from django.contrib.gis.geos import Point
    from django.core.management import call_command

    from ingestion.services.imports import import_job_execute
    from ingestion.services.jobs import import_job_create
    from places.models import Place
    from places.services import dataset_get_or_create
    from tests.benchmarks.regions import SAMPLE, load_sample_regions

    call_command("migrate", verbosity=0)
    load_sample_regions()
    csv_path = SAMPLE / "osm_pow_gb_excl_wales.csv.gz"

    first, again, baseline = [], [], []
    rows = 0
    for _ in range(runs):
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

    def summary(seconds: list[float]) -> dict[str, object]:
        median = statistics.median(seconds)
        return {
            "median_seconds": round(median, 3),
            "rows_per_second": round(rows / median),
            "runs": [round(s, 3) for s in seconds],
        }

    result: dict[str, object] = {
        "rows": rows,
        "pipeline_first_import": summary(first),
        "pipeline_reimport_unchanged": summary(again),
        "baseline_orm_bulk_create": summary(baseline),
    }
    result["ratio_first_vs_baseline"] = round(
        result["pipeline_first_import"]["rows_per_second"]  # type: ignore[index]
        / result["baseline_orm_bulk_create"]["rows_per_second"],  # type: ignore[index]
        2,
    )
    return result


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
