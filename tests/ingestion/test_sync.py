"""Datasets that follow a source URL, against a real HTTP server started by the test."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from ingestion import tasks
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.services.imports import import_job_execute
from ingestion.services.sync import dataset_sync, datasets_sync_due
from places.models import Dataset, DatasetRole, Place, PlaceStatus, SyncEvery

pytestmark = pytest.mark.django_db

V1 = b"id,name,lon,lat\na,Chapel A,-1.5,53.8\nb,Chapel B,-2.2,53.5\nc,Chapel C,-0.1,51.5\n"
# a renamed, b gone, c as it was, d new.
V2 = b"id,name,lon,lat\na,Chapel A2,-1.5,53.8\nc,Chapel C,-0.1,51.5\nd,Chapel D,-3.0,51.5\n"


@dataclass
class Route:
    body: bytes = b""
    etag: str = ""
    delay: float = 0.0
    content_length: int | None = None
    # Seconds between the body's bytes (a source that drips).
    drip: float = 0.0
    last_modified: str = ""
    # Where a 302 sends the client instead of a body.
    redirect: str = ""


@dataclass
class Source:
    """What the server serves at each path, and the requests it saw."""

    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def source() -> Iterator[Source]:
    state = Source(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append({"path": self.path, **dict(self.headers.items())})
            route = state.routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            time.sleep(route.delay)
            if route.redirect:
                self.send_response(302)
                self.send_header("Location", route.redirect)
                self.end_headers()
                return
            if (route.etag and self.headers.get("If-None-Match") == route.etag) or (
                route.last_modified and self.headers.get("If-Modified-Since") == route.last_modified
            ):
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            length = len(route.body) if route.content_length is None else route.content_length
            self.send_header("Content-Length", str(length))
            if route.etag:
                self.send_header("ETag", route.etag)
            if route.last_modified:
                self.send_header("Last-Modified", route.last_modified)
            self.end_headers()
            # The client gives up on a lying or slow source, as it should.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if not route.drip:
                    self.wfile.write(route.body)
                for byte in route.body if route.drip else b"":
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(route.drip)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll: shutdown() waits for the loop's next poll (0.5 s by default, per test).
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _dataset(source: Source, path: str, slug: str = "synced") -> Dataset:
    return Dataset.objects.create(
        name=slug, slug=slug, sync_url=f"{source.url}{path}", sync_every=SyncEvery.DAILY
    )


def _sync_and_apply(dataset: Dataset, **kwargs: Any) -> ImportJob:
    outcome = dataset_sync(dataset=dataset, enqueue=False, **kwargs)
    assert outcome.status == "queued", outcome.message
    assert outcome.job is not None
    job = import_job_execute(job_id=outcome.job.pk)
    assert job is not None
    return job


def _active_keys(dataset: Dataset) -> list[str]:
    places = Place.objects.filter(dataset=dataset, status=PlaceStatus.ACTIVE)
    return sorted(places.values_list("source_key", flat=True))


def test_a_changed_file_is_imported_as_a_snapshot_that_retires_the_missing(source, tmp_path):
    # given a source that served V1, applied by a first sync
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    first = _sync_and_apply(dataset)
    assert (first.mode, first.state, first.added) == (ImportMode.SNAPSHOT, ImportState.DONE, 3)
    # when the source changes and is synced again
    source.routes["/places.csv"] = Route(body=V2, etag='"v2"')
    second = _sync_and_apply(dataset)
    # then the second sync asked whether V1 changed, and imported V2 as a snapshot
    assert source.requests[-1]["If-None-Match"] == '"v1"'
    assert (second.added, second.updated, second.unchanged, second.retired) == (1, 1, 1, 1)
    assert _active_keys(dataset) == ["a", "c", "d"]
    assert Place.objects.get(dataset=dataset, source_key="b").status == PlaceStatus.RETIRED
    assert second.options["sync"]["etag"] == '"v2"'
    # and its consistency report says the dataset now matches the source
    report = second.report["consistency"]
    assert (report["source_rows"], report["source_keys"], report["active_places"]) == (3, 3, 3)
    assert report["in_source_not_active"] == {"count": 0, "examples": []}
    assert report["active_not_in_source"] == {"count": 0, "examples": []}
    assert report["consistent"] is True
    dataset.refresh_from_db()
    assert dataset.sync_etag == '"v2"'
    assert dataset.sync_result == f"changed; snapshot import job #{second.pk} queued"


def test_an_unchanged_file_answers_304_and_queues_no_job(source):
    # given a source whose file was synced and applied
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    _sync_and_apply(dataset)
    jobs_before = ImportJob.objects.count()
    # when it is checked twice more
    outcomes = [dataset_sync(dataset=dataset, enqueue=False) for _ in range(2)]
    # then the source said "not modified" both times, and no job was made
    assert [o.status for o in outcomes] == ["unchanged", "unchanged"]
    assert [r["If-None-Match"] for r in source.requests[-2:]] == ['"v1"', '"v1"']
    assert ImportJob.objects.count() == jobs_before
    dataset.refresh_from_db()
    assert dataset.sync_result == "not modified (HTTP 304)"
    assert dataset.sync_checked_at is not None


def test_a_source_without_etag_is_unchanged_by_its_sha256(source):
    # given a source that sends no validators, synced and applied once
    source.routes["/places.csv"] = Route(body=V1)
    dataset = _dataset(source, "/places.csv")
    first = _sync_and_apply(dataset)
    # when the same bytes are fetched again
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then they are recognised as the file already applied
    assert (outcome.status, outcome.job) == ("unchanged", None)
    assert outcome.message == f"same file as import job #{first.pk} (SHA-256)"


def test_a_check_run_twice_before_its_job_ran_queues_one_job(source):
    # given a source with a new file
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    # when it is checked twice before the queued job runs
    first = dataset_sync(dataset=dataset, enqueue=False)
    second = dataset_sync(dataset=dataset, enqueue=False)
    # then the second check waits for the first's job
    assert first.status == "queued"
    assert (second.status, second.job) == ("skipped", None)
    assert ImportJob.objects.filter(dataset=dataset).count() == 1


def test_a_source_that_went_away_is_an_error_that_retires_nothing(source):
    # given a dataset synced from a source that is then gone
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    _sync_and_apply(dataset)
    del source.routes["/places.csv"]
    jobs_before = ImportJob.objects.count()
    # when it is checked
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then the 404 is recorded, no job is made and every place stays active
    assert outcome.status == "error"
    assert ImportJob.objects.count() == jobs_before
    assert _active_keys(dataset) == ["a", "b", "c"]
    dataset.refresh_from_db()
    assert dataset.sync_result == "error: the source answered HTTP 404 Not Found"


def test_a_slow_source_times_out_and_changes_nothing(source):
    # given a dataset synced once, whose source then takes longer than the timeout
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    _sync_and_apply(dataset)
    source.routes["/places.csv"] = Route(body=V2, etag='"v2"', delay=2.0)
    jobs_before = ImportJob.objects.count()
    # when it is checked with a short timeout
    outcome = dataset_sync(dataset=dataset, enqueue=False, read_timeout=0.3)
    # then the check fails with the reason, and nothing changed
    assert (outcome.status, outcome.message) == (
        "error",
        "the source did not answer within 0.3 s",
    )
    assert ImportJob.objects.count() == jobs_before
    assert _active_keys(dataset) == ["a", "b", "c"]
    dataset.refresh_from_db()
    assert dataset.sync_etag == '"v1"'


def test_a_source_that_drips_its_bytes_is_stopped_at_the_deadline(source):
    # given a source that answers at once but sends a byte every 0.1 s
    source.routes["/drip.csv"] = Route(body=V1, drip=0.1)
    dataset = _dataset(source, "/drip.csv")
    # when it is checked with a whole-download deadline of 0.5 s
    started = time.monotonic()
    outcome = dataset_sync(dataset=dataset, enqueue=False, read_timeout=1, deadline_seconds=0.5)
    # then the check stops there, long before the body's 8 s are sent, and imports nothing
    assert (outcome.status, outcome.message) == ("error", "the download took over 0.5 s")
    assert time.monotonic() - started < 3
    assert not ImportJob.objects.filter(dataset=dataset).exists()


def test_a_source_that_lies_about_its_size_is_refused_and_nothing_stored(source):
    # given a source announcing 10 bytes and sending more than the limit
    body = b"id,name,lon,lat\n" + b"x,Chapel,-1.5,53.8\n" * 400
    source.routes["/big.csv"] = Route(body=body, content_length=10)
    dataset = _dataset(source, "/big.csv")
    media = Path(settings.MEDIA_ROOT)
    files_before = sorted(media.rglob("*")) if media.exists() else []
    # when it is checked with a limit of 1,000 bytes
    outcome = dataset_sync(dataset=dataset, enqueue=False, max_bytes=1000)
    # then it is refused on the bytes that arrived, and no job or file was kept
    assert (outcome.status, outcome.message) == (
        "error",
        "the file is over the limit of 1000 bytes",
    )
    assert not ImportJob.objects.filter(dataset=dataset).exists()
    assert (sorted(media.rglob("*")) if media.exists() else []) == files_before


def test_a_source_that_sends_less_than_it_announced_is_refused(source):
    # given a source announcing more bytes than it sends (a cut file would retire places)
    source.routes["/cut.csv"] = Route(body=V1, content_length=len(V1) + 500)
    dataset = _dataset(source, "/cut.csv")
    # when it is checked
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then nothing is imported
    assert (outcome.status, outcome.message) == (
        "error",
        f"the source announced {len(V1) + 500} bytes and sent {len(V1)}",
    )
    assert not ImportJob.objects.filter(dataset=dataset).exists()


def test_a_file_the_importer_refuses_is_an_error_without_a_job(source):
    # given a source serving an empty CSV (an empty snapshot would retire everything)
    source.routes["/empty.csv"] = Route(body=b"id,name,lon,lat\n")
    dataset = _dataset(source, "/empty.csv")
    # when it is checked
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then the importer's safety checks refuse it as they refuse an upload
    assert outcome.status == "error"
    assert outcome.message.startswith("the file was refused: ")
    assert not ImportJob.objects.filter(dataset=dataset).exists()


def test_only_http_urls_are_fetched():
    # given a dataset whose sync URL was written past the form's validation
    dataset = Dataset.objects.create(
        name="local", slug="local", sync_url="file:///etc/passwd", sync_every=SyncEvery.DAILY
    )
    # when it is checked
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then nothing is read
    assert (outcome.status, outcome.message) == (
        "error",
        "'file:///etc/passwd' is not an HTTP(S) URL",
    )


def test_a_schedule_needs_a_sync_url():
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.create(name="x", slug="x", sync_every=SyncEvery.WEEKLY)


def test_datasets_are_due_by_their_schedule(source):
    # given datasets checked at different times, and one with its sync off
    now = timezone.now()
    never = _dataset(source, "/a.csv", slug="never")
    stale = _dataset(source, "/b.csv", slug="stale")
    fresh = _dataset(source, "/c.csv", slug="fresh")
    Dataset.objects.filter(pk=stale.pk).update(sync_checked_at=now - timedelta(days=1, minutes=1))
    Dataset.objects.filter(pk=fresh.pk).update(sync_checked_at=now - timedelta(hours=23))
    Dataset.objects.create(name="off", slug="off", sync_url=f"{source.url}/d.csv")
    # when beat asks which are due
    due = list(datasets_sync_due(now=now).values_list("slug", flat=True))
    # then only the daily ones whose last check is a day old or never happened
    assert due == [never.slug, stale.slug]


def test_the_beat_task_checks_each_due_dataset_and_is_safe_twice(source, monkeypatch):
    # given a due dataset with a file to import
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    sent: list[int] = []
    monkeypatch.setattr(tasks.dataset_sync_run, "delay", sent.append)
    monkeypatch.setattr(tasks.import_job_run, "delay", lambda job_id: None)
    # when beat's task runs, and each check it queued runs twice
    assert tasks.datasets_sync() == [dataset.pk]
    statuses = [tasks.dataset_sync_run(dataset_id) for dataset_id in sent * 2]
    # then one job was queued, the repeat waited for it, and the dataset is no longer due
    assert statuses == ["queued", "skipped"]
    assert ImportJob.objects.filter(dataset=dataset, state=ImportState.QUEUED).count() == 1
    assert tasks.datasets_sync() == []


def test_the_command_syncs_a_dataset_and_prints_the_consistency(source, capsys):
    # given a source with a file
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    _dataset(source, "/places.csv")
    # when the command runs the sync in-process, then again
    call_command("sync_dataset", "synced", "--sync")
    call_command("sync_dataset", "synced")
    out = capsys.readouterr().out
    # then the first imported the file, the second found it unchanged
    assert "synced: queued: changed; snapshot import job #" in out
    assert (
        "consistency: 3 rows in the source (0 rejected), 3 places active; "
        "0 in the source but not active, 0 active but not in the source"
    ) in out
    assert "synced: unchanged: not modified (HTTP 304)" in out


def test_the_command_fails_on_a_source_error(source):
    _dataset(source, "/missing.csv")
    with pytest.raises(CommandError, match="HTTP 404"):
        call_command("sync_dataset", "synced")


def _staff(username: str, *codenames: str, importer_of: tuple[Dataset, ...] = ()) -> User:
    """Staff with these model permissions, importer of these datasets (places.access needs
    both)."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for dataset in importer_of:
        DatasetRole.objects.create(user=user, dataset=dataset, role="importer")
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return User.objects.get(pk=user.pk)


