"""The recompute task, the command and the lock that keeps recomputes one at a time."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from analytics.models import RegionSummary, ResultsVersion
from analytics.services import analytics_recompute
from analytics.services.results import Busy, analytics_lock, results_version
from analytics.tasks import analytics_recompute as analytics_recompute_task
from places.locks import AdvisoryLock

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
