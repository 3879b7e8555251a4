"""Import behaviour the first version got wrong or left open (found in review)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pyogrio
import pytest
from django.contrib.gis.geos import Point

from ingestion import selectors
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.readers import UnreadableFile
from ingestion.services import imports
from ingestion.services.imports import import_job_execute
from ingestion.services.imports import stage as stage_phase
from ingestion.services.jobs import import_job_create
from places.models import Place, PlaceChange, PlaceSource, PlaceStatus
from places.services import dataset_get_or_create, place_update
from tests.conftest import FIXTURES

pytestmark = pytest.mark.django_db


def _run(path: Path, slug: str, **kwargs) -> ImportJob:
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(job_id=import_job_create(path=path, dataset=dataset, **kwargs).pk)


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_geopackage_features_keep_their_geometry(sample_regions, tmp_path):
    # given a GeoPackage, whose geometry column is called "geom"
    path = tmp_path / "places.gpkg"
    table = pa.table(
        {
            "id": ["g1", "g2"],
            "name": ["Chapel", "Temple"],
            "geometry": [Point(-1.5, 53.8).wkb.tobytes(), Point(-2.2, 53.5).wkb.tobytes()],
        }
    )
    pyogrio.write_arrow(
        table,
        path,
        layer="places",
        driver="GPKG",
        geometry_name="geometry",
        geometry_type="Point",
        crs="EPSG:4326",
    )
    # when it is imported
    job = _run(path, "gpkg")
    # then both features are places at their coordinates
    assert (job.format, job.added, job.rejected) == ("gpkg", 2, 0)
    place = Place.objects.get(dataset=job.dataset, source_key="g1")
    assert (round(place.location.x, 6), round(place.location.y, 6)) == (-1.5, 53.8)


def test_three_dimensional_geometries_are_stored_flat(sample_regions, tmp_path):
    path = tmp_path / "z.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"id": "z1", "name": "Hill chapel"},
                        "geometry": {"type": "Point", "coordinates": [-3.0, 54.5, 950.0]},
                    }
                ],
            }
        )
    )
    job = _run(path, "three-d")
    assert job.state == ImportState.DONE, job.error
    place = Place.objects.get(dataset=job.dataset)
    assert not place.location.hasz


def test_first_valid_row_wins_a_duplicate_key(sample_regions, tmp_path):
    path = _csv(tmp_path, "dup.csv", "id,name,lon,lat\nk1,Broken,abc,51\nk1,Good,-0.1,51.5\n")
    job = _run(path, "first-valid")
    assert Place.objects.get(dataset=job.dataset, source_key="k1").name == "Good"
    assert list(job.rejections.values_list("row_number", "reason")) == [(2, "bad_coordinates")]


def test_a_csv_is_read_once_even_when_rows_lose_to_a_duplicate_key(
    sample_regions, tmp_path, monkeypatch
):
    # Staging keeps the original values of every row whose key may repeat an earlier one,
    # so the rejected-row report needs no second read of the file.
    def second_read(*args, **kwargs):
        raise AssertionError("the file was read a second time")

    monkeypatch.setattr(stage_phase, "raw_chunks", second_read)
    lines = ["id,name,lon,lat,note"] + [f"k{i},N{i},-0.1,51.5," for i in range(300)]
    lines += ["k7,Again,-0.2,51.6,=cmd()", "k299,Last again,-0.3,51.7,"]
    job = _run(_csv(tmp_path, "dups.csv", "\n".join(lines) + "\n"), "read-once")
    assert job.state == ImportState.DONE, job.error
    assert job.added == 300
    rejected = {r.row_number: (r.reason, r.raw) for r in job.rejections.all()}
    assert rejected == {
        302: (
            "duplicate_key",
            {"id": "k7", "name": "Again", "lon": "-0.2", "lat": "51.6", "note": "=cmd()"},
        ),
        303: (
            "duplicate_key",
            {"id": "k299", "name": "Last again", "lon": "-0.3", "lat": "51.7", "note": ""},
        ),
    }


def test_rejected_values_keep_the_files_column_order(sample_regions, tmp_path):
    # A job started outside the admin (no inspection) still reports columns in file order.
    text = "zeta,id,name,lon,lat\nz,k1,One,-0.1,51.5\ny,k1,Again,-0.1,51.5\n"
    job = _run(_csv(tmp_path, "order.csv", text), "column-order")
    assert not job.inspection
    assert selectors.import_rejection_value_keys(job=job) == ["zeta", "id", "name", "lon", "lat"]


def test_features_without_attributes_that_share_a_key_are_reported(sample_regions, tmp_path):
    # No attribute columns at all: the reported original values are an empty object.
    features = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": c}}
        for c in ([-0.1, 51.5], [-0.2, 51.6], [-0.3, 51.7])
    ]
    path = tmp_path / "bare.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    job = _run(path, "bare-features", mapping={"key": "{_kind}"})
    assert job.state == ImportState.DONE, job.error
    assert job.added == 1
    rejected = list(
        job.rejections.order_by("row_number").values_list("row_number", "reason", "raw")
    )
    assert rejected == [(2, "duplicate_key", {}), (3, "duplicate_key", {})]


def test_an_import_inside_a_transaction_applies_on_its_own_connection(
    sample_regions, settings, tmp_path
):
    # The test's transaction holds the staged rows and the job row: connections of their
    # own could neither see the one nor take the other, so the batches run on this one.
    settings.IMPORT_APPLY_WORKERS = 2
    settings.IMPORT_BATCH_ROWS = 2
    lines = ["id,name,lon,lat"] + [f"t{i},N{i},-0.1,51.5" for i in range(7)]
    job = _run(_csv(tmp_path, "tx.csv", "\n".join(lines) + "\n"), "in-transaction")
    assert job.state == ImportState.DONE, job.error
    assert (job.added, job.report["batches"]) == (7, 4)


def test_over_long_values_reject_one_row_not_the_file(sample_regions, tmp_path):
    long_key = "k" * 300
    path = _csv(
        tmp_path,
        "long.csv",
        f"id,name,lon,lat,start_date\n{long_key},Too long,-0.1,51.5,\n"
        f"ok,Fine,-0.1,51.5,{'about ' * 40}1900\n",
    )
    job = _run(path, "long-values")
    assert job.state == ImportState.DONE, job.error
    assert list(job.rejections.values_list("reason", flat=True)) == ["key_too_long"]
    assert len(Place.objects.get(dataset=job.dataset, source_key="ok").start_date_raw) > 200


def test_ragged_csv_rows_are_rejected_and_the_rest_kept(sample_regions, tmp_path):
    path = _csv(
        tmp_path, "ragged.csv", "id,name,lon,lat\nr1,One,-0.1,51.5\nr2,Two\nr3,Three,-0.2,51.6\n"
    )
    job = _run(path, "ragged")
    assert job.added == 2
    rejection = job.rejections.get()
    assert rejection.reason == "malformed_row"
    assert rejection.raw == {"_text": "r2,Two"}
    assert rejection.row_number == 3  # the header is line 1
    assert "line number unknown" not in rejection.detail


def test_malformed_rows_are_numbered_by_the_line_they_start_on(sample_regions, tmp_path):
    """A quoted value may span lines, so lines and records differ; repeated text too."""
    path = _csv(
        tmp_path,
        "lines.csv",
        'id,name,lon,lat\nm1,"Two\nlines",-0.1,51.5\nbad\nm2,Ok,-0.1,51.5\nbad\n'
        'm3,Three,-0.2,51.6,extra\n,No key,-0.1,51.5\nm2,"Again\nand again",-0.1,51.5\n'
        'm4,Last,-0.1,51.5\n"unclosed,x,0,0\n',
    )
    job = _run(path, "lines")
    assert job.added == 3
    rows = list(job.rejections.order_by("row_number").values_list("row_number", "reason", "detail"))
    assert rows[:5] == [
        (4, "malformed_row", "expected 4 fields, found 1"),
        (6, "malformed_row", "expected 4 fields, found 1"),
        (7, "malformed_row", "expected 4 fields, found 5"),
        (8, "missing_key", rows[3][2]),
        (9, "duplicate_key", "key m2 was already used by row 5"),
    ]
    # m4 is on line 11, after the two-line value of line 9; nothing after it is lost
    assert Place.objects.filter(dataset=job.dataset, source_key="m4").exists()


def test_key_template_with_format_spec_is_refused(tmp_path):
    path = _csv(tmp_path, "t.csv", "id,lon,lat\n1,0,0\n")
    with pytest.raises(UnreadableFile, match="plain column name"):
        import_job_create(
            path=path, dataset=dataset_get_or_create(slug="spec"), mapping={"key": "{id:>999}"}
        )


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_unknown_coordinate_system_is_refused_before_queueing(tmp_path):
    # given a zipped shapefile whose .prj is a local engineering system (no EPSG equivalent)
    folder = tmp_path / "shp"
    folder.mkdir()
    table = pa.table({"id": ["w1"], "geometry": [Point(1, 2).wkb.tobytes()]})
    pyogrio.write_arrow(
        table,
        folder / "site.shp",
        driver="ESRI Shapefile",
        geometry_name="geometry",
        geometry_type="Point",
        crs=None,
    )
    (folder / "site.prj").write_text('LOCAL_CS["site grid",UNIT["metre",1]]')
    path = tmp_path / "site.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for member in folder.iterdir():
            archive.write(member, member.name)
    # then the job is refused before anything is queued
    with pytest.raises(UnreadableFile, match="coordinate system"):
        import_job_create(path=path, dataset=dataset_get_or_create(slug="weird-crs"))
    assert not ImportJob.objects.filter(dataset__slug="weird-crs").exists()


def test_append_mode_adds_new_places_and_leaves_existing_ones(sample_regions, tmp_path):
    first = _run(_csv(tmp_path, "a.csv", "id,name,lon,lat\na1,Old,-0.1,51.5\n"), "append")
    job = _run(
        _csv(tmp_path, "b.csv", "id,name,lon,lat\na1,Renamed,-0.1,51.5\na2,New,-0.2,51.5\n"),
        "append",
        mode=ImportMode.APPEND,
    )
    assert (job.added, job.updated, job.unchanged) == (1, 0, 1)
    assert Place.objects.get(dataset=first.dataset, source_key="a1").name == "Old"


def test_snapshot_mode_retires_places_missing_from_the_file(sample_regions, tmp_path):
    # given a dataset of three places
    _run(
        _csv(
            tmp_path, "s1.csv", "id,name,lon,lat\ns1,A,-0.1,51.5\ns2,B,-0.2,51.5\ns3,C,-0.3,51.5\n"
        ),
        "snapshot",
    )
    # when a snapshot holds s1, a rejected row for s3, and no s2
    snapshot = _csv(tmp_path, "s2.csv", "id,name,lon,lat\ns1,A,-0.1,51.5\ns3,C,999,51.5\n")
    dry = _run(snapshot, "snapshot", mode=ImportMode.SNAPSHOT, dry_run=True)
    job = _run(snapshot, "snapshot", mode=ImportMode.SNAPSHOT)
    # then only s2 is retired (a rejected row does not count as missing), and it is logged
    assert dry.retired == 1
    assert job.retired == 1
    places = {p.source_key: p for p in Place.objects.filter(dataset=job.dataset)}
    assert places["s2"].status == PlaceStatus.RETIRED
    assert places["s2"].end_date is not None
    assert places["s1"].status == places["s3"].status == PlaceStatus.ACTIVE
    change = PlaceChange.objects.filter(place=places["s2"]).latest("seq")
    assert (change.operation, change.import_job_id) == ("retire", job.pk)
    # and running the same snapshot again retires nothing more
    assert _run(snapshot, "snapshot", mode=ImportMode.SNAPSHOT).retired == 0


def test_curator_fix_survives_when_the_place_had_no_source_values(sample_regions, admin_user):
    # given a place whose source values were never recorded (older data, or curator-made)
    job = _run(FIXTURES / "nasty_places.csv", "no-source-values")
    PlaceSource.objects.filter(place__dataset=job.dataset).delete()
    Place.objects.filter(dataset=job.dataset).update(source_fingerprint=None)
    # when the unchanged file is imported, a curator fixes a name, and it is imported again
    _run(FIXTURES / "nasty_places.csv", "no-source-values")
    place = Place.objects.get(dataset=job.dataset, source_key="p9")
    place_update(place=place, data={"name": "Grove (checked)"}, user=admin_user)
    again = _run(FIXTURES / "nasty_places.csv", "no-source-values")
    # then the fix stays
    place.refresh_from_db()
    assert place.name == "Grove (checked)"
    assert again.updated == 0


def test_a_job_delivered_too_often_fails_instead_of_looping(sample_regions):
    job = import_job_create(
        path=FIXTURES / "nasty_places.csv", dataset=dataset_get_or_create(slug="looping")
    )
    ImportJob.objects.filter(pk=job.pk).update(
        state=ImportState.RUNNING, attempts=imports.MAX_ATTEMPTS
    )
    result = import_job_execute(job_id=job.pk)
    assert result.state == ImportState.FAILED
    assert "gave up" in result.error
    assert not Place.objects.filter(dataset=job.dataset).exists()


def test_dry_run_samples_of_retirements_are_spread_over_the_dataset(sample_regions, tmp_path):
    # given a dataset of 60 imported places
    rows = "".join(f"k{i},N{i},-0.1,51.{i:02d}\n" for i in range(60))
    first = _run(_csv(tmp_path, "all.csv", "id,name,lon,lat\n" + rows), "spread-retire")
    assert first.added == 60
    # when a snapshot dry run of a file holding only one of them is made
    job = import_job_create(
        path=_csv(tmp_path, "one.csv", "id,name,lon,lat\nk0,N0,-0.1,51.00\n"),
        dataset=first.dataset,
        mode=ImportMode.SNAPSHOT,
        dry_run=True,
    )
    job = import_job_execute(job_id=job.pk)
    # then the samples of what it would retire come from across the dataset, in id order
    assert job.retired == 59
    sampled = [row["place_id"] for row in job.report["samples"]["retired"]]
    missing = sorted(
        Place.objects.filter(dataset=first.dataset)
        .exclude(source_key="k0")
        .values_list("id", flat=True)
    )
    assert len(sampled) == 20
    assert sampled == sorted(sampled)
    assert set(sampled) <= set(missing)
    assert sampled != missing[:20]