def test_sync_now_queues_a_check_for_holders_of_the_sync_permission(client, source, monkeypatch):
    # given a dataset with a sync URL, one without, and a curator who may sync
    dataset = _dataset(source, "/places.csv")
    plain = Dataset.objects.create(name="plain", slug="plain")
    sent: list[int] = []
    monkeypatch.setattr(tasks.dataset_sync_run, "delay", sent.append)
    client.force_login(
        _staff("syncer", "view_dataset", "sync_dataset", importer_of=(dataset, plain))
    )
    # when they run "sync now" on both
    response = client.post(
        reverse("admin:places_dataset_changelist"),
        {"action": "sync_now", ACTION_CHECKBOX_NAME: [dataset.pk, plain.pk], "index": 0},
        follow=True,
    )
    # then a check of the one with a URL was queued, and the page says so of both
    assert sent == [dataset.pk]
    page = response.content.decode()
    assert "A check of 1 dataset(s) was queued" in page
    assert "1 dataset(s) have no sync URL and were left alone." in page


def test_sync_now_is_not_offered_without_the_sync_permission(client, source, monkeypatch):
    # given a curator who may change datasets but not sync them
    dataset = _dataset(source, "/places.csv")
    sent: list[int] = []
    monkeypatch.setattr(tasks.dataset_sync_run, "delay", sent.append)
    client.force_login(_staff("editor", "view_dataset", "change_dataset"))
    url = reverse("admin:places_dataset_changelist")
    # when they look at the list and post the action anyway
    assert b"sync_now" not in client.get(url).content
    client.post(url, {"action": "sync_now", ACTION_CHECKBOX_NAME: [dataset.pk], "index": 0})
    # then nothing is queued
    assert sent == []


