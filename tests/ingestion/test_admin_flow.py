"""Imports run from the admin: upload, inspect, mapping, dry run, apply, cancel, downloads.

Staff use Django's test client. Queued tasks are not sent (the test's transaction never
commits); each test runs the Celery task function itself, as a worker would.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.gis.geos import Point
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ingestion import selectors
from ingestion.mapping import CONTENT_KEY
from ingestion.models import ImportJob, ImportRejection, ImportState
from ingestion.selectors import spreadsheet_safe
from ingestion.services import inspection, jobs
from ingestion.services.imports.progress import import_job_progress_publish
from ingestion.tasks import import_job_run
from places.models import Dataset, DatasetRole, Place
from places.services import dataset_get_or_create
from tests.conftest import FIXTURES, GB_CSV, LONDON_SHP

pytestmark = pytest.mark.django_db

NASTY = FIXTURES / "nasty_places.csv"
NASTY_TEXT = NASTY.read_text(encoding="utf-8")
NASTY_HEADER = ["id", "name", "religion", "denomination", "lon", "lat", "start_date"]


@pytest.fixture
def dataset() -> Dataset:
    return dataset_get_or_create(slug="admin-flow")


def _url(name: str, job: ImportJob) -> str:
    return reverse(f"admin:ingestion_importjob_{name}", args=[job.pk])


def _upload(client, dataset: Dataset, name: str, content: bytes, mode: str = "upsert"):
    return client.post(
        reverse("admin:ingestion_importjob_add"),
        {"file": SimpleUploadedFile(name, content), "dataset": dataset.pk, "mode": mode},
    )


def _uploaded(client, dataset: Dataset, name: str, content: bytes, mode: str = "upsert"):
    response = _upload(client, dataset, name, content, mode)
    assert response.status_code == 302, response.context["form"].errors
    job = ImportJob.objects.latest("id")
    assert response["Location"] == _url("change", job)
    return job


def _dry_run(client, job: ImportJob, django_capture_on_commit_callbacks) -> ImportJob:
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert client.post(_url("dry_run", job)).status_code == 302
    assert len(queued) == 1  # the task is sent once the click's transaction commits
    job.refresh_from_db()
    assert (job.state, job.dry_run) == (ImportState.QUEUED, True)
    import_job_run(job.pk)
    job.refresh_from_db()
    return job


def _apply(client, job: ImportJob, django_capture_on_commit_callbacks) -> ImportJob:
    with django_capture_on_commit_callbacks(execute=False) as queued:
        assert client.post(_url("apply", job)).status_code == 302
    assert len(queued) == 1
    job.refresh_from_db()
    assert (job.state, job.dry_run) == (ImportState.QUEUED, False)
    import_job_run(job.pk)
    job.refresh_from_db()
    return job


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- upload and inspect ----------------------------------------------------------------------


def test_upload_lands_on_the_job_page_with_columns_samples_and_proposed_mapping(
    admin_client, admin_user, dataset
):
    # when staff upload the nasty CSV
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    # then the job is inspected and records what the file holds
    assert job.state == ImportState.INSPECTED
    assert job.created_by == admin_user
    assert job.original_name == "nasty_places.csv"
    assert job.size_bytes == NASTY.stat().st_size
    inspection = job.inspection
    assert inspection["format"] == "csv"
    assert inspection["encoding"] == "utf-8"
    assert inspection["delimiter"] == ","
    assert inspection["columns"] == NASTY_HEADER
    assert (inspection["row_count"], inspection["row_count_estimated"]) == (11, False)
    assert job.rows_total == 11
    assert inspection["sample_rows"][0] == [
        "p1",
        "St Mary, the Virgin",
        "Christian",
        "anglican;methodist",
        "-0.1",
        "51.5",
        "1885",
    ]
    assert len(inspection["sample_rows"]) == 10
    proposed = inspection["proposed_mapping"]
    assert (proposed["key"], proposed["lon"], proposed["lat"]) == ("{id}", "lon", "lat")
    assert job.options["mapping"] == proposed
    # and the page shows the columns, sample rows and the mapping form filled with the proposal
    page = admin_client.get(_url("change", job))
    assert page.status_code == 200
    html = page.content.decode()
    assert "St Mary, the Virgin" in html
    assert "<code>denomination</code>" in html
    assert 'name="key" value="{id}"' in html
    form = page.context["mapping_form"]
    assert form.initial["lon"] == "lon"
    assert [c for c, _ in form.fields["name"].choices] == ["", *NASTY_HEADER]
    assert page.context["mapping_problems"] == {}


def test_inspection_lists_the_records_that_cannot_be_split(admin_client, dataset):
    content = b'id,name,lon,lat\nr1,One,-0.1,51.5\nx,only two\nr3,"Three\nlines",-0.2,51.6\n'
    job = _uploaded(admin_client, dataset, "ragged.csv", content)
    assert job.inspection["row_count"] == 3
    assert len(job.inspection["sample_rows"]) == 2
    assert job.inspection["unsplit_count"] == 1
    assert job.inspection["unsplit_rows"] == [{"line": 3, "text": "x,only two"}]
    page = admin_client.get(_url("change", job)).content.decode()
    assert "1 record cannot be split into the columns and will be rejected" in page
    assert "line 3: <code>x,only two</code>" in page


def test_empty_file_is_refused_on_the_form(admin_client, dataset):
    response = _upload(admin_client, dataset, "empty.csv", b"")
    assert response.status_code == 200
    assert "empty" in str(response.context["form"].errors["file"])
    assert not ImportJob.objects.filter(dataset=dataset).exists()


def test_file_over_the_size_limit_is_refused_with_the_limit(admin_client, dataset, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_FILE_BYTES", 100)
    response = _upload(admin_client, dataset, "big.csv", NASTY.read_bytes())
    assert response.status_code == 200
    assert "the limit is 100" in str(response.context["form"].errors["file"])
    assert not ImportJob.objects.filter(dataset=dataset).exists()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("binary.csv", b"\x00\x01\x02\x03binary", "not a supported format"),
        ("fake.zip", b"PK\x03\x04 not really a zip", "not a readable zip file"),
        ("blank.csv", b"   \n\n", "empty"),
        ("cut.csv.gz", gzip.compress(NASTY.read_bytes())[:-30], "cut short"),
    ],
)
def test_unreadable_file_is_refused_on_the_form_with_the_reason(
    admin_client, dataset, name, content, message
):
    response = _upload(admin_client, dataset, name, content)
    assert response.status_code == 200
    assert message in str(response.context["form"].errors["file"])
    assert "Please correct the errors below" in response.content.decode()
    assert not ImportJob.objects.filter(dataset=dataset).exists()


def test_shapefile_inspection_lists_layers_with_counts_and_crs(admin_client, dataset, settings):
    # given uploads spooled to disk, as large files are
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    job = _uploaded(admin_client, dataset, LONDON_SHP.name, LONDON_SHP.read_bytes())
    layers = {layer["name"]: layer for layer in job.inspection["layers"]}
    assert {n: (la["geometry_type"], la["features"]) for n, la in layers.items()} == {
        "gis_osm_pofw_free_1": ("Point", 782),
        "gis_osm_pofw_a_free_1": ("Polygon", 2130),
    }
    assert all(la["crs"] == "EPSG:4326" for la in layers.values())
    assert job.inspection["row_count"] == 782 + 2130
    assert job.inspection["sample_columns"][-1] == "geometry"
    assert job.inspection["sample_rows"][0][-1].startswith("POINT (")
    assert job.options["mapping"]["key"] == "osm:{_kind}/{osm_id}"
    html = admin_client.get(_url("change", job)).content.decode()
    assert "gis_osm_pofw_a_free_1" in html
    assert 'name="lon"' not in html  # geo files have geometry, not coordinate columns


def test_large_csv_row_count_is_estimated_and_labelled(dataset, monkeypatch):
    # given a CSV above the size counted exactly
    monkeypatch.setattr(inspection, "EXACT_COUNT_MAX_BYTES", 1000)
    job = jobs.import_job_create(path=GB_CSV, dataset=dataset, wait_for_review=True)
    # when it is inspected
    job = inspection.import_job_inspect(job=job)
    # then the count is an estimate, and a close one (the file has 34,613 rows)
    assert job.inspection["row_count_estimated"] is True
    assert 34_613 * 0.8 < job.rows_total < 34_613 * 1.2


# --- the mapping -------------------------------------------------------------------------------


def test_mapping_form_refuses_bad_templates_and_names_unknown_columns(admin_client, dataset):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    url = _url("change", job)
    base = {"mode": "upsert", "name": "name", "lon": "lon", "lat": "lat"}
    # a template naming columns the file does not have
    page = admin_client.post(url, {**base, "key": "{ref}/{nope}"})
    assert page.status_code == 200
    assert page.context["mapping_form"].errors["key"] == [
        "the key template names columns not in the file: nope, ref"
    ]
    # a template with a format spec
    page = admin_client.post(url, {**base, "key": "{id:>10}"})
    assert "must be a plain column name" in page.context["mapping_form"].errors["key"][0]
    # no coordinates for a CSV
    page = admin_client.post(url, {**base, "key": "{id}", "lon": ""})
    assert "longitude/latitude" in page.context["mapping_form"].errors["lon"][0]
    # a column that is not offered
    page = admin_client.post(url, {**base, "key": "{id}", "religion": "faith"})
    assert "religion" in page.context["mapping_form"].errors
    job.refresh_from_db()
    assert job.options["mapping"]["key"] == "{id}"
    # the service names an unknown column for callers that bypass the form
    with pytest.raises(jobs.MappingInvalid) as refused:
        jobs.import_job_mapping_set(
            job=job, mapping={**base, "key": "{id}", "name": "title"}, mode="upsert"
        )
    assert refused.value.problems == {"name": "column 'title' is not in the file"}


def test_changed_mapping_is_used_by_the_dry_run_and_apply(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given an inspected job whose mapping staff change: another key, no name, append mode
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    response = admin_client.post(
        _url("change", job),
        {
            "mode": "append",
            "key": "nasty:{id}",
            "name": "",
            "religion": "religion",
            "lon": "lon",
            "lat": "lat",
        },
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.mode == "append"
    assert job.options["mapping"]["key"] == "nasty:{id}"
    assert job.options["mapping"]["name"] is None
    # when it is dry-run and applied
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    assert [r["key"] for r in job.report["samples"]["added"]] == [
        "nasty:p1",
        "nasty:p2",
        "nasty:p8",
        "nasty:p9",
    ]
    job = _apply(admin_client, job, django_capture_on_commit_callbacks)
    # then the places have the new keys and their names were not read
    places = Place.objects.filter(dataset=dataset)
    assert sorted(places.values_list("source_key", flat=True)) == [
        "nasty:p1",
        "nasty:p2",
        "nasty:p8",
        "nasty:p9",
    ]
    assert set(places.values_list("name", flat=True)) == {""}


def test_file_without_a_key_column_gets_a_content_key_that_staff_can_replace(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given a CSV whose key column has no known name
    job = _uploaded(admin_client, dataset, "refs.csv", b"ref,title,lon,lat\nA1,Chapel,-1.5,52.1\n")
    # then the key proposed is derived from the content, and the page says what that means
    assert job.options["mapping"]["key"] == CONTENT_KEY
    page = admin_client.get(_url("change", job))
    assert page.context["mapping_problems"] == {}
    assert "cannot match rows by such a key" in page.content.decode()
    # a key template given on the page is checked like any other
    response = admin_client.post(_url("change", job), {"mode": "upsert", "key": "", "lon": "lon"})
    assert "no key column found" in response.content.decode()
    # when staff give the key template and the name column
    admin_client.post(
        _url("change", job),
        {"mode": "upsert", "key": "ref:{ref}", "name": "title", "lon": "lon", "lat": "lat"},
    )
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    # then the dry run works with it
    assert job.state == ImportState.DRY_RUN_READY
    assert job.report["samples"]["added"][0]["key"] == "ref:A1"
    assert job.report["samples"]["added"][0]["name"] == "Chapel"


# --- dry run, apply, report --------------------------------------------------------------------


def test_dry_run_reports_samples_then_apply_changes_the_places(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    # when the dry run is queued and the task runs (twice: a redelivery changes nothing)
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    assert import_job_run(job.pk) == ImportState.DRY_RUN_READY
    # then counts and samples are in the report and no place exists yet
    assert job.state == ImportState.DRY_RUN_READY
    assert (job.added, job.updated, job.unchanged, job.retired, job.rejected) == (4, 0, 0, 0, 7)
    samples = job.report["samples"]
    assert [r["key"] for r in samples["added"]] == ["p1", "p2", "p8", "p9"]
    first = samples["added"][0]
    assert (first["row"], first["name"], first["denominations"]) == (
        2,
        "St Mary, the Virgin",
        "anglican; methodist",
    )
    assert first["location"] == "POINT (-0.100000 51.500000)"
    assert [(r["row"], r["reason"]) for r in samples["rejected"]] == [
        (4, "missing_geometry"),
        (5, "bad_coordinates"),
        (6, "bad_coordinates"),
        (7, "bad_coordinates"),
        (8, "bad_coordinates"),
        (9, "duplicate_key"),
        (10, "missing_key"),
    ]
    assert samples["rejected"][5]["values"] == [
        ["id", "p1"],
        ["name", "Duplicate of p1"],
        ["religion", "jewish"],
        ["denomination", ""],
        ["lon", "-0.12"],
        ["lat", "51.52"],
        ["start_date", ""],
    ]
    assert "row 2" in samples["rejected"][5]["detail"]
    assert samples["updated"] == samples["unchanged"] == samples["retired"] == []
    assert not Place.objects.filter(dataset=dataset).exists()
    page = admin_client.get(_url("change", job)).content.decode()
    assert "Dry run: what applying would do" in page
    assert "Duplicate of p1" in page
    assert 'value="Apply"' in page
    # when it is applied
    job = _apply(admin_client, job, django_capture_on_commit_callbacks)
    # then the places exist, the counts are final and the dry run is kept beside them
    assert job.state == ImportState.DONE
    assert (job.added, job.updated, job.unchanged, job.rejected) == (4, 0, 0, 7)
    assert Place.objects.filter(dataset=dataset).count() == 4
    assert job.preview["counts"]["added"] == 4
    assert [r["key"] for r in job.preview["report"]["samples"]["added"]] == ["p1", "p2", "p8", "p9"]
    page = admin_client.get(_url("change", job)).content.decode()
    assert "The dry run before this apply" in page
    assert 'value="Apply"' not in page
    assert 'value="Cancel the job"' not in page
    listing = admin_client.get(reverse("admin:ingestion_importjob_changelist")).content.decode()
    assert "Added / updated / unchanged / retired / rejected" in listing
    assert "4 / 0 / 0 / 0 / 7" in listing


def test_dry_run_of_a_changed_file_shows_old_and_new_values_unchanged_and_retired(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given the nasty file imported once
    first = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    _apply(
        admin_client,
        _dry_run(admin_client, first, django_capture_on_commit_callbacks),
        django_capture_on_commit_callbacks,
    )
    # when a snapshot moves p1, renames p9 and no longer has p8
    changed = (
        NASTY_TEXT.replace("-0.1,51.5,1885", "-0.2,51.6,1885")
        .replace("Druid grove", "Grove")
        .replace('p8,"Quoted ""name"" here",Bahá’í,,-0.14,51.54,early 1960\'s\n', "")
    )
    assert changed.count("\n") == NASTY_TEXT.count("\n") - 1
    job = _uploaded(admin_client, dataset, "changed.csv", changed.encode(), mode="snapshot")
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    # then the report has each update field by field, the unchanged key and the retirement
    assert (job.added, job.updated, job.unchanged, job.retired) == (0, 2, 1, 1)
    samples = job.report["samples"]
    updates = {
        r["key"]: {c["field"]: (c["old"], c["new"]) for c in r["changes"]}
        for r in samples["updated"]
    }
    assert updates["p1"]["location"] == (
        "POINT (-0.100000 51.500000)",
        "POINT (-0.200000 51.600000)",
    )
    # with regions loaded, the move also changes p1's district
    assert set(updates["p1"]) <= {"location", "region_id", "country_id"}
    assert updates["p9"] == {"name": ("Druid grove", "Grove")}
    assert set(updates) == {"p1", "p9"}
    assert [r["key"] for r in samples["unchanged"]] == ["p2"]
    assert [(r["key"], r["name"]) for r in samples["retired"]] == [("p8", 'Quoted "name" here')]
    assert Place.objects.get(dataset=dataset, source_key="p9").name == "Druid grove"
    html = admin_client.get(_url("change", job)).content.decode()
    assert "Updated (field by field)" in html
    assert "POINT (-0.200000 51.600000)" in html
    assert "Retired (missing from this snapshot)" in html


# --- the rejected rows as CSV ------------------------------------------------------------------

NASTY_CELLS = [
    '=HYPERLINK("http://evil.example","x")',
    "+1+1",
    "-1+cmd|' /C calc'!A0",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
    "=",
]


def test_rejected_rows_download_as_csv_with_formulas_neutralised(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given a file whose rejected rows (no key) hold formulas, in a column named like a formula
    buffer = io.StringIO()
    # Every cell quoted: a bare CR would end the record.
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)
    writer.writerow(["id", "name", "lon", "lat", "=cmd", "reason"])
    writer.writerow(["ok1", "Kept", "-0.12", "51.5", "", ""])
    for cell in NASTY_CELLS:
        writer.writerow(["", cell, "-0.12", "51.5", cell, "why"])
    job = _uploaded(admin_client, dataset, "formulas.csv", buffer.getvalue().encode())
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    assert job.rejected == len(NASTY_CELLS)
    # the job page names the reason in words, with its code
    page = admin_client.get(_url("change", job)).content.decode()
    assert f"No source key (<code>missing_key</code>): {len(NASTY_CELLS)}" in page
    # when the rejected rows are downloaded
    response = admin_client.get(_url("rejections_csv", job))
    # then they stream as CSV, one row per rejection in row order, with every formula defused
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(text[1:])))
    assert rows[0] == [
        "row",
        "layer",
        "reason",
        "detail",
        "id",
        "name",
        "lon",
        "lat",
        "'=cmd",
        "reason (original)",
    ]
    body = rows[1:]
    assert [r[0] for r in body] == [str(n) for n in range(3, 3 + len(NASTY_CELLS))]
    assert {r[2] for r in body} == {"missing_key"}
    for row, cell in zip(body, NASTY_CELLS, strict=True):
        assert row[5] == row[8] == "'" + cell
        assert row[6] == "-0.12"  # a plain negative number is data, not a formula
        assert row[9] == "why"
    assert all(
        not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or cell == "-0.12"
        for r in rows
        for cell in r
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("@cmd", "'@cmd"),
        ("\t=x", "'\t=x"),
        ("\r=x", "'\r=x"),
        ("-0.5", "-0.5"),
        ("+44", "+44"),
        ("-1e5", "-1e5"),
        ("-", "'-"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
        (12, "12"),
        (["=x"], '["=x"]'),
    ],
)
def test_spreadsheet_safe_cells(value, expected):
    assert spreadsheet_safe(value) == expected


def test_rejected_rows_are_read_in_keyset_pages_in_row_order(dataset):
    job = jobs.import_job_create(path=NASTY, dataset=dataset, wait_for_review=True)
    ImportRejection.objects.bulk_create(
        ImportRejection(job=job, row_number=n, reason="missing_key", raw={"n": str(n)})
        for n in [5, 3, 3, 9, 1, 7, 3]
    )
    rows = list(selectors.import_rejections_iter(job=job, batch_size=2))
    assert [r.row_number for r in rows] == [1, 3, 3, 3, 5, 7, 9]
    assert len({r.pk for r in rows}) == 7


# --- cancel and refusals ------------------------------------------------------------------------


def test_cancel_closes_the_job_and_a_late_task_does_nothing(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(_url("dry_run", job))
    # when the queued job is cancelled before a worker takes it
    response = admin_client.post(_url("cancel", job), follow=True)
    assert any("cancelled" in m for m in _messages(response))
    job.refresh_from_db()
    assert job.state == ImportState.CANCELLED
    # then the task, delivered late, runs nothing
    assert import_job_run(job.pk) == ImportState.CANCELLED
    assert not ImportRejection.objects.filter(job=job).exists()
    # and nothing more can be done with the job
    for step in ("dry_run", "apply", "cancel"):
        response = admin_client.post(_url(step, job), follow=True)
        assert any("it is cancelled" in m for m in _messages(response)), step
    job.refresh_from_db()
    assert job.state == ImportState.CANCELLED


@pytest.mark.parametrize(
    ("state", "step", "reason"),
    [
        (ImportState.INSPECTED, "apply", "run a dry run first"),
        (ImportState.FAILED, "apply", "it failed before it ran; fix the problem and upload"),
        (ImportState.FAILED, "dry_run", "upload the file again"),
        (ImportState.FAILED, "resume", "it failed before it ran"),
        (ImportState.CANCELLED, "apply", "upload the file again to import it"),
        (ImportState.CANCELLED, "resume", "it was cancelled before it ran"),
        (ImportState.RUNNING, "apply", "cancel it to stop it after the batch it is applying"),
        (ImportState.RUNNING, "resume", "cancel it to stop it after the batch it is applying"),
        (ImportState.DONE, "resume", "it has been applied"),
        (ImportState.QUEUED, "apply", "already queued"),
        (ImportState.DONE, "cancel", "it has been applied"),
        (ImportState.DONE, "apply", "it has been applied"),
        (ImportState.FAILED, "cancel", "it is failed"),
    ],
)
def test_steps_refused_in_the_wrong_state_say_why_and_change_nothing(
    admin_client, dataset, state, step, reason
):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    # given a job in that state (set directly: a worker or an earlier step put it there)
    ImportJob.objects.filter(pk=job.pk).update(state=state)
    response = admin_client.post(_url(step, job), follow=True)
    assert response.status_code == 200
    assert any(reason in m for m in _messages(response)), _messages(response)
    job.refresh_from_db()
    assert job.state == state


def test_steps_only_answer_post(admin_client, dataset):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    for step in ("inspect", "dry_run", "apply", "cancel"):
        assert admin_client.get(_url(step, job)).status_code == 405


def test_mapping_is_frozen_once_applied(admin_client, dataset, django_capture_on_commit_callbacks):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    job = _apply(
        admin_client,
        _dry_run(admin_client, job, django_capture_on_commit_callbacks),
        django_capture_on_commit_callbacks,
    )
    response = admin_client.post(
        _url("change", job), {"mode": "upsert", "key": "{name}"}, follow=True
    )
    assert any("only be changed before" in m for m in _messages(response))
    job.refresh_from_db()
    assert job.options["mapping"]["key"] == "{id}"
    assert response.context["mapping_form"] is None
    html = response.content.decode()
    assert "<code>{id}</code>" in html  # shown read-only
    assert "import-actions" not in html


def test_mapping_change_after_a_dry_run_discards_it(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    admin_client.post(
        _url("change", job), {"mode": "upsert", "key": "x{id}", "lon": "lon", "lat": "lat"}
    )
    job.refresh_from_db()
    assert job.state == ImportState.INSPECTED
    assert (job.report, job.added, job.rejected) == ({}, 0, 0)
    response = admin_client.post(_url("apply", job), follow=True)
    assert any("run a dry run first" in m for m in _messages(response))


# --- progress ---------------------------------------------------------------------------------


def test_progress_endpoint_reports_state_phase_and_rows(
    admin_client, dataset, clear_cache, django_capture_on_commit_callbacks
):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    url = _url("progress", job)
    page = admin_client.get(_url("change", job)).content.decode()
    assert "ingestion/import_progress.js" in page
    assert 'id="import-progress"' not in page  # nothing has run yet
    # queued: waiting for a worker
    with django_capture_on_commit_callbacks(execute=False):
        admin_client.post(_url("dry_run", job))
    status = admin_client.get(url).json()
    assert (status["state"], status["phase"], status["percent"], status["running"]) == (
        "queued",
        "waiting for a worker",
        0,
        True,
    )
    page = admin_client.get(_url("change", job)).content.decode()
    assert 'data-url="' + url + '"' in page
    assert 'data-running="true"' in page
    # a worker has read 5 of 11 rows (what the import service publishes as it reads)
    ImportJob.objects.filter(pk=job.pk).update(state=ImportState.RUNNING)
    import_job_progress_publish(job.pk, rows=5, phase="reading rows")
    status = admin_client.get(url).json()
    assert (status["phase"], status["rows_read"], status["rows_total"], status["percent"]) == (
        "reading rows",
        5,
        11,
        45,
    )
    assert status["state_label"] == "Running the dry run"
    # then 3 of its 4 batches are committed: the bar follows the batches
    import_job_progress_publish(
        job.pk, rows=11, phase="3 of 4 batches committed", batches=3, batches_total=4
    )
    status = admin_client.get(url).json()
    assert (status["phase"], status["percent"]) == ("3 of 4 batches committed", 75)
    # finished
    ImportJob.objects.filter(pk=job.pk).update(state=ImportState.QUEUED)
    import_job_run(job.pk)
    status = admin_client.get(url).json()
    assert (status["state"], status["running"], status["percent"], status["rows_read"]) == (
        "dry_run_ready",
        False,
        100,
        11,
    )
    page = admin_client.get(_url("change", job)).content.decode()
    assert 'data-running="false"' in page
    assert 'value="100"' in page


def test_progress_script_is_served_locally(client):
    script = Path(__file__).resolve().parents[2] / "static" / "ingestion" / "import_progress.js"
    text = script.read_text()
    assert "fetch(" in text
    assert "http" not in text.replace("HTTP ", "")
    response = client.get("/static/ingestion/import_progress.js")
    assert response.status_code == 200


# --- permissions ------------------------------------------------------------------------------


def _user(username: str, *, staff: bool, perms: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_non_staff_are_sent_to_the_login_page(client, admin_client, dataset):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    client.force_login(_user("visitor", staff=False))
    for url in [
        reverse("admin:ingestion_importjob_add"),
        _url("change", job),
        _url("progress", job),
        _url("rejections_csv", job),
    ]:
        response = client.get(url)
        assert response.status_code == 302
        assert reverse("admin:login") in response["Location"]
    response = client.post(_url("cancel", job))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.state == ImportState.INSPECTED


def test_staff_without_permissions_are_refused(client, admin_client, dataset):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    client.force_login(_user("clerk", staff=True))
    assert client.get(reverse("admin:ingestion_importjob_add")).status_code == 403
    # the job is not among those they may see: the admin's "does not exist" answer
    assert client.get(_url("change", job))["Location"] == reverse("admin:index")
    assert client.get(_url("progress", job)).status_code == 403
    assert client.get(_url("rejections_csv", job)).status_code == 403
    assert client.post(_url("cancel", job)).status_code == 403


def test_staff_who_may_only_view_see_the_job_but_cannot_run_it(client, admin_client, dataset):
    job = _uploaded(admin_client, dataset, "nasty_places.csv", NASTY.read_bytes())
    auditor = _user("auditor", staff=True, perms=("view_importjob",))
    DatasetRole.objects.create(user=auditor, dataset=dataset, role="viewer")
    client.force_login(auditor)
    page = client.get(_url("change", job))
    assert page.status_code == 200
    html = page.content.decode()
    assert "St Mary, the Virgin" in html
    assert 'value="Dry run"' not in html
    assert client.post(_url("dry_run", job)).status_code == 403
    assert client.post(_url("change", job), {"mode": "upsert", "key": "{name}"}).status_code == 403
    assert client.get(reverse("admin:ingestion_importjob_add")).status_code == 403
    job.refresh_from_db()
    assert job.state == ImportState.INSPECTED


def test_gzip_cut_short_after_its_first_megabyte_is_refused_on_upload(admin_client, dataset):
    # given a gzip CSV cut short: its start reads fine, its end does not
    rows = "".join(
        f"r{n},Place number {n} with a longer name,-1.{n % 97},52.{n % 89}\n" for n in range(60_000)
    )
    whole = gzip.compress(("id,name,lon,lat\n" + rows).encode(), mtime=0)
    # when it is uploaded
    response = _upload(admin_client, dataset, "cut.csv.gz", whole[: len(whole) - 2000])
    # then the whole stream was checked before anything was stored, and the form says why
    assert response.status_code == 200
    assert "cut short" in str(response.context["form"].errors["file"])
    assert not ImportJob.objects.filter(dataset=dataset).exists()


@pytest.mark.parametrize("kind", ["gobayes-json", "geoparquet"])
def test_streamed_formats_inspect_and_dry_run_in_the_admin(
    admin_client, dataset, kind, tmp_path, django_capture_on_commit_callbacks
):
    # given a go-bayes JSON export, or a GeoParquet written here
    if kind == "gobayes-json":
        name, content = "export.json", (FIXTURES / "gobayes_export.json").read_bytes()
    else:
        table = pa.table(
            {
                "id": ["p1", "p2"],
                "name": ["Chapel", "Temple"],
                "geometry": pa.array(
                    [Point(-1.5, 53.8).wkb.tobytes(), Point(-0.1, 51.5).wkb.tobytes()],
                    type=pa.binary(),
                ),
            }
        )
        geo = {
            "version": "1.1.0",
            "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"]}},
        }
        path = tmp_path / "places.parquet"
        pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), path)
        name, content = "places.parquet", path.read_bytes()
    # when it is uploaded and dry-run
    job = _uploaded(admin_client, dataset, name, content)
    job.refresh_from_db()
    assert job.state == ImportState.INSPECTED
    assert job.inspection["sample_rows"]
    page = admin_client.get(_url("change", job))
    assert page.status_code == 200
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    # then the first rows are shown and the dry run counts every record as added
    assert job.state == ImportState.DRY_RUN_READY, job.error
    assert job.added > 0
    assert job.added + job.rejected == job.rows_read
    if kind == "geoparquet":
        assert (job.added, job.rejected) == (2, 0)
