"""GeoJSON Feature ``id`` members as keys, exactly as the file writes them.

GDAL keeps integer ids only as FIDs, renumbering repeats and numbering features without one,
so these files used to fall back to the content key; ``ingestion.readers.feature_ids`` reads
the ids from the file itself.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from ingestion.mapping import CONTENT_KEY, CONTENT_KEY_NOTE
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.readers import UnreadableFile, open_reader
from ingestion.readers.geo import GeoReader
from ingestion.services import inspection, jobs
from ingestion.services.imports import import_job_execute
from places.models import Place, PlaceStatus
from places.services import dataset_get_or_create

pytestmark = pytest.mark.django_db


def _feature(id_: Any = ..., lon: float = -1.5, lat: float = 52.1, **properties: Any) -> dict:
    feature: dict[str, Any] = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon, lat]},
        "properties": properties,
    }
    if id_ is not ...:
        feature["id"] = id_
    return feature


def _geojson(path: Path, features: list[Any]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _run(path: Path, slug: str, **kwargs: Any) -> ImportJob:
    dataset = dataset_get_or_create(slug=slug)
    with warnings.catch_warnings():
        # GDAL warns that it renumbers repeated ids; the reader does not use its numbers.
        warnings.simplefilter("ignore", RuntimeWarning)
        return import_job_execute(
            job_id=jobs.import_job_create(path=path, dataset=dataset, **kwargs).pk
        )


def _inspected(path: Path, slug: str) -> ImportJob:
    job = jobs.import_job_create(
        path=path, dataset=dataset_get_or_create(slug=slug), wait_for_review=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return inspection.import_job_inspect(job=job)


def _places(job: ImportJob) -> dict[str, str]:
    return dict(
        Place.objects.filter(dataset=job.dataset, status=PlaceStatus.ACTIVE).values_list(
            "source_key", "name"
        )
    )


def test_integer_feature_ids_are_the_key_of_an_import(sample_regions, tmp_path):
    # given features whose only id is an integer Feature member (GDAL makes it the FID)
    path = _geojson(
        tmp_path / "ints.geojson",
        [
            _feature(101, -1.5, 52.1, name="Chapel"),
            _feature(102, -1.6, 52.2, name="Temple"),
            _feature(9007199254740993, -1.7, 52.3, name="Mosque"),
        ],
    )
    # when it is imported
    job = _run(path, "int-ids")
    # then the ids, exactly as written (beyond a double's precision too), are the keys
    assert (job.state, job.added, job.rejected) == (ImportState.DONE, 3, 0)
    assert job.options["mapping"]["key"] == "{id}"
    assert _places(job) == {"101": "Chapel", "102": "Temple", "9007199254740993": "Mosque"}


def test_inspection_shows_the_feature_ids_and_proposes_them_without_a_note(tmp_path):
    path = _geojson(tmp_path / "ints.geojson", [_feature(7, name="A"), _feature(8, name="B")])
    job = _inspected(path, "int-ids-inspected")
    assert job.inspection["columns"] == ["name", "id"]
    assert job.inspection["sample_columns"] == ["name", "id", "geometry"]
    assert [row[:2] for row in job.inspection["sample_rows"]] == [["A", "7"], ["B", "8"]]
    assert (job.inspection["key_note"], job.options["mapping"]["key"]) == (None, "{id}")


def test_reimporting_a_changed_file_updates_places_by_their_feature_id(sample_regions, tmp_path):
    # given a snapshot keyed by integer Feature ids
    features = [_feature(1, -1.5, 52.1, name="Chapel"), _feature(2, -1.6, 52.2, name="Temple")]
    v1 = _geojson(tmp_path / "v1.geojson", features)
    first = _run(v1, "int-ids-sync", mode=ImportMode.SNAPSHOT)
    temple = Place.objects.get(dataset=first.dataset, source_key="2")
    # when the next version renames one feature and moves the other
    features = [
        _feature(1, -1.51, 52.1, name="Chapel"),
        _feature(2, -1.6, 52.2, name="Hindu Temple"),
    ]
    v2 = _geojson(tmp_path / "v2.geojson", features)
    job = _run(v2, "int-ids-sync", mode=ImportMode.SNAPSHOT)
    # then both are updated in place: nothing retired, nothing added
    assert (job.added, job.updated, job.unchanged, job.retired) == (0, 2, 0, 0)
    temple.refresh_from_db()
    assert (temple.name, temple.status) == ("Hindu Temple", PlaceStatus.ACTIVE)


def test_ids_repeating_on_many_features_are_reported_and_the_content_key_proposed(
    sample_regions, tmp_path
):
    # given integer ids that repeat on 2 of 4 features (GDAL would renumber them silently)
    path = _geojson(
        tmp_path / "repeats.geojson",
        [
            _feature(1, -1.5, 52.1, name="Chapel"),
            _feature(1, -1.6, 52.2, name="Temple"),
            _feature(2, -1.7, 52.3, name="Mosque"),
            _feature(1, -1.8, 52.4, name="Church"),
        ],
    )
    # when it is inspected
    job = _inspected(path, "int-repeats")
    # then the note says the ids repeat, and the content key is proposed instead
    note = job.inspection["key_note"]
    assert "The key column id repeats values: 2 of the first 4 rows repeat" in note
    assert "the key proposed is {_content} instead" in note
    assert CONTENT_KEY_NOTE in note
    assert job.options["mapping"]["key"] == CONTENT_KEY
    # and an import takes every feature under that key
    imported = _run(path, "int-repeats-run")
    assert (imported.options["mapping"]["key"], imported.added) == (CONTENT_KEY, 4)


def test_a_repeated_integer_id_is_rejected_as_a_duplicate_not_renumbered(sample_regions, tmp_path):
    # given twelve features of which one repeats an earlier integer id
    features = [_feature(i, -1.5, 52 + i / 100, name=f"Chapel {i}") for i in range(1, 12)]
    path = _geojson(tmp_path / "one_repeat.geojson", [*features, _feature(3, name="Again")])
    # when it is imported
    job = _run(path, "int-one-repeat")
    # then the id stays the key and the repeat is reported (GDAL's FID would have been 12)
    assert job.options["mapping"]["key"] == "{id}"
    assert (job.added, job.rejected) == (11, 1)
    assert job.report["rejected_by_reason"] == {"duplicate_key": 1}
    assert "12" not in _places(job)
    assert _places(job)["3"] == "Chapel 3"


def test_mixed_integer_and_string_ids_are_all_kept(sample_regions, tmp_path):
    # given integer and string ids in one file (GDAL drops the strings)
    path = _geojson(
        tmp_path / "mixed.geojson",
        [
            _feature(10, -1.5, 52.1, name="Chapel"),
            _feature("node/11", -1.6, 52.2, name="Temple"),
            _feature(1.50, -1.7, 52.3, name="Mosque"),
        ],
    )
    job = _run(path, "mixed-ids")
    assert _places(job) == {"10": "Chapel", "node/11": "Temple", "1.5": "Mosque"}


def test_a_feature_without_an_id_is_rejected_for_its_missing_key(sample_regions, tmp_path):
    # given a feature without id between two with one, and one whose id is no string or number
    path = _geojson(
        tmp_path / "missing.geojson",
        [
            _feature(10, -1.5, 52.1, name="Chapel"),
            _feature(..., -1.6, 52.2, name="Temple"),
            _feature(True, -1.65, 52.25, name="Hall"),
            _feature(30, -1.7, 52.3, name="Mosque"),
        ],
    )
    job = _run(path, "missing-ids")
    # then the others are keyed by their ids (GDAL would have given the first gap FID 1)
    assert _places(job) == {"10": "Chapel", "30": "Mosque"}
    assert job.report["rejected_by_reason"] == {"missing_key": 2}


def test_string_feature_ids_still_key_the_places(sample_regions, tmp_path):
    path = _geojson(
        tmp_path / "strings.geojson",
        [_feature("way/2", -1.5, 52.1, name="Chapel"), _feature("node/1", -1.6, 52.2)],
    )
    job = _run(path, "string-ids")
    assert job.options["mapping"]["key"] == "{id}"
    assert set(_places(job)) == {"way/2", "node/1"}


def test_a_property_called_id_keeps_its_name_and_the_feature_ids_go_to_fid(
    sample_regions, tmp_path
):
    # given features with a property ``id`` and integer Feature ids
    path = _geojson(
        tmp_path / "both.geojson",
        [
            _feature(1, -1.5, 52.1, id="A-1", name="Chapel"),
            _feature(2, -1.6, 52.2, id="A-2", name="Temple"),
        ],
    )
    # when it is inspected and imported
    assert _inspected(path, "both-ids").inspection["columns"] == ["id", "name", "fid"]
    job = _run(path, "both-ids-run")
    # then the property is the key, as the file's own column, and the Feature id a tag
    assert job.options["mapping"]["key"] == "{id}"
    assert set(_places(job)) == {"A-1", "A-2"}
    chapel = Place.objects.get(dataset=job.dataset, source_key="A-1")
    assert chapel.tags["fid"] == "1"


def test_gzipped_geojson_and_a_lone_feature_carry_their_ids(sample_regions, tmp_path):
    gzipped = tmp_path / "ints.geojson.gz"
    text = json.dumps({"type": "FeatureCollection", "features": [_feature(5), _feature(6, -1.6)]})
    gzipped.write_bytes(gzip.compress(text.encode()))
    assert set(_places(_run(gzipped, "gzip-ids"))) == {"5", "6"}
    lone = tmp_path / "lone.geojson"
    lone.write_text(json.dumps(_feature(42, name="Chapel")))
    assert _places(_run(lone, "lone-id")) == {"42": "Chapel"}


def test_ids_stay_with_their_features_when_gdal_passes_over_items(tmp_path):
    # given items GDAL makes no feature of, before and between features
    path = _geojson(
        tmp_path / "odd.geojson",
        [
            None,
            {"type": "Point", "coordinates": [0, 0]},
            _feature(1, name="a"),
            5,
            {"id": 99, "geometry": None, "properties": {"name": "untyped"}},
            _feature(2, name="b"),
        ],
    )
    reader = open_reader(path)
    assert isinstance(reader, GeoReader)
    [batch] = list(reader.batches(reader.layers()[0].name))
    assert (batch.columns["name"], batch.columns["id"]) == (["a", "b"], ["1", "2"])


def test_ids_that_cannot_be_matched_to_features_refuse_the_file(tmp_path):
    # given a reader whose id stream is one short of GDAL's features (which no file we
    # found produces: the guard keeps a mismatch from shifting every key by one)
    path = _geojson(tmp_path / "short.geojson", [_feature(1), _feature(2)])
    reader = open_reader(path)
    assert isinstance(reader, GeoReader)

    def short() -> Any:
        yield "1"

    reader.feature_ids = short  # type: ignore[method-assign]
    with pytest.raises(UnreadableFile, match="Feature ids cannot be matched"):
        list(reader.batches(reader.layers()[0].name))


def test_files_without_feature_ids_get_no_id_column(tmp_path):
    path = _geojson(tmp_path / "plain.geojson", [_feature(name="a")])
    reader = open_reader(path)
    assert reader.layers()[0].columns == ["name"]


def test_a_file_only_gdal_can_parse_keeps_gdal_s_columns(tmp_path):
    # given NaN in a property, which GDAL reads and JSON (so ijson) does not have
    path = tmp_path / "nan.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(1, v=0.5)]}))
    path.write_text(path.read_text().replace("0.5", "NaN"))
    reader = open_reader(path)
    # then the file reads as it did before Feature ids were read
    [layer] = reader.layers()
    assert layer.columns == ["v"]
    assert [b.num_rows for b in reader.batches(layer.name)] == [1]
