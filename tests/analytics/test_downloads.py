"""Downloads: GeoParquet and CSV files of a selection, at once when small, by a task when big.

The files are read back with pyarrow (and with GDAL through pyogrio where its build has the
Parquet driver) and compared with what PostGIS says about the same places.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tracemalloc
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import geopandas
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest
from django.contrib.gis.geos import MultiPolygon, Point, Polygon
from django.db import connection, connections
from django.utils import timezone

from analytics import download_apis
from analytics.download_tasks import download_job_build, downloads_maintain
from analytics.downloads import files, selectors, services
from analytics.models_downloads import DownloadJob, DownloadStatus
from analytics.replica import replica_configured
from config.routers import REPLICA
from places.models import Dataset, Place
from places.services import dataset_get_or_create, place_create, place_update
from places.serving.fields import PROPERTIES, csv_header
from places.serving.query import PlaceQuery

pytestmark = pytest.mark.django_db(databases=["default", "replica"])

LIST = "/api/v1/places/"
DOWNLOAD = "/api/v1/downloads/places/"
LICENCE = "ODbL 1.0"
ATTRIBUTION = "© OpenStreetMap contributors"


@pytest.fixture
def replica_caught_up() -> Iterator[None]:
    """The replica alias reads through the primary's connection, as a replica that has
    replayed everything would (the test's own transaction is never committed)."""
    replica = connections[REPLICA]
    connections[REPLICA] = connections["default"]
    try:
        yield
    finally:
        connections[REPLICA] = replica


@pytest.fixture
def chapels(sample_regions) -> Dataset:
    """Three places in London: one with a footprint, one whose name a spreadsheet would run."""
    dataset = dataset_get_or_create(
        slug="dl-chapels",
        defaults={"name": "Chapels", "licence": LICENCE, "attribution": ATTRIBUTION},
    )
    square = Polygon(
        ((-0.1280, 51.5070), (-0.1270, 51.5070), (-0.1270, 51.5078), (-0.1280, 51.5070)),
        srid=4326,
    )
    rows = [
        ("a", "St Martin", "christian", Point(-0.1275, 51.5074, srid=4326), square),
        ("b", "=HYPERLINK(1)", "unknown", Point(-0.0984, 51.5138, srid=4326), None),
        ("c", "Bevis Marks", "jewish", Point(-0.0784, 51.5144, srid=4326), None),
    ]
    for key, name, religion, point, polygon in rows:
        data = {"name": name, "religion": religion, "location": point}
        if key == "c":
            data["start_date"] = date(1701, 9, 1)
        if polygon is not None:
            data["footprint"] = MultiPolygon(polygon, srid=4326)
        place_create(dataset=dataset, source_key=key, data=data)
    return dataset


def db_rows(dataset: Dataset) -> dict[int, tuple]:
    """What PostGIS says about each place: x, y, point WKB, footprint WKB and WKT."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, ST_X(location), ST_Y(location), ST_AsBinary(location), "
            "ST_AsBinary(footprint), ST_AsText(footprint) FROM places_place "
            "WHERE dataset_id = %s",
            [dataset.pk],
        )
        return {
            row[0]: tuple(bytes(v) if isinstance(v, memoryview) else v for v in row[1:])
            for row in cursor.fetchall()
        }


def db_extent(dataset: Dataset, column: str) -> list[float]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM "
            f"(SELECT ST_Extent({column}) AS e FROM places_place WHERE dataset_id = %s) s",
            [dataset.pk],
        )
        return list(cursor.fetchone())


def body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_small_selection_is_a_geoparquet_file_at_once(client, chapels, clear_cache):
    # when the places list is asked for the selection as parquet
    response = client.get(LIST, {"format": "parquet", "dataset": "dl-chapels"})
    # then the file comes at once, with licence and attribution in its headers
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    assert 'filename="places.parquet"' in response["Content-Disposition"]
    assert 'rel="license"' in response["Link"]
    assert "/api/v1/datasets/dl-chapels/" in response["Link"]
    assert json.loads(response["X-Datasets"]) == [
        {"slug": "dl-chapels", "licence": LICENCE, "attribution": ATTRIBUTION}
    ]
    table = pq.read_table(io.BytesIO(response.content))
    metadata = table.schema.metadata
    # and the geo metadata is GeoParquet 1.1.0's, with the covering and the real extents
    geo = json.loads(metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    assert geo["primary_column"] == "geometry"
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB"
    assert column["geometry_types"] == ["Point"]
    assert "crs" not in column  # OGC:CRS84 by the specification
    assert column["covering"]["bbox"] == {
        "xmin": ["bbox", "xmin"],
        "ymin": ["bbox", "ymin"],
        "xmax": ["bbox", "xmax"],
        "ymax": ["bbox", "ymax"],
    }
    assert column["bbox"] == pytest.approx(db_extent(chapels, "location"))
    footprint = geo["columns"]["footprint"]
    assert footprint["encoding"] == "WKB"
    assert footprint["bbox"] == pytest.approx(db_extent(chapels, "footprint"))
    # and each row's geometry and box are PostGIS's own
    expected = db_rows(chapels)
    assert sorted(table.column("id").to_pylist()) == sorted(expected)
    for row in table.to_pylist():
        x, y, point_wkb, footprint_wkb, _ = expected[row["id"]]
        assert row["geometry"] == point_wkb
        assert row["bbox"] == {"xmin": x, "ymin": y, "xmax": x, "ymax": y}
        assert row["footprint"] == footprint_wkb
        assert row["dataset"] == "dl-chapels"
        place = Place.objects.get(pk=row["id"])
        assert (row["start_date"], row["updated_at"]) == (place.start_date, place.updated_at)
        assert row["denominations"] == place.denominations
    assert table.column("id").to_pylist() == sorted(expected)  # in id order
    # and the datasets' licence and attribution are in the file itself
    datasets = json.loads(metadata[b"places:datasets"])
    assert [(d["slug"], d["licence"], d["attribution"]) for d in datasets] == [
        ("dl-chapels", LICENCE, ATTRIBUTION)
    ]
    # and the same request again is a 304 by its ETag
    again = client.get(
        LIST, {"format": "parquet", "dataset": "dl-chapels"}, HTTP_IF_NONE_MATCH=response["ETag"]
    )
    assert again.status_code == 304


def test_parquet_read_by_gdal_has_the_database_geometries(client, chapels, clear_cache, tmp_path):
    if "Parquet" not in pyogrio.list_drivers():
        pytest.skip("this GDAL build (pyogrio's wheel) has no Parquet driver")
    # given the selection's file on disk
    response = client.get(DOWNLOAD, {"format": "parquet", "dataset": "dl-chapels"})
    path = tmp_path / "places.parquet"
    path.write_bytes(response.content)
    # when GDAL reads it
    meta, table = pyogrio.read_arrow(path)
    # then it finds the geometry column, CRS84, and PostGIS's geometries
    assert "4326" in meta["crs"] or "CRS84" in meta["crs"]
    geometries = dict(
        zip(
            table.column("id").to_pylist(),
            table.column(meta["geometry_name"]).to_pylist(),
            strict=True,
        )
    )
    assert geometries == {pk: row[2] for pk, row in db_rows(chapels).items()}


def test_geopandas_reads_the_crs_the_geometries_and_filters_by_the_covering(
    client, chapels, clear_cache, tmp_path
):
    # given the selection's file on disk
    response = client.get(DOWNLOAD, {"format": "parquet", "dataset": "dl-chapels"})
    path = tmp_path / "places.parquet"
    path.write_bytes(response.content)
    # when geopandas (its own reader of the specification) reads it
    frame = geopandas.read_parquet(path)
    # then the CRS is WGS 84 longitude first, and the geometries are PostGIS's
    assert frame.crs.equals("OGC:CRS84")
    expected = db_rows(chapels)
    assert dict(zip(frame["id"], frame.geometry.to_wkb(), strict=True)) == {
        pk: row[2] for pk, row in expected.items()
    }
    # (the second geometry column is decoded too, from its entry in the metadata)
    footprints = {
        pk: geometry.wkb
        for pk, geometry in zip(frame["id"], frame["footprint"], strict=True)
        if geometry is not None
    }
    assert footprints == {pk: row[3] for pk, row in expected.items() if row[3] is not None}
    assert len(footprints) == 1
    # and a box filter through the bbox covering keeps the places PostGIS finds in that box
    box = (-0.13, 51.50, -0.09, 51.52)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id FROM places_place WHERE dataset_id = %s AND "
            "ST_Intersects(location, ST_MakeEnvelope(%s, %s, %s, %s, 4326))",
            [chapels.pk, *box],
        )
        inside = {row[0] for row in cursor.fetchall()}
    assert 0 < len(inside) < len(expected)
    assert set(geopandas.read_parquet(path, bbox=box)["id"]) == inside


def test_csv_has_lon_lat_and_the_footprint_as_wkt(client, chapels, clear_cache):
    # when the selection is asked for as CSV
    response = client.get(DOWNLOAD, {"format": "csv", "dataset": "dl-chapels"})
    # then it is the list's columns and the footprint's WKT, cells spreadsheet-safe
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert json.loads(response["X-Datasets"])[0]["licence"] == LICENCE
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == [*csv_header(list(PROPERTIES)), "footprint_wkt"]
    records = {int(r[0]): dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    expected = db_rows(chapels)
    assert sorted(records) == sorted(expected)
    for pk, (x, y, _, _, wkt) in expected.items():
        assert float(records[pk]["lon"]) == pytest.approx(x, abs=1e-7)
        assert float(records[pk]["lat"]) == pytest.approx(y, abs=1e-7)
        assert records[pk]["footprint_wkt"] == (wkt or "")
    assert any(r["footprint_wkt"].startswith("MULTIPOLYGON") for r in records.values())
    assert "'=HYPERLINK(1)" in {r["name"] for r in records.values()}


@pytest.mark.parametrize(
    ("url", "params", "field"),
    [
        (DOWNLOAD, {"format": "xlsx"}, "format"),
        (DOWNLOAD, {"religion": "nope"}, "religion"),
        (DOWNLOAD, {"bbox": "1,2,3"}, "bbox"),
        (DOWNLOAD, {"dataset": "no-such-dataset"}, "dataset"),
        (LIST, {"format": "parquet", "limit": "10"}, "limit"),
        (LIST, {"format": "parquet", "cursor": "abc"}, "cursor"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(client, url, params, field):
    response = client.get(url, params)
    assert response.status_code == 400
    assert field in response.json()


@pytest.fixture
def big_from_three(settings) -> None:
    """A selection of three places counts as big, and is fetched one row at a time."""
    settings.DOWNLOADS_SYNC_MAX_PLACES = 2
    settings.DOWNLOADS_CHUNK_ROWS = 1


def test_big_selection_is_built_by_the_task_with_progress(
    client, chapels, clear_cache, replica_caught_up, big_from_three, monkeypatch
):
    # given a request for a big selection: a job, not a file
    asked = client.get(DOWNLOAD, {"dataset": "dl-chapels"})
    assert asked.status_code == 202
    job = DownloadJob.objects.get(pk=asked.json()["id"])
    assert asked["Location"].endswith(f"/api/v1/downloads/{job.pk}/")
    assert asked.json()["status"] == "pending"
    assert asked.json()["file"] is None
    # and a spy that reads the job's status after each chunk is fetched
    seen: list[tuple[str, int, int]] = []
    batch = files._parquet_batch

    def spy(rows: list[tuple]) -> pa.RecordBatch:
        status = client.get(asked["Location"]).json()
        seen.append((status["status"], status["rows_done"], status["rows_estimate"]))
        return batch(rows)

    monkeypatch.setattr(files, "_parquet_batch", spy)
    # when the task runs (called directly, as a worker would)
    assert download_job_build(job.pk) == DownloadStatus.READY
    # then the status showed the rows done against the exact count as it went
    assert seen == [("running", 0, 3), ("running", 1, 3), ("running", 2, 3)]
    done = client.get(asked["Location"]).json()
    assert (done["status"], done["rows_done"], done["progress"]) == ("ready", 3, 1.0)
    assert done["computed_on"] in {"replica", "primary"}
    assert done["datasets"][0]["attribution"] == ATTRIBUTION
    # and the file under MEDIA_ROOT, served by its link, holds the places
    file = client.get(done["file"])
    assert file.status_code == 200
    assert 'rel="license"' in file["Link"]
    table = pq.read_table(io.BytesIO(body(file)))
    assert sorted(table.column("id").to_pylist()) == sorted(db_rows(chapels))
    assert table.schema.metadata[b"places:data_version"].decode() == job.data_version
    # and a second run of the task changes nothing
    path = services.download_job_path(DownloadJob.objects.get(pk=job.pk))
    written = path.stat().st_mtime_ns
    monkeypatch.setattr(files, "_parquet_batch", batch)
    assert download_job_build(job.pk) == DownloadStatus.READY
    assert path.stat().st_mtime_ns == written
    assert client.get(done["file"], HTTP_IF_NONE_MATCH=file["ETag"]).status_code == 304


def test_same_selection_and_version_reuse_the_file_and_a_change_makes_a_new_one(
    client, chapels, clear_cache, replica_caught_up, big_from_three, settings
):
    # given the selection built once
    first = client.get(DOWNLOAD, {"dataset": "dl-chapels"}).json()
    download_job_build(first["id"])
    # when it is asked for again at the same data version
    again = client.get(DOWNLOAD, {"dataset": "dl-chapels"})
    # then the answer points at the same file, and no job was added
    assert again.status_code == 303
    assert again["Location"] == again.json()["file"]
    assert again.json()["id"] == first["id"]
    assert DownloadJob.objects.count() == 1
    # when a place of the selection changes
    place = Place.objects.get(dataset=chapels, source_key="c")
    place_update(place=place, data={"name": "Bevis Marks Synagogue"})
    changed = client.get(DOWNLOAD, {"dataset": "dl-chapels"})
    # then it is another job, built anew with the new name
    assert changed.status_code == 202
    assert changed.json()["id"] != first["id"]
    download_job_build(changed.json()["id"])
    newer = DownloadJob.objects.get(pk=changed.json()["id"])
    names = pq.read_table(services.download_job_path(newer)).column("name").to_pylist()
    assert "Bevis Marks Synagogue" in names
    # and the periodic clean-up removes the old version's file; its link says it is gone
    old = DownloadJob.objects.get(pk=first["id"])
    settings.DOWNLOADS_KEEP_SECONDS = 0
    assert downloads_maintain() == [old.pk]
    assert not services.download_job_path(old).exists()
    assert services.download_job_path(newer).exists()
    assert client.get(f"/api/v1/downloads/{old.pk}/file/").status_code == 410


def test_a_job_whose_data_moved_before_its_build_expires(
    client, chapels, clear_cache, replica_caught_up, big_from_three, settings
):
    # given a job asked for, then a change to its selection before the task ran
    job_id = client.get(DOWNLOAD, {"dataset": "dl-chapels"}).json()["id"]
    place = Place.objects.get(dataset=chapels, source_key="a")
    place_update(place=place, data={"name": "St Martin-in-the-Fields"})
    # when the task runs
    assert download_job_build(job_id) == DownloadStatus.EXPIRED
    # then no file names the old version, and its link says so
    job = DownloadJob.objects.get(pk=job_id)
    assert job.file_name == ""
    assert client.get(f"/api/v1/downloads/{job_id}/file/").status_code == 410
    assert not list((Path(settings.MEDIA_ROOT) / services.FOLDER).glob("*.part"))


def test_a_big_selection_is_read_in_chunks_so_memory_stays_flat(gb_import, settings, tmp_path):
    # given the GB import (tens of thousands of places) and a writer measured twice
    selection = selectors.Selection(query=PlaceQuery(dataset_ids=(gb_import.dataset_id,)))

    def peak_while_writing(chunk_rows: int) -> tuple[int, int]:
        settings.DOWNLOADS_CHUNK_ROWS = chunk_rows
        with selectors.read_snapshot("default"):
            versions = selectors.selection_versions(query=selection.query, using="default")
            facts = selectors.selection_facts(query=selection.query, using="default")
            tracemalloc.start()
            try:
                with (tmp_path / f"{chunk_rows}.parquet").open("wb") as out:
                    rows = files.selection_write(
                        out=out,
                        selection=selection,
                        fmt="parquet",
                        facts=facts,
                        versions=versions,
                        using="default",
                    )
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        return rows, peak

    # when it writes the selection 2,000 rows at a time, and all of it at once
    rows, chunked = peak_while_writing(2_000)
    same_rows, whole = peak_while_writing(1_000_000)
    # then the chunked write held a fraction of what the whole selection takes
    assert rows == same_rows > 20_000
    assert chunked * 5 < whole, (chunked, whole)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_the_tasks_file_is_the_file_answered_at_once(
    client, chapels, clear_cache, replica_caught_up, settings, fmt
):
    # given the selection answered at once
    at_once = client.get(DOWNLOAD, {"format": fmt, "dataset": "dl-chapels"})
    assert at_once.status_code == 200
    # when the same selection counts as big, through the places list for parquet
    settings.DOWNLOADS_SYNC_MAX_PLACES = 2
    url = LIST if fmt == "parquet" else DOWNLOAD
    asked = client.get(url, {"format": fmt, "dataset": "dl-chapels"})
    assert asked.status_code == 202
    assert download_job_build(asked.json()["id"]) == DownloadStatus.READY
    # then the task's file holds the same bytes
    built = client.get(client.get(asked["Location"]).json()["file"])
    assert body(built) == at_once.content


def test_the_worker_finds_the_download_tasks_on_the_analytics_queue():
    # given the module Celery's autodiscovery imports for this app
    from analytics import tasks
    from config.celery import app

    # then it brings the downloads' tasks (nothing else is sure to import them in a
    # worker), which are routed to the analytics queue, and beat runs the clean-up
    assert tasks.download_tasks.download_job_build.name == "analytics.tasks.download_job_build"
    for name in ("analytics.tasks.download_job_build", "analytics.tasks.downloads_maintain"):
        assert app.amqp.router.route({}, name)["queue"].name == "analytics"
    assert "analytics.tasks.downloads_maintain" in {
        entry["task"] for entry in app.conf.beat_schedule.values()
    }


def test_beyond_the_active_jobs_limit_a_new_selection_is_a_429(
    client, chapels, clear_cache, replica_caught_up, big_from_three, settings
):
    # given one job pending, the most allowed
    settings.DOWNLOADS_MAX_ACTIVE_JOBS = 1
    first = client.get(DOWNLOAD, {"dataset": "dl-chapels"})
    assert first.status_code == 202
    # when another selection is asked for
    other = client.get(DOWNLOAD, {"dataset": "dl-chapels", "format": "csv"})
    # then it must wait, and the pending one is still answered
    assert other.status_code == 429
    assert other["Retry-After"]
    assert client.get(DOWNLOAD, {"dataset": "dl-chapels"}).json()["id"] == first.json()["id"]
    assert DownloadJob.objects.count() == 1


def test_a_job_whose_worker_went_silent_is_built_again_and_its_partial_file_removed(
    client, chapels, clear_cache, replica_caught_up, big_from_three, settings
):
    # given a job taken by a worker that died two hours ago, leaving half a file
    job_id = client.get(DOWNLOAD, {"dataset": "dl-chapels"}).json()["id"]
    two_hours_ago = timezone.now() - timedelta(hours=2)
    DownloadJob.objects.filter(pk=job_id).update(
        status=DownloadStatus.RUNNING, attempts=1, updated_at=two_hours_ago
    )
    folder = Path(settings.MEDIA_ROOT) / services.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    left = folder / f"places-{job_id}-dead.parquet.part1"
    left.write_bytes(b"PAR1 half")
    os.utime(left, (two_hours_ago.timestamp(), two_hours_ago.timestamp()))
    # when beat's maintenance looks for silent jobs and the build runs again
    assert services.download_jobs_stale() == [job_id]
    assert download_job_build(job_id) == DownloadStatus.READY
    services.downloads_clean()
    # then the job is built on its second attempt and the dead worker's file is gone
    job = DownloadJob.objects.get(pk=job_id)
    assert job.attempts == 2
    assert pq.read_table(services.download_job_path(job)).num_rows == 3
    assert not left.exists()
    # and a job that is running and not silent is left to its worker
    DownloadJob.objects.filter(pk=job_id).update(status=DownloadStatus.RUNNING)
    assert services.download_jobs_stale() == []
    assert download_job_build(job_id) == DownloadStatus.RUNNING


def test_a_built_job_whose_file_was_lost_is_built_again_when_asked_for(
    client, chapels, clear_cache, replica_caught_up, big_from_three
):
    # given a built job whose file disappeared (a volume emptied)
    job_id = client.get(DOWNLOAD, {"dataset": "dl-chapels"}).json()["id"]
    download_job_build(job_id)
    services.download_job_path(DownloadJob.objects.get(pk=job_id)).unlink()
    assert client.get(f"/api/v1/downloads/{job_id}/file/").status_code == 409
    # when the selection is asked for again
    again = client.get(DOWNLOAD, {"dataset": "dl-chapels"})
    # then the same job is queued again, and its build brings the file back
    assert (again.status_code, again.json()["id"], again.json()["status"]) == (
        202,
        job_id,
        "pending",
    )
    assert download_job_build(job_id) == DownloadStatus.READY
    assert client.get(f"/api/v1/downloads/{job_id}/file/").status_code == 200


def test_a_big_selection_is_built_on_the_streaming_replica(client, gb_import, clear_cache):
    if not replica_configured():
        pytest.skip("no REPLICA_DATABASE_URL: make test sets up the streaming replica")
    # given the committed GB import, and a request for all of it
    asked = client.get(DOWNLOAD, {"dataset": "osm-gb", "format": "csv"})
    assert asked.status_code == 202
    # when the task builds it
    assert download_job_build(asked.json()["id"]) == DownloadStatus.READY
    # then it was read on a server in recovery, and holds every place of the dataset
    job = DownloadJob.objects.get(pk=asked.json()["id"])
    assert job.computed_on == "replica"
    with services.download_job_path(job).open(encoding="utf-8") as fh:
        ids = [int(row["id"]) for row in csv.DictReader(fh)]
    assert sorted(ids) == sorted(
        Place.objects.filter(dataset_id=gb_import.dataset_id, status="active").values_list(
            "pk", flat=True
        )
    )


@pytest.mark.slow  # the broker client tries to connect for a few seconds
def test_an_unreachable_broker_leaves_the_job_pending_for_beat(caplog):
    # given a broker nobody listens on, and no publish retries (fresh pools for it)
    from config.celery import app

    saved = {key: app.conf[key] for key in ("broker_url", "task_publish_retry")}
    pools = (app._pool, app.amqp._producer_pool)
    app.conf.update(broker_url="redis://127.0.0.1:9/0", task_publish_retry=False)
    app._pool, app.amqp._producer_pool = None, None
    try:
        # when a job's task is queued
        download_apis._queue(123456)
    finally:
        if app._pool is not None:
            app._pool.force_close_all()
        app.conf.update(saved)
        app._pool, app.amqp._producer_pool = pools
    # then the request goes on, saying why the job waits
    assert "download job 123456 not queued: broker unreachable" in caplog.text
