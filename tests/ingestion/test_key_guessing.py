"""Keys for files as people have them: id columns under their usual names, and a key derived
from the content when a file has none (or its id column repeats)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
import pytest
from django.contrib.gis.geos import Point
from django.core.management import CommandError, call_command

from ingestion.mapping import CONTENT_KEY, CONTENT_KEY_NOTE, mapping_propose
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.services import inspection, jobs
from ingestion.services.imports import import_job_execute
from ingestion.staging.values import content_digests
from places.models import Place, PlaceStatus
from places.services import dataset_get_or_create

pytestmark = pytest.mark.django_db

DIGEST = re.compile(r"[0-9a-f]{32}")


def _run(path: Path, slug: str, **kwargs) -> ImportJob:
    dataset = dataset_get_or_create(slug=slug)
    return import_job_execute(
        job_id=jobs.import_job_create(path=path, dataset=dataset, **kwargs).pk
    )


def _inspected(path: Path, slug: str) -> ImportJob:
    job = jobs.import_job_create(
        path=path, dataset=dataset_get_or_create(slug=slug), wait_for_review=True
    )
    return inspection.import_job_inspect(job=job)


def _feature(lon: float, lat: float, properties: dict | None = None, **member) -> dict:
    return {
        "type": "Feature",
        **member,
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": properties,
    }


def _geojson(tmp_path: Path, name: str, features: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# --- which column is the key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "key"),
    [
        (["osm_type", "osm_id", "id"], "osm:{osm_type}/{osm_id}"),
        (["OSM_ID", "name"], "osm:{_kind}/{OSM_ID}"),
        (["Id", "name"], "{Id}"),
        (["name", "@id"], "{@id}"),
        (["OBJECTID", "NAME"], "{OBJECTID}"),
        (["FID", "name"], "{FID}"),
        (["fid", "name"], "{fid}"),
        (["gid", "name"], "{gid}"),
        (["ogc_fid", "name"], "{ogc_fid}"),
        (["UUID", "name"], "{UUID}"),
        (["uuid", "objectid", "id"], "{id}"),
        (["ref", "name"], CONTENT_KEY),
        ([], CONTENT_KEY),
    ],
)
def test_id_columns_are_recognised_under_their_usual_names_in_any_case(columns, key):
    assert mapping_propose(columns, has_geometry=True).key == key


def test_an_id_column_known_to_repeat_is_passed_over_for_the_next_or_the_content():
    assert mapping_propose(["id", "gid"], has_geometry=True, repeating={"id"}).key == "{gid}"
    assert mapping_propose(["id", "name"], has_geometry=True, repeating={"id"}).key == CONTENT_KEY


def test_content_digests_are_the_same_for_the_same_row_wherever_it_sits():
    # given three rows of which the first and the last are the same, and another batch
    names = pa.array(["Chapel", "Temple", "Chapel"])
    wkb = pa.array([b"\x01", b"\x01", b"\x01"], pa.binary())
    digests = content_digests({"name": names}, wkb, size=3).to_pylist()
    alone = content_digests({"name": pa.array(["Chapel"])}, pa.array([b"\x01"]), size=1)
    # then identical rows share a digest, whatever their position, and others differ
    assert digests[0] == digests[2] == alone[0].as_py()
    assert digests[0] != digests[1]
    # and the geometry counts: the same values elsewhere are another row
    moved = content_digests({"name": pa.array(["Chapel"])}, pa.array([b"\x02"]), size=1)
    assert moved[0].as_py() != digests[0]
    # and an empty cell reads as a null one, as everywhere in staging
    empty = content_digests({"name": pa.array([""])}, None, size=1)
    null = content_digests({"name": pa.array([None], pa.string())}, None, size=1)
    assert empty.to_pylist() == null.to_pylist()


# --- files without an id column ---------------------------------------------------------------


def test_geojson_features_without_properties_import_with_content_keys(sample_regions, tmp_path):
    # given features with a geometry and nothing else, two of them identical
    path = _geojson(
        tmp_path,
        "bare.geojson",
        [
            _feature(-1.5, 52.1),
            _feature(-1.6, 52.2, {}),
            _feature(-1.5, 52.1),
        ],
    )
    # when it is imported
    job = _run(path, "bare")
    # then the key is derived from the content: the identical feature is a duplicate
    assert job.options["mapping"]["key"] == CONTENT_KEY
    assert (job.state, job.added, job.rejected) == (ImportState.DONE, 2, 1)
    assert job.report["rejected_by_reason"] == {"duplicate_key": 1}
    keys = list(Place.objects.filter(dataset=job.dataset).values_list("source_key", flat=True))
    assert all(DIGEST.fullmatch(k) for k in keys)
    # and importing the same file again finds every place unchanged
    again = _run(path, "bare")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)


def test_a_changed_row_under_a_content_key_is_retired_and_added_not_updated(
    sample_regions, tmp_path
):
    # given a CSV without id column, imported once
    first = tmp_path / "v1.csv"
    first.write_text("name,lon,lat\nChapel,-1.5,52.1\nTemple,-1.6,52.2\n")
    _run(first, "changing", mode=ImportMode.SNAPSHOT)
    # when the next version renames one place and is imported as a snapshot
    second = tmp_path / "v2.csv"
    second.write_text("name,lon,lat\nChapel,-1.5,52.1\nHindu Temple,-1.6,52.2\n")
    job = _run(second, "changing", mode=ImportMode.SNAPSHOT)
    # then, as the note says, the renamed row is a new place and the old one is retired
    assert (job.added, job.updated, job.unchanged, job.retired) == (1, 0, 1, 1)
    retired = Place.objects.get(dataset=job.dataset, status=PlaceStatus.RETIRED)
    assert retired.name == "Temple"


def test_the_command_says_what_a_content_key_means(sample_regions, tmp_path):
    # given a CSV without an id column
    path = tmp_path / "noid.csv"
    path.write_text("name,lon,lat\nChapel,-1.5,52.1\nChapel,-1.5,52.1\n")
    # when the command runs a dry run and then the import
    for extra in (["--dry-run"], []):
        out = io.StringIO()
        call_command("import_places", str(path), "--dataset", "noid", "--sync", *extra, stdout=out)
        printed = out.getvalue()
        # then both say that a re-import cannot update by such a key
        assert CONTENT_KEY_NOTE in printed
        assert "1 added" in printed
        assert "rejected 1 × duplicate_key" in printed


def test_the_command_names_the_columns_it_saw_when_nothing_fits(tmp_path):
    path = tmp_path / "nowhere.csv"
    path.write_text("ref,title,easting\nA1,Chapel,400000\n")
    with pytest.raises(CommandError) as refused:
        call_command("import_places", str(path), "--dataset", "nowhere", "--sync")
    assert "among the columns 'ref', 'title', 'easting'" in str(refused.value)


# --- id columns other tools write -------------------------------------------------------------


def test_geojson_feature_ids_that_are_strings_are_the_key(sample_regions, tmp_path):
    # given features whose id is the Feature's own member, not a property
    path = _geojson(
        tmp_path,
        "ids.geojson",
        [
            _feature(-1.5, 52.1, {"name": "Chapel"}, id="node/1"),
            _feature(-1.6, 52.2, None, id="way/2"),
        ],
    )
    job = _run(path, "feature-ids")
    # then GDAL's id column is recognised and keys the places
    assert job.options["mapping"]["key"] == "{id}"
    keys = set(Place.objects.filter(dataset=job.dataset).values_list("source_key", flat=True))
    assert keys == {"node/1", "way/2"}


def test_geopackage_with_objectid_is_keyed_by_it(sample_regions, tmp_path):
    path = tmp_path / "esri.gpkg"
    table = pa.table(
        {
            "OBJECTID": [11, 12],
            "NAME": ["Chapel", "Temple"],
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
    job = _run(path, "objectid")
    assert job.options["mapping"]["key"] == "{OBJECTID}"
    keys = set(Place.objects.filter(dataset=job.dataset).values_list("source_key", flat=True))
    assert keys == {"11", "12"}


def test_parquet_with_fid_is_keyed_by_it(sample_regions, tmp_path):
    path = tmp_path / "fid.parquet"
    pq.write_table(
        pa.table({"FID": [7, 8], "Lon": [-1.5, -1.6], "Lat": [52.1, 52.2]}),
        path,
    )
    job = _run(path, "fid")
    assert (job.options["mapping"]["key"], job.added) == ("{FID}", 2)


# --- an id column that repeats ----------------------------------------------------------------


def test_inspection_says_the_id_column_repeats_and_proposes_the_content_key(tmp_path):
    # given a CSV whose id column holds the same value on 3 of its 4 rows
    path = tmp_path / "repeats.csv"
    path.write_text(
        "id,name,lon,lat\n1,Chapel,-1.5,52.1\n1,Temple,-1.6,52.2\n2,Mosque,-1.7,52.3\n"
        "1,Church,-1.8,52.4\n"
    )
    # when it is inspected
    job = _inspected(path, "repeats")
    # then the page's note says how many repeat, and the content key is proposed instead
    note = job.inspection["key_note"]
    assert "The key column id repeats values: 2 of the first 4 rows" in note
    assert "too many for an id: the key proposed is {_content} instead" in note
    assert CONTENT_KEY_NOTE in note
    assert job.inspection["proposed_mapping"]["key"] == CONTENT_KEY
    assert job.options["mapping"]["key"] == CONTENT_KEY


def test_an_id_column_with_a_few_repeats_stays_the_key_and_the_note_says_so(tmp_path):
    # given 12 rows of which one repeats an earlier id: an error in a real id column
    rows = [f"{i},Chapel {i},-1.5,52.{i}" for i in range(1, 12)]
    path = tmp_path / "one_repeat.csv"
    path.write_text("id,name,lon,lat\n" + "\n".join([*rows, "3,Again,-1.6,52.2"]) + "\n")
    job = _inspected(path, "one-repeat")
    # then the id stays the key, and the duplicate rule will report the repeat
    assert job.options["mapping"]["key"] == "{id}"
    assert job.inspection["key_note"] == (
        "The key column id repeats values: 1 of the first 12 rows repeats an earlier row's key; "
        "the import rejects each repeat as a duplicate (the first row wins)."
    )


def test_inspection_keeps_a_key_the_user_gave_even_if_it_repeats(tmp_path):
    path = tmp_path / "given.csv"
    path.write_text("id,ref,lon,lat\n1,a,-1.5,52.1\n1,b,-1.6,52.2\n")
    job = jobs.import_job_create(
        path=path,
        dataset=dataset_get_or_create(slug="given"),
        mapping={"key": "r:{ref}"},
        wait_for_review=True,
    )
    job = inspection.import_job_inspect(job=job)
    assert job.options["mapping"]["key"] == "r:{ref}"


def test_inspection_of_a_file_with_unique_ids_has_no_key_note(tmp_path):
    path = tmp_path / "unique.csv"
    path.write_text("ID,name,lon,lat\n1,Chapel,-1.5,52.1\n2,Temple,-1.6,52.2\n")
    job = _inspected(path, "unique")
    assert (job.inspection["key_note"], job.options["mapping"]["key"]) == (None, "{ID}")


def test_layers_without_id_columns_all_import_under_the_content_key(sample_regions, tmp_path):
    # given a GeoPackage of two layers, neither with an id column
    path = tmp_path / "two.gpkg"
    for layer, (lon, lat) in (("chapels", (-1.5, 53.8)), ("temples", (-2.2, 53.5))):
        pyogrio.write_arrow(
            pa.table({"name": [layer], "geometry": [Point(lon, lat).wkb.tobytes()]}),
            path,
            layer=layer,
            driver="GPKG",
            geometry_name="geometry",
            geometry_type="Point",
            crs="EPSG:4326",
            append=path.exists(),
        )
    # when it is imported: the content key needs no column in any layer
    job = _run(path, "two-layers")
    # then both layers' features are places
    assert (job.options["mapping"]["key"], job.added, job.rejected) == (CONTENT_KEY, 2, 0)


def test_the_command_passes_over_an_id_column_that_repeats_and_says_so(sample_regions, tmp_path):
    # given a CSV whose id column holds the same value on 3 of its 4 rows
    path = tmp_path / "repeats.csv"
    path.write_text(
        "id,name,lon,lat\n1,Chapel,-1.5,52.1\n1,Temple,-1.6,52.2\n2,Mosque,-1.7,52.3\n"
        "1,Church,-1.8,52.4\n"
    )
    out = io.StringIO()
    call_command("import_places", str(path), "--dataset", "cmd-repeats", "--sync", stdout=out)
    printed = out.getvalue()
    # then it says so, and imports every row under the content key instead of rejecting two
    assert "The key column id repeats values: 2 of the first 4 rows repeat" in printed
    assert "4 added" in printed
    assert CONTENT_KEY_NOTE in printed
    assert printed.count(CONTENT_KEY_NOTE) == 1
