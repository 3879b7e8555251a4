"""Two requests at once on real connections (threads): the same idempotency key stores one
batch and replays it to the other; the same readings under two keys are stored once.

Other connections see only committed rows, so everything these tests write is written on
connections of their own threads, outside the test's transaction, with a node of its own (the
rows stay, like the session's sample import).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from ingestion.edge import sensor_map
from ingestion.edge.models import Observation, ObservationBatch
from ingestion.edge.services import batches, partitions
from tests.ingestion.edge.factories import declare, ingest, node_make, reading

T0 = dt.datetime(2019, 3, 2, 0, 0, tzinfo=dt.UTC)


pytestmark = pytest.mark.django_db


def _in_thread(work: Callable[[], Any], results: dict[str, Any], name: str) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = work()
        except Exception as exc:  # the test reports it
            results[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def _committed(work: Callable[[], Any]) -> Any:
    """Run ``work`` on a connection of its own, committed when it returns."""
    results: dict[str, Any] = {}
    _in_thread(work, results, "setup").join(60)
    if isinstance(results["setup"], Exception):
        raise results["setup"]
    return results["setup"]


def _wait_until_a_backend_waits_on_a_lock(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # pg_locks, not pg_stat_activity: the latter is a snapshot per transaction.
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                return
        time.sleep(0.01)
    raise AssertionError("the second request never waited on the first")


def _hold_first_until_second_waits(monkeypatch, step: str) -> threading.Event:
    """The first request to reach ``step`` (a function of the batch service) pauses there
    until another backend waits on a lock; returns an event set on pause."""
    paused = threading.Event()
    original = getattr(batches, step)

    def slowly(*args, **kwargs):
        if not paused.is_set():
            paused.set()
            _wait_until_a_backend_waits_on_a_lock()
        return original(*args, **kwargs)

    monkeypatch.setattr(batches, step, slowly)
    return paused


def test_two_requests_with_one_key_at_once_store_once_and_replay(monkeypatch):
    # given a node and a batch; the first request pauses holding the key
    node = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    sensor = f"c-{uuid.uuid4().hex[:8]}"
    readings = [reading(i, sensor, T0 + dt.timedelta(seconds=i)) for i in range(50)]
    # (right after claiming the key)
    paused = _hold_first_until_second_waits(monkeypatch, "_sensors_declare")

    def send() -> batches.BatchOutcome:
        return ingest(node, readings, sensors=[declare(sensor)], key="same", body="same body")

    # when the same request comes twice at once
    results: dict[str, Any] = {}
    first = _in_thread(send, results, "first")
    assert paused.wait(30)
    second = _in_thread(send, results, "second")
    first.join(60)
    second.join(60)

    # then one stored and the other replayed its answer
    outcomes = [results["first"], results["second"]]
    assert all(isinstance(o, batches.BatchOutcome) for o in outcomes), outcomes
    assert sorted(o.replayed for o in outcomes) == [False, True]
    assert outcomes[0].response == outcomes[1].response
    assert outcomes[0].response["accepted"] == 50
    assert ObservationBatch.objects.filter(node=node).count() == 1
    assert Observation.objects.filter(sensor__node=node).count() == 50


def test_the_same_readings_under_two_keys_at_once_are_stored_once(monkeypatch):
    # given a node with its sensor, and the first request paused after its key claim
    node = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    sensor = f"c-{uuid.uuid4().hex[:8]}"
    _committed(lambda: ingest(node, [], sensors=[declare(sensor)]))
    readings = [reading(i, sensor, T0 + dt.timedelta(seconds=i)) for i in range(50)]
    # (right after inserting its readings, before the answer is written)
    paused = _hold_first_until_second_waits(monkeypatch, "_json")

    # when two keys carry the same readings at once (the second waits on the first's rows)
    results: dict[str, Any] = {}
    first = _in_thread(lambda: ingest(node, readings, key="one"), results, "one")
    assert paused.wait(30)
    second = _in_thread(lambda: ingest(node, readings, key="two"), results, "two")
    first.join(60)
    second.join(60)

    # then every reading is stored once, counted accepted by one batch, duplicate by the other
    outcomes = [results["one"], results["two"]]
    assert all(isinstance(o, batches.BatchOutcome) for o in outcomes), outcomes
    counts = sorted((o.response["accepted"], o.response["duplicate"]) for o in outcomes)
    assert counts == [(0, 50), (50, 0)]
    assert Observation.objects.filter(sensor__node=node).count() == 50


def test_a_batch_creating_a_partition_waits_for_inserting_batches_without_deadlock(
    monkeypatch, caplog
):
    # given a node's sensor, and a first batch paused after inserting its readings (it holds
    # the readings table and will next update the sensor's newest time)
    node = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    sensor = f"c-{uuid.uuid4().hex[:8]}"
    _committed(lambda: ingest(node, [], sensors=[declare(sensor)]))
    paused = _hold_first_until_second_waits(monkeypatch, "_json")
    existing = [reading(0, sensor, T0 + dt.timedelta(hours=1))]
    new_month = [reading(0, sensor, dt.datetime(2016, 5, 1, tzinfo=dt.UTC))]

    # when a second batch declares the same sensor and needs a month that has no partition
    results: dict[str, Any] = {}
    first = _in_thread(lambda: ingest(node, existing, key="existing"), results, "existing")
    assert paused.wait(30)
    second = _in_thread(
        lambda: ingest(node, new_month, sensors=[declare(sensor)], key="new-month"),
        results,
        "new-month",
    )
    first.join(60)
    second.join(60)

    # then both are stored, first time, with no deadlock to retry
    outcomes = [results["existing"], results["new-month"]]
    assert all(isinstance(o, batches.BatchOutcome) for o in outcomes), outcomes
    assert [o.response["accepted"] for o in outcomes] == [1, 1]
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_a_batch_that_created_a_partition_does_not_hold_back_other_batches(monkeypatch):
    # given a month without a partition (dropped again at the end: these rows are committed)
    candidates = [dt.date(year, 9, 1) for year in range(2002, 2015)]
    month = partitions.observation_partitions_missing(months=candidates)[0]
    node = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    other = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    mine, theirs = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    _committed(lambda: ingest(other, [], sensors=[declare(theirs)]))
    existing = T0.date().replace(day=1)
    _committed(lambda: partitions.observation_partitions_ensure_months(months=[existing]))
    # and a first batch that needs it, paused after inserting its readings until released
    release, paused = threading.Event(), threading.Event()
    original = batches._json

    def hold(value: Any) -> str:
        if threading.current_thread().name == "new-month":
            paused.set()
            release.wait(60)
        return original(value)

    monkeypatch.setattr(batches, "_json", hold)
    new_month = [reading(0, mine, dt.datetime(month.year, month.month, 3, tzinfo=dt.UTC))]
    results: dict[str, Any] = {}
    first = _in_thread(
        lambda: ingest(node, new_month, sensors=[declare(mine)]), results, "new-month"
    )
    try:
        assert paused.wait(30)
        # when another node's batch of an existing month comes meanwhile
        second = _in_thread(
            lambda: ingest(other, [reading(0, theirs, T0)]), results, "existing-month"
        )
        # then it is stored while the first is still open, never waiting on a lock
        while second.is_alive():
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                waiting = cursor.fetchone()[0]
            assert not waiting, "the second batch waited for the first"
            time.sleep(0.01)
        assert isinstance(results["existing-month"], batches.BatchOutcome)
        assert results["existing-month"].response["accepted"] == 1
    finally:
        release.set()
        first.join(60)
    assert results["new-month"].response["accepted"] == 1
    _committed(lambda: _drop(partitions.partition_name(month)))


def _drop(table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")


def test_two_batches_of_one_node_lock_its_sensors_in_id_order_before_writing(monkeypatch):
    # given a node's two sensors, and a first batch naming them paused after its readings
    # until the second waits on a lock (noting which batches had staged readings by then)
    node = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    one, two = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    _committed(lambda: ingest(node, [], sensors=[declare(one), declare(two)]))
    staged: list[str] = []
    staged_when_waiting: list[str] = []
    paused = threading.Event()
    original_copy_text, original_json = batches._copy_text, batches._json

    def copy_text(rows: Any) -> str:
        staged.append(threading.current_thread().name)
        return original_copy_text(rows)

    def hold(value: Any) -> str:
        if threading.current_thread().name == "first":
            paused.set()
            _wait_until_a_backend_waits_on_a_lock()
            staged_when_waiting.extend(staged)
        return original_json(value)

    monkeypatch.setattr(batches, "_copy_text", copy_text)
    monkeypatch.setattr(batches, "_json", hold)
    first_readings = [reading(0, one, T0), reading(1, two, T0)]
    # (the second names them the other way round, at other times: no reading in common)
    later = T0 + dt.timedelta(hours=2)
    second_readings = [reading(0, two, later), reading(1, one, later)]

    # when the second comes while the first is open
    results: dict[str, Any] = {}
    first = _in_thread(lambda: ingest(node, first_readings, key="a"), results, "first")
    assert paused.wait(30)
    second = _in_thread(lambda: ingest(node, second_readings, key="b"), results, "second")
    first.join(60)
    second.join(60)

    # then the second waited on the sensors before staging any reading, and both are stored
    outcomes = [results["first"], results["second"]]
    assert all(isinstance(o, batches.BatchOutcome) for o in outcomes), outcomes
    assert staged_when_waiting == ["first"]
    assert [o.response["accepted"] for o in outcomes] == [2, 2]


def test_the_sensors_layer_version_moves_when_an_earlier_claimed_batch_commits_last(
    monkeypatch,
):
    # given a batch that claimed its id first and is paused before committing
    node = _committed(lambda: node_make(f"concurrent-{uuid.uuid4().hex[:8]}"))
    sensor, other = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    _committed(lambda: ingest(node, [], sensors=[declare(sensor), declare(other)]))
    release, paused = threading.Event(), threading.Event()
    original = batches._json

    def hold(value: Any) -> str:
        if threading.current_thread().name == "early":
            paused.set()
            release.wait(60)
        return original(value)

    monkeypatch.setattr(batches, "_json", hold)
    results: dict[str, Any] = {}
    early = _in_thread(
        lambda: ingest(node, [reading(0, sensor, T0 + dt.timedelta(days=3))]), results, "early"
    )
    try:
        assert paused.wait(30)
        # and a batch claimed after it (another sensor) that commits first, seen by the layer
        _committed(lambda: ingest(node, [reading(0, other, T0 + dt.timedelta(days=2))]))
        before = sensor_map.sensor_map_version()
    finally:
        release.set()
        early.join(60)
    assert isinstance(results["early"], batches.BatchOutcome), results

    # when the early batch commits last, then the layer's version moves
    assert (
        results["early"].response["batch"]
        < ObservationBatch.objects.filter(node=node).latest("id").pk
    )
    assert sensor_map.sensor_map_version() != before
