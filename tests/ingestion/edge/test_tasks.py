"""The edge queue's tasks, called directly and each run twice: partitions ahead and past
retention, silent nodes, and the reading counters."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import redis
from django.utils import timezone

from ingestion.edge import tasks
from ingestion.edge.models import EdgeNode, EdgeReadingCount, NodeStatus, ObservationBatch
from ingestion.edge.services.partitions import (
    month_start,
    next_month,
    observation_partitions,
    observation_partitions_ensure_months,
    observation_partitions_maintain,
    partition_name,
)
from tests.ingestion.edge.factories import declare, ingest, node_make, reading

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2019, 3, 1, 7, 0, tzinfo=dt.UTC)


def test_partition_task_creates_months_ahead_and_twice_changes_nothing(settings):
    # given
    settings.EDGE_PARTITION_MONTHS_AHEAD = 3
    settings.EDGE_RETENTION_DAYS = 0
    months = [month_start(timezone.now())]
    for _ in range(3):
        months.append(next_month(months[-1]))

    # when
    first = tasks.edge_partitions_maintain()
    after_first = observation_partitions()
    second = tasks.edge_partitions_maintain()

    # then
    assert {partition_name(m) for m in months} <= set(after_first)
    assert set(first["created"]) <= {partition_name(m) for m in months}
    assert second == {"created": [], "dropped": []}
    assert observation_partitions() == after_first


def test_retention_drops_partitions_wholly_older_and_keeps_the_rest(settings):
    # given partitions from 2019 and this month, and a retention of one year
    observation_partitions_ensure_months(
        months=[dt.date(2019, 1, 1), dt.date(2019, 2, 1), month_start(timezone.now())]
    )
    settings.EDGE_RETENTION_DAYS = 365
    settings.EDGE_PARTITION_MONTHS_AHEAD = 1

    # when
    result = tasks.edge_partitions_maintain()

    # then the old months are gone, this month stays, and a second run drops nothing
    names = observation_partitions()
    assert "ingestion_observation_y2019m01" in result["dropped"]
    assert "ingestion_observation_y2019m01" not in names
    assert "ingestion_observation_y2019m02" not in names
    assert partition_name(month_start(timezone.now())) in names
    assert tasks.edge_partitions_maintain()["dropped"] == []


def test_retention_keeps_the_month_that_straddles_the_cutoff(settings):
    now = timezone.now()
    cutoff = now - dt.timedelta(days=40)
    straddling = month_start(cutoff)
    observation_partitions_ensure_months(months=[straddling])
    settings.EDGE_RETENTION_DAYS = 40

    tasks.edge_partitions_maintain()

    assert partition_name(straddling) in observation_partitions()


def test_a_month_just_past_retention_waits_a_day_for_batches_that_accepted_it(
    settings, monkeypatch
):
    # given a retention of 30 days, and a batch checked a minute before March 2019 passed it
    # (its reading, a few seconds before the month's end, was still within retention)
    settings.EDGE_RETENTION_DAYS = 30
    end = dt.datetime(2019, 4, 1, tzinfo=dt.UTC)
    checked_at = end + dt.timedelta(days=30) - dt.timedelta(minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: checked_at)
    late_march = reading(0, "ret-1", end - dt.timedelta(seconds=5))
    outcome = ingest(node_make(), [late_march], sensors=[declare("ret-1")])
    monkeypatch.undo()
    assert outcome.response["accepted"] == 1
    march = partition_name(dt.date(2019, 3, 1))

    # when retention runs an hour after the month passed it
    result = observation_partitions_maintain(
        months_ahead=0, retention_days=30, now=checked_at + dt.timedelta(hours=1)
    )
    # then the month stays (a batch that accepted a reading in it may not have committed)
    assert march not in result["dropped"]
    assert march in observation_partitions()
    # and goes once it has been past retention for a day
    result = observation_partitions_maintain(
        months_ahead=0, retention_days=30, now=checked_at + dt.timedelta(days=1, minutes=2)
    )
    assert march in result["dropped"]


def test_silent_task_marks_quiet_nodes_and_twice_marks_nothing_more(settings):
    # given a quiet node, a node seen just now, a new node and a disabled quiet one
    settings.EDGE_SILENT_AFTER_SECONDS = 900
    long_ago = timezone.now() - dt.timedelta(hours=1)
    quiet, recent, new, disabled = node_make(), node_make(), node_make(), node_make()
    EdgeNode.objects.filter(pk=quiet.pk).update(last_seen_at=long_ago)
    EdgeNode.objects.filter(pk=recent.pk).update(last_seen_at=timezone.now())
    EdgeNode.objects.filter(pk=disabled.pk).update(
        last_seen_at=long_ago, status=NodeStatus.DISABLED
    )

    # when
    marked = tasks.edge_nodes_silent_mark()
    again = tasks.edge_nodes_silent_mark()

    # then
    assert quiet.pk in marked
    assert {recent.pk, new.pk, disabled.pk}.isdisjoint(marked)
    assert quiet.pk not in again
    statuses = dict(EdgeNode.objects.values_list("pk", "status"))
    assert statuses[quiet.pk] == NodeStatus.SILENT
    assert statuses[recent.pk] == statuses[new.pk] == NodeStatus.ACTIVE
    assert statuses[disabled.pk] == NodeStatus.DISABLED


def test_a_node_never_heard_from_is_silent_once_its_creation_is_old(settings):
    settings.EDGE_SILENT_AFTER_SECONDS = 900
    node = node_make()
    EdgeNode.objects.filter(pk=node.pk).update(created_at=timezone.now() - dt.timedelta(hours=2))

    assert node.pk in tasks.edge_nodes_silent_mark()


def _totals() -> dict[tuple[str, str], int]:
    return {(c.outcome, c.reason): c.total for c in EdgeReadingCount.objects.all()}


def test_follow_up_counts_a_batch_once_by_outcome_and_reason():
    # given a batch with accepted, duplicate and rejected readings
    node = node_make()
    ingest(node, [reading(0, "t-1", T0)], sensors=[declare("t-1")])
    outcome = ingest(
        node,
        [
            reading(0, "t-1", T0),  # stored before
            reading(1, "t-1", T0 + dt.timedelta(seconds=1)),
            reading(2, "t-1", T0 + dt.timedelta(seconds=1)),  # repeated in the batch
            reading(3, "t-1", T0 + dt.timedelta(seconds=2), value=-1),
            reading(4, "nobody", T0),
        ],
    )
    before = _totals()

    # when the follow-up runs twice (a redelivery)
    assert tasks.edge_batch_follow_up(outcome.response["batch"]) is True
    assert tasks.edge_batch_follow_up(outcome.response["batch"]) is False

    # then each reading is counted once under its outcome and reason
    after = _totals()
    added = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert {key: n for key, n in added.items() if n} == {
        ("accepted", ""): 1,
        ("duplicate", "stored"): 1,
        ("duplicate", "duplicate_in_batch"): 1,
        ("rejected", "out_of_range"): 1,
        ("rejected", "unknown_sensor"): 1,
    }


def test_the_sweep_counts_batches_whose_follow_up_was_lost():
    # given a batch received ten minutes ago and never counted
    node = node_make()
    outcome = ingest(node, [reading(0, "t-2", T0)], sensors=[declare("t-2")])
    ObservationBatch.objects.filter(pk=outcome.response["batch"]).update(
        received_at=timezone.now() - dt.timedelta(minutes=10)
    )

    # when
    counted = tasks.edge_batches_count_pending()

    # then it is counted, and a second sweep leaves it alone
    assert counted >= 1
    assert ObservationBatch.objects.get(pk=outcome.response["batch"]).counted_at is not None
    assert tasks.edge_batch_follow_up(outcome.response["batch"]) is False


def test_a_committed_batch_queues_its_follow_up_on_the_edge_queue(
    settings, django_capture_on_commit_callbacks
):
    # given the test broker's edge queue (a Redis list), empty of this batch
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    before = set(broker.lrange("edge", 0, -1))
    node = node_make()

    # when a batch commits
    with django_capture_on_commit_callbacks(execute=True):
        outcome = ingest(node, [reading(0, "t-3", T0)], sensors=[declare("t-3")])

    # then one follow-up message for it waits on the edge queue, and running it counts it
    batch_id = outcome.response["batch"]
    ours = []
    for raw in set(broker.lrange("edge", 0, -1)) - before:
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        if message["headers"]["task"] == "ingestion.edge.tasks.edge_batch_follow_up" and args == [
            batch_id
        ]:
            ours.append(raw)
    for raw in ours:
        broker.lrem("edge", 1, raw)
    assert len(ours) == 1
    assert tasks.edge_batch_follow_up(batch_id) is True
