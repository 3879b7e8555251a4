"""The recompute task, the command and the lock that keeps recomputes one at a time."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from analytics.models import RegionSummary, ResultsVersion
from analytics.services import analytics_recompute
from analytics.services.results import Busy, analytics_lock, results_version
from analytics.tasks import analytics_recompute as analytics_recompute_task
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.locks import AdvisoryLock
from places.services import dataset_get_or_create

pytestmark = pytest.mark.django_db(databases=["default", "replica"])


def test_task_run_twice_stores_everything_once_and_then_changes_nothing(gb_import):
    # given no stored summaries
    RegionSummary.objects.all().delete()
    # when the task runs, twice
    analytics_recompute_task()
    first = results_version()
    stored = RegionSummary.objects.count()
    analytics_recompute_task()
    # then every region has one summary, and the second run moved nothing (caches stay)
    assert stored == RegionSummary.objects.filter(level__in=["country", "district"]).count()
    assert stored > 500
    assert results_version() == first
    assert ResultsVersion.objects.get().version == first


def test_a_second_recompute_while_one_runs_is_refused(gb_import):
    # given a recompute in another session holding the lock (a session lock on the primary)
    other = connection.get_new_connection(connection.get_connection_params())
    try:
        other.execute("SELECT pg_advisory_lock(%s)", [int(AdvisoryLock.ANALYTICS)])
        # then another finds it busy, from the service and the command alike
        with pytest.raises(Busy):
            analytics_recompute()
        with pytest.raises(CommandError, match="another analytics recompute"):
            call_command("analytics_recompute", "--full")
        # (released by the holder itself: a closed session's lock goes a moment later)
        other.execute("SELECT pg_advisory_unlock(%s)", [int(AdvisoryLock.ANALYTICS)])
    finally:
        other.close()
    # and once it ended, the lock is free again
    with analytics_lock():
        pass


def test_command_full_recompute_reports_what_it_did(gb_import, capsys):
    # when
    call_command("analytics_recompute", "--full")
    # then
    out = capsys.readouterr().out
    assert "region summaries recomputed on the" in out
    assert RegionSummary.objects.filter(region__code="E09000033", places__gt=0).exists()


def _queued_recomputes(broker: redis.Redis) -> list[dict]:
    found = []
    for raw in broker.lrange("analytics", 0, -1):
        message = json.loads(raw)
        if message["headers"]["task"] == "analytics.tasks.analytics_recompute":
            found.append(message)
    return found


def test_an_import_that_changed_places_queues_one_recompute_when_it_commits(
    sample_regions, settings, clear_cache, django_capture_on_commit_callbacks, tmp_path
):
    # given the test broker's analytics queue, emptied
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("analytics")
    dataset = dataset_get_or_create(slug="hook-test")
    path = tmp_path / "two.csv"
    path.write_text("id,name,lon,lat\n1,A,-0.13,51.5\n2,B,-0.12,51.5\n")
    # when an import adds places and commits, twice (a second file before any worker ran)
    with django_capture_on_commit_callbacks(execute=True):
        import_job_execute(job_id=import_job_create(path=path, dataset=dataset).pk)
    path.write_text("id,name,lon,lat\n1,A,-0.13,51.5\n2,B,-0.12,51.5\n3,C,-0.11,51.5\n")
    with django_capture_on_commit_callbacks(execute=True):
        import_job_execute(job_id=import_job_create(path=path, dataset=dataset).pk)
    # then one incremental recompute waits on the analytics queue
    assert len(_queued_recomputes(broker)) == 1
    broker.delete("analytics")


def test_admin_button_queues_a_full_recompute(admin_client, client, django_user_model, settings):
    # given the analytics queue emptied, and the button on the summaries' list
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("analytics")
    page = admin_client.get(reverse("admin:analytics_regionsummary_changelist"))
    assert b"Recompute all" in page.content
    # when a superuser presses it
    response = admin_client.post(reverse("admin:analytics_regionsummary_recompute"))
    # then a full recompute is queued
    assert response.status_code == 302
    (message,) = _queued_recomputes(broker)
    assert json.loads(base64.b64decode(message["body"]))[1] == {"full": True}
    broker.delete("analytics")
    # and staff without the permission can neither see nor press it
    staff = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_regionsummary"))
    client.force_login(staff)
    assert (
        b"Recompute all"
        not in client.get(reverse("admin:analytics_regionsummary_changelist")).content
    )
    assert client.post(reverse("admin:analytics_regionsummary_recompute")).status_code == 403
    assert _queued_recomputes(broker) == []