def test_the_dataset_form_refuses_a_schedule_without_a_url_and_shows_the_last_check(
    admin_client, source
):
    # given the add form, with a schedule and no URL
    response = admin_client.post(
        "/admin/places/dataset/add/",
        {"name": "Register", "slug": "register", "sync_every": SyncEvery.WEEKLY},
    )
    # then it is refused with the constraint's message
    assert response.status_code == 200
    assert "A sync schedule needs a sync URL." in response.content.decode()
    # and a dataset that was checked shows what the check did
    dataset = _dataset(source, "/missing.csv")
    dataset_sync(dataset=dataset, enqueue=False)
    page = admin_client.get(f"/admin/places/dataset/{dataset.pk}/change/").content.decode()
    assert "error: the source answered HTTP 404 Not Found" in page
    assert "How often the sync URL is checked" in page


def test_sync_now_says_so_when_the_task_queue_is_down(client, source, monkeypatch):
    # given a broker that cannot be reached
    dataset = _dataset(source, "/places.csv")

    def unreachable(dataset_id: int) -> None:
        raise BrokerError("connection refused")

    monkeypatch.setattr(tasks.dataset_sync_run, "delay", unreachable)
    client.force_login(_staff("syncer", "view_dataset", "sync_dataset", importer_of=(dataset,)))
    # when "sync now" runs
    response = client.post(
        reverse("admin:places_dataset_changelist"),
        {"action": "sync_now", ACTION_CHECKBOX_NAME: [dataset.pk], "index": 0},
        follow=True,
    )
    # then the page says the check was not queued
    assert "The task queue could not be reached (connection refused); try again later." in (
        response.content.decode()
    )


