"""Downloads when files are stored in a bucket (UPLOADS_S3_BUCKET): the analytics worker builds
the file on its own disk and stores it in the bucket; web, which shares no disk with it, serves
it from there; the clean-up removes it there. The bucket is moto's S3 server (tests/s3.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from django.contrib.gis.geos import Point

from analytics.download_tasks import download_job_build
from analytics.downloads import services
from analytics.models_downloads import DownloadJob, DownloadStatus
from places.services import dataset_get_or_create, place_create

pytestmark = pytest.mark.django_db

DOWNLOAD = "/api/v1/downloads/places/"


def _keys(client, name: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=name).get("Contents", []))


def test_a_built_download_is_stored_in_the_bucket_served_from_it_and_removed_there(
    client, bucket, temp_dir, sample_regions, clear_cache, replica_caught_up, settings
):
    # given three places, a selection too big to answer at once
    s3, name = bucket
    settings.DOWNLOADS_SYNC_MAX_PLACES = 2
    dataset = dataset_get_or_create(slug="dl-bucket")
    for key, lon in (("a", -0.12), ("b", -0.10), ("c", -0.08)):
        place_create(
            dataset=dataset,
            source_key=key,
            data={"name": f"Chapel {key}", "religion": "christian", "location": Point(lon, 51.5)},
        )
    asked = client.get(DOWNLOAD, {"dataset": "dl-bucket"})
    assert asked.status_code == 202
    job_id = asked.json()["id"]
    # when the worker builds it
    assert download_job_build(job_id) == DownloadStatus.READY
    # then the file is in the bucket, not on the disk, and the worker's scratch copy is gone
    job = DownloadJob.objects.get(pk=job_id)
    assert _keys(s3, name) == [f"media/{job.file_name}"]
    assert not Path(settings.MEDIA_ROOT).exists()
    assert list(temp_dir.iterdir()) == []
    # and web serves it from the bucket, whole
    answer = client.get(f"/api/v1/downloads/{job_id}/file/")
    assert answer.status_code == 200
    content = b"".join(answer.streaming_content)
    assert len(content) == job.size_bytes
    table = pq.read_table(io.BytesIO(content))
    assert sorted(table.column("name").to_pylist()) == ["Chapel a", "Chapel b", "Chapel c"]
    # and a second run of the task changes nothing
    assert download_job_build(job_id) == DownloadStatus.READY
    assert _keys(s3, name) == [f"media/{job.file_name}"]
    # when the data moves on and the clean-up runs past the keeping time
    place_create(
        dataset=dataset,
        source_key="d",
        data={"name": "Chapel d", "religion": "christian", "location": Point(-0.06, 51.5)},
    )
    settings.DOWNLOADS_KEEP_SECONDS = 0
    assert services.downloads_clean() == [job_id]
    # then the file is gone from the bucket and the job says so
    assert _keys(s3, name) == []
    assert client.get(f"/api/v1/downloads/{job_id}/file/").status_code == 410


def test_a_download_lost_from_the_bucket_is_built_again_when_asked_for(
    client, bucket, temp_dir, sample_regions, clear_cache, replica_caught_up, settings
):
    s3, name = bucket
    settings.DOWNLOADS_SYNC_MAX_PLACES = 0
    dataset = dataset_get_or_create(slug="dl-bucket-lost")
    place_create(
        dataset=dataset,
        source_key="a",
        data={"name": "Chapel", "religion": "christian", "location": Point(-0.1, 51.5)},
    )
    job_id = client.get(DOWNLOAD, {"dataset": "dl-bucket-lost"}).json()["id"]
    download_job_build(job_id)
    s3.delete_object(Bucket=name, Key=f"media/{DownloadJob.objects.get(pk=job_id).file_name}")
    assert client.get(f"/api/v1/downloads/{job_id}/file/").status_code == 409
    again = client.get(DOWNLOAD, {"dataset": "dl-bucket-lost"})
    assert (again.json()["id"], again.json()["status"]) == (job_id, "pending")
    assert download_job_build(job_id) == DownloadStatus.READY
    assert client.get(f"/api/v1/downloads/{job_id}/file/").status_code == 200
