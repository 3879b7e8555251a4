"""The bundled GB file through the real import pipeline (see the data README's quirks)."""

from __future__ import annotations

import csv

import pytest

from ingestion.models import ImportState, RejectionReason
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.models import Place, PlaceChange, Region
from tests.conftest import GB_CSV, gzip_lines

pytestmark = pytest.mark.django_db

# The two rows whose upstream district differs from a fresh point-in-polygon (data README).
BOUNDARY_CASES = {"osm:way/409292965", "osm:way/882763047"}


def _file_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(gzip_lines(GB_CSV)))


def test_every_row_becomes_a_place_except_the_rejected(gb_import):
    # given the file's own row count
    rows = _file_rows()
    # then places = rows - rejected, and the job agrees
    places = Place.objects.filter(dataset=gb_import.dataset)
    assert gb_import.state == ImportState.DONE
    assert gb_import.rows_read == len(rows)
    assert places.count() == len(rows) - gb_import.rejections.count()
    assert gb_import.added == places.count()


def test_duplicate_keys_keep_the_first_row_and_report_the_rest(gb_import):
    rows = _file_rows()
    first_by_key: dict[str, dict[str, str]] = {}
    duplicates = []
    for line, row in enumerate(rows, start=2):
        key = f"osm:{row['osm_type']}/{row['osm_id']}"
        if key in first_by_key:
            duplicates.append((line, key))
        else:
            first_by_key[key] = row
    rejections = list(gb_import.rejections.order_by("row_number"))
    assert [(r.row_number, r.reason) for r in rejections] == [
        (line, RejectionReason.DUPLICATE_KEY) for line, _ in duplicates
    ]
    assert len(duplicates) == 4
    # the rejected rows keep their original values for the report
    assert rejections[0].raw["osm_id"] == duplicates[0][1].rsplit("/", 1)[1]
    for _, key in duplicates:
        place = Place.objects.get(dataset=gb_import.dataset, source_key=key)
        assert place.name == first_by_key[key]["name"]


def test_rows_without_a_name_are_kept(gb_import):
    # given the first row of each key (the one the import keeps)
    kept: dict[str, dict[str, str]] = {}
    for row in _file_rows():
        kept.setdefault(f"osm:{row['osm_type']}/{row['osm_id']}", row)
    unnamed_in_file = {key for key, row in kept.items() if not row["name"].strip()}
    # then exactly those places have no name
    unnamed = set(
        Place.objects.filter(dataset=gb_import.dataset, name="").values_list(
            "source_key", flat=True
        )
    )
    assert unnamed == unnamed_in_file
    assert len(unnamed) == 1043


def test_semicolon_denominations_are_split_and_raw_kept(gb_import):
    place = Place.objects.filter(dataset=gb_import.dataset, denomination_raw__contains="; ").first()
    assert place is not None
    assert len(place.denominations) >= 2
    assert all(" " not in d and d == d.lower() for d in place.denominations)
    assert ";" in place.denomination_raw


def test_district_assignment_reproduces_the_file_except_two_boundary_cases(gb_import):
    # given each place's area_code from the file (kept in tags)
    mismatches = {
        key
        for key, expected, actual in Place.objects.filter(dataset=gb_import.dataset)
        .values_list("source_key", "tags__area_code", "region__code")
        .iterator()
        if expected != actual
    }
    assert mismatches == BOUNDARY_CASES


def test_every_place_gets_its_country(gb_import):
    gbr = Region.objects.get(code_system="ne-adm0-a3", code="GBR")
    places = Place.objects.filter(dataset=gb_import.dataset)
    assert places.filter(country=gbr).count() == places.count()


def test_every_created_place_is_in_the_change_log(gb_import):
    changes = PlaceChange.objects.filter(import_job_id=gb_import.pk)
    assert changes.count() == gb_import.added
    change = changes.first()
    assert change.operation == "create"
    assert change.source == "import"
    assert change.place_version == 1
    assert set(change.changes["location"]) == {"old", "new"}


def test_reimporting_the_same_file_changes_nothing(gb_import):
    # given the state after the first import
    dataset = gb_import.dataset
    log_before = PlaceChange.objects.filter(dataset=dataset).count()
    versions_before = sorted(
        Place.objects.filter(dataset=dataset).values_list("version", flat=True)
    )
    # when the same file is imported again
    job = import_job_execute(job_id=import_job_create(path=GB_CSV, dataset=dataset).pk)
    # then
    assert job.state == ImportState.DONE
    assert (job.added, job.updated, job.rejected) == (0, 0, 4)
    assert job.unchanged == gb_import.added
    assert PlaceChange.objects.filter(dataset=dataset).count() == log_before
    assert sorted(Place.objects.filter(dataset=dataset).values_list("version", flat=True)) == (
        versions_before
    )


@pytest.mark.slow
def test_dry_run_reports_counts_and_writes_no_place(sample_regions, tmp_path):
    from places.services import dataset_get_or_create

    # given a new dataset
    dataset = dataset_get_or_create(slug="dry-run-check")
    # when the file is dry-run into it
    job = import_job_execute(
        job_id=import_job_create(path=GB_CSV, dataset=dataset, dry_run=True).pk
    )
    # then the counts are those of a real run, and nothing was written
    assert job.state == ImportState.DRY_RUN_READY
    assert job.added == job.rows_read - 4
    assert not Place.objects.filter(dataset=dataset).exists()
    assert job.rejections.count() == 4
