"""Uploads stored in an S3-compatible bucket (UPLOADS_S3_BUCKET): web stores the file there
and a worker, which shares no disk with web, imports it from there.

The bucket is moto's S3 server listening on a free local port, spoken to over HTTP by boto3
through django-storages, as a real store would be. The storage entry is the one the settings
build from the UPLOADS_S3_* variables. MEDIA_ROOT points at a folder that must stay empty, and
the system's temporary directory at one that must be empty again after each step: the
worker's local copy is removed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa
import pyogrio
import pytest
from django.contrib.gis.geos import Point
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from config.settings.base import uploads_storage
from ingestion.models import ImportJob, ImportState
from ingestion.services import jobs
from ingestion.services.stored_files import storage_local_path
from ingestion.tasks import import_job_run
from places.models import Dataset, Place
from places.services import dataset_get_or_create
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db

NASTY = FIXTURES / "nasty_places.csv"


@pytest.fixture
def dataset() -> Dataset:
    return dataset_get_or_create(slug="s3-uploads")


def _keys(client, bucket: str) -> list[str]:
    listing = client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _url(name: str, job: ImportJob) -> str:
    return reverse(f"admin:ingestion_importjob_{name}", args=[job.pk])


def _step(client, name: str, job: ImportJob, capture) -> ImportJob:
    with capture(execute=False):
        assert client.post(_url(name, job)).status_code == 302
    # The worker's part: run the task function itself, as test_admin_flow does.
    import_job_run(job.pk)
    job.refresh_from_db()
    return job


def test_settings_choose_the_bucket_only_when_one_is_named(monkeypatch):
    monkeypatch.delenv("UPLOADS_S3_BUCKET", raising=False)
    assert uploads_storage() == {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    monkeypatch.setenv("UPLOADS_S3_BUCKET", "uploads")
    monkeypatch.setenv("UPLOADS_S3_ENDPOINT_URL", "https://minio.internal:9000")
    storage = uploads_storage()
    assert storage["BACKEND"] == "storages.backends.s3.S3Storage"
    options = storage["OPTIONS"]
    assert (options["bucket_name"], options["endpoint_url"]) == (
        "uploads",
        "https://minio.internal:9000",
    )
    # a self-hosted store is addressed by path; nothing is public or ever overwritten
    assert (options["addressing_style"], options["default_acl"]) == ("path", None)
    assert options["file_overwrite"] is False


def test_admin_upload_is_stored_in_the_bucket_and_imported_by_the_worker(
    bucket, temp_dir, settings, admin_client, dataset, django_capture_on_commit_callbacks
):
    client, name = bucket
    # when staff upload a CSV in the admin
    response = admin_client.post(
        reverse("admin:ingestion_importjob_add"),
        {
            "file": SimpleUploadedFile("nasty_places.csv", NASTY.read_bytes()),
            "dataset": dataset.pk,
            "mode": "upsert",
        },
    )
    assert response.status_code == 302
    job = ImportJob.objects.get(dataset=dataset)
    # then the file is in the bucket, under the prefix, byte for byte, and not on the disk
    assert _keys(client, name) == [f"media/{job.file.name}"]
    stored = client.get_object(Bucket=name, Key=f"media/{job.file.name}")["Body"].read()
    assert stored == NASTY.read_bytes()
    assert storage_local_path(storage=default_storage, name=job.file.name) is None
    assert not Path(settings.MEDIA_ROOT).exists()
    # and it was inspected from the upload itself
    assert job.state == ImportState.INSPECTED
    assert job.inspection["row_count"] == 11
    # when the worker runs the dry run, then the apply
    job = _step(admin_client, "dry_run", job, django_capture_on_commit_callbacks)
    assert job.state == ImportState.DRY_RUN_READY, job.error
    assert list(temp_dir.iterdir()) == []  # its local copy is gone
    job = _step(admin_client, "apply", job, django_capture_on_commit_callbacks)
    # then the places are in PostGIS and the rejected rows are reported, as from the disk
    assert job.state == ImportState.DONE, job.error
    assert (job.added, job.rejected) == (4, 7)
    assert Place.objects.filter(dataset=dataset).count() == 4
    assert "fetch_file" in job.report["step_seconds"]
    rejections = admin_client.get(_url("rejections_csv", job))
    text = b"".join(rejections.streaming_content).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text[1:])))
    assert [(row[0], row[2]) for row in rows[1:]] == [
        ("4", "missing_geometry"),
        ("5", "bad_coordinates"),
        ("6", "bad_coordinates"),
        ("7", "bad_coordinates"),
        ("8", "bad_coordinates"),
        ("9", "duplicate_key"),
        ("10", "missing_key"),
    ]
    assert list(temp_dir.iterdir()) == []


def test_geopackage_from_the_bucket_is_read_from_a_local_copy(
    bucket, temp_dir, sample_regions, tmp_path
):
    # given a GeoPackage (SQLite: GDAL must open it by path) with one feature lacking geometry
    client, name = bucket
    path = tmp_path / "chapels.gpkg"
    pyogrio.write_arrow(
        pa.table(
            {
                "id": ["g1", "g2", "g3"],
                "name": ["Chapel", "Temple", "Nowhere"],
                "geometry": [
                    Point(-1.5, 53.8).wkb.tobytes(),
                    Point(-2.2, 53.5).wkb.tobytes(),
                    None,
                ],
            }
        ),
        path,
        layer="places",
        driver="GPKG",
        geometry_name="geometry",
        geometry_type="Point",
        crs="EPSG:4326",
    )
    dataset = dataset_get_or_create(slug="s3-gpkg")
    # when the upload service stores it and a worker runs the job (twice: a redelivery)
    job = jobs.import_job_create(path=path, dataset=dataset)
    assert _keys(client, name) == [f"media/{job.file.name}"]
    assert import_job_run(job.pk) == ImportState.DONE
    assert import_job_run(job.pk) == ImportState.DONE
    job.refresh_from_db()
    # then its features are places and the one without geometry is rejected
    assert (job.format, job.added, job.rejected) == ("gpkg", 2, 1)
    place = Place.objects.get(dataset=dataset, source_key="g1")
    assert (round(place.location.x, 6), round(place.location.y, 6)) == (-1.5, 53.8)
    assert list(job.rejections.values_list("reason", flat=True)) == ["missing_geometry"]
    assert list(temp_dir.iterdir()) == []


def test_a_stored_copy_changed_in_the_bucket_is_not_imported(
    bucket, temp_dir, sample_regions, tmp_path
):
    # given a job whose stored file was replaced in the bucket after the upload's checks
    client, name = bucket
    path = tmp_path / "places.csv"
    path.write_text("id,name,lon,lat\nk1,Chapel,-0.1,51.5\n", encoding="utf-8")
    job = jobs.import_job_create(path=path, dataset=dataset_get_or_create(slug="s3-changed"))
    client.put_object(
        Bucket=name,
        Key=f"media/{job.file.name}",
        Body=b"id,name,lon,lat\nk1,Chapel,-0.1,51.5\nk2,Smuggled,-0.2,51.6\n",
    )
    # when a worker runs it
    assert import_job_run(job.pk) == ImportState.FAILED
    job.refresh_from_db()
    # then it fails saying so, nothing is imported and no local copy is left
    assert "is not the file that was uploaded" in job.error
    assert not Place.objects.filter(dataset=job.dataset).exists()
    assert list(temp_dir.iterdir()) == []


def test_a_stored_copy_gone_from_the_bucket_fails_the_job_with_the_reason(
    bucket, temp_dir, sample_regions, tmp_path
):
    client, name = bucket
    path = tmp_path / "places.csv"
    path.write_text("id,name,lon,lat\nk1,Chapel,-0.1,51.5\n", encoding="utf-8")
    job = jobs.import_job_create(path=path, dataset=dataset_get_or_create(slug="s3-gone"))
    client.delete_object(Bucket=name, Key=f"media/{job.file.name}")
    assert import_job_run(job.pk) == ImportState.FAILED
    job.refresh_from_db()
    assert "is gone" in job.error
    assert list(temp_dir.iterdir()) == []
