"""Shared fixtures. Tests talk to the real PostGIS and Redis services.

The sample regions and the GB import are loaded once per session and committed to the test
database; tests that change data run inside the ``db`` fixture's transaction and roll back.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache

from ingestion.models import ImportJob
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from ingestion.services.regions import PRESETS, region_load
from places.models import Dataset
from places.services import dataset_get_or_create
from tests.db import replica_caught_up

# A real S3 API (moto's server) and a bucket as the default storage: tests/s3.py.
pytest_plugins = ["tests.s3"]

SAMPLE_DIR = Path(settings.BASE_DIR) / "ingestion" / "sample_data"
FIXTURES = Path(__file__).parent / "fixtures"
GB_CSV = SAMPLE_DIR / "osm_pow_gb_excl_wales.csv.gz"
LONDON_SHP = SAMPLE_DIR / "geofabrik_greater_london_pofw_2019-07-14.shp.zip"
COUNTRIES = SAMPLE_DIR / "ne_50m_admin_0_countries.geojson.gz"
DISTRICTS = SAMPLE_DIR / "ons_lad_2024_uk_generalised.geojson.gz"


def gzip_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


@pytest.fixture(scope="session")
def sample_regions(django_db_setup: None, django_db_blocker) -> dict[str, Dataset]:
    with django_db_blocker.unblock():
        countries = dataset_get_or_create(slug="natural-earth")
        districts = dataset_get_or_create(slug="ons-lad-2024")
        region_load(path=COUNTRIES, source=PRESETS["ne-countries"], dataset=countries)
        region_load(path=DISTRICTS, source=PRESETS["ons-lad"], dataset=districts)
        replica_caught_up()
    return {"countries": countries, "districts": districts}


@pytest.fixture(scope="session")
def gb_import(sample_regions: dict[str, Dataset], django_db_blocker) -> ImportJob:
    """The GB places-of-worship CSV, imported once through the real service."""
    with django_db_blocker.unblock():
        dataset = dataset_get_or_create(slug="osm-gb")
        job = import_job_create(path=GB_CSV, dataset=dataset)
        finished = import_job_execute(job_id=job.pk)
        assert finished is not None
        replica_caught_up()  # the analytics tests read it through the replica
        return finished


@pytest.fixture
def clear_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="session", autouse=True)
def _close_connections_before_teardown(django_db_setup: None, django_db_blocker) -> Iterator[None]:
    """Listen for data versions as a gunicorn worker does (config/wsgi.py), on the test
    database; at the end, stop and close every alias (the replica mirror too) so the test
    database can be dropped."""
    from django.db import connections

    from places import version_watch

    # Importing config.wsgi (test_schemathesis does, while collecting) started it before the
    # test database existed: listen anew, on the test database.
    version_watch.WATCH.stop()
    version_watch.start()
    yield
    version_watch.WATCH.stop()  # its listening connection would keep the database in use
    with django_db_blocker.unblock():
        connections.close_all()