def test_a_source_with_only_last_modified_is_asked_with_it_and_answers_304(source):
    # given a source that sends Last-Modified and no ETag, synced and applied once
    stamp = "Wed, 02 Dec 2026 10:00:00 GMT"
    source.routes["/places.csv"] = Route(body=V1, last_modified=stamp)
    dataset = _dataset(source, "/places.csv")
    _sync_and_apply(dataset)
    jobs_before = ImportJob.objects.count()
    # when it is checked again
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then the request carried the date back, the source said "not modified", no job was made
    assert source.requests[-1]["If-Modified-Since"] == stamp
    assert outcome.status == "unchanged"
    assert ImportJob.objects.count() == jobs_before


def test_a_redirect_to_another_scheme_is_an_error_that_retires_nothing(source):
    # given a synced dataset whose source now redirects to a local file
    source.routes["/places.csv"] = Route(body=V1, etag='"v1"')
    dataset = _dataset(source, "/places.csv")
    _sync_and_apply(dataset)
    source.routes["/places.csv"] = Route(redirect="file:///etc/passwd")
    # when it is checked
    outcome = dataset_sync(dataset=dataset, enqueue=False)
    # then it is an error naming the redirect, no job is made, and the places stay
    assert outcome.status == "error"
    assert "file:///etc/passwd" in outcome.message
    assert outcome.job is None
    assert _active_keys(dataset) == ["a", "b", "c"]


def test_beat_checks_the_due_datasets_every_quarter_hour():
    entry = settings.CELERY_BEAT_SCHEDULE["sync-datasets"]
    assert entry["task"] == "ingestion.tasks.datasets_sync"
    assert entry["schedule"].minute == {0, 15, 30, 45}
    assert callable(tasks.datasets_sync)
