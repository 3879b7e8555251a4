"""Import polish in the admin: a dataset created from the import form, warnings for a file
imported before and for keys used in other datasets, dry-run samples spread over the file,
and links from an applied job to its places and to the map.

Staff use Django's test client; the Celery task runs in the test, as in test_admin_flow.
"""

from __future__ import annotations

from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from ingestion.models import ImportJob, ImportState
from ingestion.services.imports.samples import SAMPLE_SIZE
from places.models import Dataset, Place
from places.services import dataset_get_or_create
from tests.ingestion.test_admin_flow import _apply, _dry_run, _messages, _upload, _uploaded, _url

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset() -> Dataset:
    return dataset_get_or_create(slug="polish")


def _csv(rows: range, *, prefix: str = "k", name: str = "Chapel") -> bytes:
    lines = ["id,name,religion,lon,lat"]
    lines += [
        f"{prefix}{i},{name} {i},christian,{-1 + i / 1000:.4f},{52 + i / 1000:.4f}" for i in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def _applied(client, dataset, name, content, capture) -> ImportJob:
    job = _uploaded(client, dataset, name, content)
    return _apply(client, _dry_run(client, job, capture), capture)


# --- a dataset from the import form ----------------------------------------------------------


def test_upload_with_a_new_dataset_name_creates_the_dataset_with_a_unique_slug(admin_client):
    # given a dataset whose slug the new name would take
    dataset_get_or_create(slug="parish-register")
    # when staff upload into a new dataset named so
    response = admin_client.post(
        reverse("admin:ingestion_importjob_add"),
        {
            "file": SimpleUploadedFile("p.csv", _csv(range(3))),
            "new_dataset": " Parish Register ",
            "mode": "upsert",
        },
    )
    # then the job belongs to a new dataset with that name and the next free slug
    assert response.status_code == 302
    job = ImportJob.objects.latest("id")
    assert (job.dataset.name, job.dataset.slug) == ("Parish Register", "parish-register-2")
    assert job.state == ImportState.INSPECTED


def test_new_dataset_is_not_created_when_the_file_is_refused(admin_client):
    response = admin_client.post(
        reverse("admin:ingestion_importjob_add"),
        {"file": SimpleUploadedFile("e.csv", b""), "new_dataset": "Empty", "mode": "upsert"},
    )
    assert response.status_code == 200
    assert "empty" in str(response.context["form"].errors["file"])
    assert not Dataset.objects.filter(name="Empty").exists()


@pytest.mark.parametrize(
    ("choose", "new_name", "field", "message"),
    [
        (False, "", "dataset", "Choose a dataset, or name a new one below."),
        (True, "Another", "new_dataset", "Choose a dataset or name a new one, not both."),
    ],
)
def test_upload_needs_exactly_one_of_dataset_and_new_dataset(
    admin_client, dataset, choose, new_name, field, message
):
    data = {"file": SimpleUploadedFile("p.csv", _csv(range(3))), "mode": "upsert"}
    data |= {"new_dataset": new_name, **({"dataset": dataset.pk} if choose else {})}
    jobs_before = ImportJob.objects.count()  # the session's sample imports are jobs too
    response = admin_client.post(reverse("admin:ingestion_importjob_add"), data)
    assert response.status_code == 200
    assert response.context["form"].errors[field] == [message]
    assert ImportJob.objects.count() == jobs_before
    assert not Dataset.objects.filter(name="Another").exists()


# --- the same file again ---------------------------------------------------------------------


def test_same_file_uploaded_again_warns_with_the_earlier_import(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given a file applied to the dataset, and only dry-run to another one
    content = _csv(range(5))
    first = _applied(admin_client, dataset, "a.csv", content, django_capture_on_commit_callbacks)
    # when the same bytes are uploaded again, under another name
    response = _upload(admin_client, dataset, "renamed.csv", content)
    # then the upload says so, naming the earlier job, and so does the job's page
    assert response.status_code == 302
    page = admin_client.get(response["Location"])
    warning = (
        "The same file (SHA-256) was already imported into this dataset by import "
        f"#{first.pk} (a.csv, "
    )
    assert any(m.startswith(warning) for m in _messages(page))
    assert page.context["warnings"][0].startswith(warning)


def test_same_file_imported_into_another_dataset_is_named_in_the_warning(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    content = _csv(range(5))
    _applied(admin_client, dataset, "a.csv", content, django_capture_on_commit_callbacks)
    other = dataset_get_or_create(slug="other", defaults={"name": "Other register"})
    job = _uploaded(admin_client, other, "a.csv", content)
    page = admin_client.get(_url("change", job))
    assert len(page.context["warnings"]) == 1
    assert "into another dataset, “polish”, by import #" in page.context["warnings"][0]


def test_a_new_file_or_one_only_dry_run_before_has_no_warning(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    content = _csv(range(5))
    _dry_run(
        admin_client,
        _uploaded(admin_client, dataset, "a.csv", content),
        django_capture_on_commit_callbacks,
    )
    again = _uploaded(admin_client, dataset, "a.csv", content)
    fresh = _uploaded(admin_client, dataset, "b.csv", _csv(range(6)))
    for job in (again, fresh):
        page = admin_client.get(_url("change", job))
        assert page.context["warnings"] == []
        assert "import-warnings" not in page.content.decode()


# --- keys in other datasets ------------------------------------------------------------------


def test_dry_run_warns_of_keys_already_in_other_datasets(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given 3 of the file's keys already imported into another dataset
    other = dataset_get_or_create(slug="other-keys", defaults={"name": "Older register"})
    _applied(admin_client, other, "old.csv", _csv(range(3)), django_capture_on_commit_callbacks)
    # when a file with keys k0..k9 is dry-run into this dataset
    job = _uploaded(admin_client, dataset, "new.csv", _csv(range(10), name="Church"))
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    # then the report counts them by dataset, and the page warns
    assert job.report["samples"]["keys_in_other_datasets"] == [
        {"id": other.pk, "name": "Older register", "keys": 3}
    ]
    html = admin_client.get(_url("change", job)).content.decode()
    assert "3 of this file's keys already exist in another dataset" in html
    # and after the apply the warning stays, from the dry run kept as the preview
    job = _apply(admin_client, job, django_capture_on_commit_callbacks)
    html = admin_client.get(_url("change", job)).content.decode()
    assert "3 of this file's keys already exist in another dataset" in html


def test_dry_run_of_keys_used_nowhere_else_has_no_such_warning(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    job = _dry_run(
        admin_client,
        _uploaded(admin_client, dataset, "n.csv", _csv(range(4))),
        django_capture_on_commit_callbacks,
    )
    assert job.report["samples"]["keys_in_other_datasets"] == []
    assert "import-keys-elsewhere" not in admin_client.get(_url("change", job)).content.decode()


# --- samples spread over the file ------------------------------------------------------------


def test_dry_run_samples_are_spread_over_the_file_in_file_order_and_repeatable(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given 200 rows, every 10th without coordinates (rejected)
    lines = ["id,name,religion,lon,lat"]
    for i in range(200):
        where = ",," if i % 10 == 9 else f"{-1 + i / 1000:.4f},{52 + i / 1000:.4f}"
        lines.append(f"k{i},Chapel {i},christian,{where}")
    content = ("\n".join(lines) + "\n").encode()
    job = _uploaded(admin_client, dataset, "spread.csv", content)
    # when it is dry-run twice
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    first = job.report["samples"]
    job = _dry_run(admin_client, job, django_capture_on_commit_callbacks)
    samples = job.report["samples"]
    # then each outcome has its full sample, from all over the file, in file order
    added = [r["row"] for r in samples["added"]]
    rejected = [r["row"] for r in samples["rejected"]]
    assert (len(added), len(rejected)) == (SAMPLE_SIZE, SAMPLE_SIZE)
    for rows in (added, rejected):
        assert rows == sorted(rows)
        assert rows[0] < 60
        assert rows[-1] > 150
    assert added != list(range(2, 2 + SAMPLE_SIZE))
    # and the same rows each time
    assert (first["added"], first["rejected"]) == (samples["added"], samples["rejected"])
    assert "picked across the whole file" in admin_client.get(_url("change", job)).content.decode()


def test_updated_and_unchanged_samples_are_spread_too(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    _applied(admin_client, dataset, "a.csv", _csv(range(100)), django_capture_on_commit_callbacks)
    # every other row renamed
    lines = ["id,name,religion,lon,lat"]
    for i in range(100):
        name = f"Renamed {i}" if i % 2 else f"Chapel {i}"
        lines.append(f"k{i},{name},christian,{-1 + i / 1000:.4f},{52 + i / 1000:.4f}")
    job = _uploaded(admin_client, dataset, "b.csv", ("\n".join(lines) + "\n").encode())
    samples = _dry_run(admin_client, job, django_capture_on_commit_callbacks).report["samples"]
    for outcome in ("updated", "unchanged"):
        keys = [int(r["key"][1:]) for r in samples[outcome]]
        assert len(keys) == SAMPLE_SIZE
        assert keys == sorted(keys)
        assert keys[-1] > 70
        assert all(k % 2 == (outcome == "updated") for k in keys)


# --- after apply: the places and the map -----------------------------------------------------


def test_applied_job_links_to_the_places_it_added_and_updated_and_to_the_map(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    # given a job that added 3 places, then one that adds 1 and updates 1
    first = _applied(
        admin_client, dataset, "a.csv", _csv(range(3)), django_capture_on_commit_callbacks
    )
    content = _csv(range(4)).replace(b"Chapel 1,", b"St Chad,")
    job = _applied(admin_client, dataset, "b.csv", content, django_capture_on_commit_callbacks)
    assert (job.added, job.updated, job.unchanged) == (1, 1, 2)
    # when staff open the job's page
    page = admin_client.get(_url("change", job))
    links = page.context["result_links"]
    html = unescape(page.content.decode())
    assert "The 1 place added" in html
    assert "On the map" in html
    # then the links list exactly the places the job added, and updated
    added = admin_client.get(links["added"])
    assert added.status_code == 200
    assert [p.source_key for p in added.context["cl"].result_list] == ["k3"]
    updated = admin_client.get(links["updated"])
    assert [p.source_key for p in updated.context["cl"].result_list] == ["k1"]
    assert "retired" not in links
    # and the first job's link lists its three places once each
    first_added = admin_client.get(
        admin_client.get(_url("change", first)).context["result_links"]["added"]
    )
    assert sorted(p.source_key for p in first_added.context["cl"].result_list) == ["k0", "k1", "k2"]
    # and the map opens on the box around the places it wrote
    url = urlsplit(links["map"])
    assert url.path == reverse("map")
    west, south, east, north = map(float, parse_qs(url.query)["bbox"][0].split(","))
    assert (west, south, east, north) == pytest.approx((-0.999, 52.001, -0.997, 52.003))
    assert admin_client.get(links["map"]).status_code == 200


def test_a_job_not_applied_has_no_result_links(
    admin_client, dataset, django_capture_on_commit_callbacks
):
    job = _dry_run(
        admin_client,
        _uploaded(admin_client, dataset, "a.csv", _csv(range(3))),
        django_capture_on_commit_callbacks,
    )
    page = admin_client.get(_url("change", job))
    assert page.context["result_links"] == {}
    assert "On the map" not in page.content.decode()
    assert not Place.objects.filter(dataset=dataset).exists()


def test_place_list_refuses_other_lookups_across_the_change_log(admin_client):
    response = admin_client.get(
        reverse("admin:places_place_changelist") + "?changes__user__password=x"
    )
    # Django's admin refuses a lookup it does not allow as a bad request
    assert response.status_code == 400
