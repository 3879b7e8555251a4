"""The batch service against real PostGIS: checks, natural-key dedupe, idempotency keys,
on-demand partitions, and nothing half-stored."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.utils import timezone

from ingestion.edge.models import EdgeNode, NodeStatus, Observation, ObservationBatch, Sensor
from ingestion.edge.services import batches
from ingestion.edge.services.batches import (
    IdempotencyKeyReused,
    ItemError,
    SensorDeclarationInvalid,
    SensorOfOtherNode,
    TooManyNewMonths,
)
from ingestion.edge.services.partitions import (
    observation_partitions,
    observation_partitions_missing,
    partition_name,
)
from tests.ingestion.edge.factories import declare, ingest, node_make, reading

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2019, 3, 1, 7, 0, 3, tzinfo=dt.UTC)


def _stored(node: EdgeNode) -> int:
    return Observation.objects.filter(sensor__node=node).count()


def test_first_batch_declares_sensors_and_stores_readings_in_a_2019_partition():
    # given a node with no sensors and no partition for March 2019
    node = node_make()
    readings = [reading(i, "s-1", T0 + dt.timedelta(minutes=i)) for i in range(5)]

    # when
    outcome = ingest(node, readings, sensors=[declare("s-1")])

    # then
    assert outcome.replayed is False
    assert outcome.response["accepted"] == 5
    assert outcome.response["duplicate"] == 0
    assert outcome.response["rejected"] == 0
    assert outcome.response["errors"] == []
    assert _stored(node) == 5
    assert "ingestion_observation_y2019m03" in observation_partitions()
    sensor = Sensor.objects.get(external_id="s-1")
    assert sensor.node == node
    assert sensor.kind == "SDS011"
    assert sensor.last_reading_at == T0 + dt.timedelta(minutes=4)
    node.refresh_from_db()
    assert node.last_reading_at == T0 + dt.timedelta(minutes=4)
    assert node.last_seen_at is not None
    batch = ObservationBatch.objects.get(pk=outcome.response["batch"])
    assert (batch.readings, batch.accepted, batch.response) == (5, 5, outcome.response)


def test_readings_sent_again_under_a_new_key_are_stored_once():
    # given a stored batch
    node = node_make()
    readings = [reading(i, "s-2", T0 + dt.timedelta(seconds=i)) for i in range(10)]
    ingest(node, readings, sensors=[declare("s-2")], key="first")

    # when the same readings come again under another key (a client that lost the answer)
    outcome = ingest(node, readings, key="second", body="another body")

    # then nothing new is stored and all ten count as duplicates
    assert outcome.replayed is False
    assert (outcome.response["accepted"], outcome.response["duplicate"]) == (0, 10)
    assert _stored(node) == 10
    assert ObservationBatch.objects.filter(node=node).count() == 2


def test_replay_of_a_key_returns_the_stored_answer():
    # given
    node = node_make()
    readings = [reading(0, "s-3", T0), reading(1, "s-3", T0, value=5000)]
    first = ingest(node, readings, sensors=[declare("s-3")], key="k1", body="body")

    # when the same key and body come again
    again = ingest(node, readings, key="k1", body="body")

    # then the first answer comes back as is, and nothing more is stored
    assert again.replayed is True
    assert again.response == first.response
    assert ObservationBatch.objects.filter(node=node).count() == 1
    assert _stored(node) == 1


def test_same_key_with_another_body_is_refused():
    node = node_make()
    ingest(node, [reading(0, "s-4", T0)], sensors=[declare("s-4")], key="k1", body="one")

    with pytest.raises(IdempotencyKeyReused, match="k1"):
        ingest(node, [reading(0, "s-4", T0)], key="k1", body="two")


def test_the_same_key_on_another_node_is_a_new_batch():
    node, other = node_make(), node_make()
    ingest(node, [reading(0, "s-5", T0)], sensors=[declare("s-5")], key="k1", body="x")

    outcome = ingest(other, [reading(0, "s-6", T0)], sensors=[declare("s-6")], key="k1")

    assert outcome.replayed is False
    assert outcome.response["accepted"] == 1


def test_each_reading_is_checked_with_a_reason():
    # given a node with one sensor, and a batch breaking each rule once
    node = node_make()
    now = timezone.now()
    readings = [
        reading(0, "s-7", T0),  # fine
        reading(1, "s-7", T0 + dt.timedelta(seconds=1), value=5000),
        reading(2, "s-7", now + dt.timedelta(hours=1)),
        reading(3, "s-7", dt.datetime(1990, 1, 1, tzinfo=dt.UTC)),
        reading(4, "s-7", T0, parameter="co2"),
        reading(5, "nobody", T0),
        reading(6, "s-7", T0.replace(tzinfo=None)),
        reading(7, "s-7", T0 + dt.timedelta(seconds=2), value=float("nan")),
        reading(8, "s-7", T0),  # the same natural key as 0
        reading(10, "s-7", T0 + dt.timedelta(seconds=3), value=-40, parameter="temperature"),
        reading(11, "s-7", T0 + dt.timedelta(seconds=4), value=10**400),
    ]
    parsed = [ItemError(9, "value", "bad_value", "readings[9].value must be a number.")]

    # when
    outcome = ingest(node, readings, sensors=[declare("s-7")], item_errors=parsed)

    # then
    response = outcome.response
    codes = [(e["index"], e["field"], e["code"]) for e in response["errors"]]
    assert codes == [
        (1, "value", "out_of_range"),
        (2, "time", "future_time"),
        (3, "time", "too_old"),
        (4, "parameter", "unknown_parameter"),
        (5, "sensor", "unknown_sensor"),
        (6, "time", "bad_time"),
        (7, "value", "bad_value"),
        (8, "time", "duplicate_in_batch"),
        (9, "value", "bad_value"),
        (11, "value", "bad_value"),
    ]
    assert response["errors"][0]["message"] == ("pm10 must be between 0 and 2000 µg/m³; got 5000.")
    assert (response["accepted"], response["duplicate"], response["rejected"]) == (2, 1, 9)
    assert _stored(node) == 2
    batch = ObservationBatch.objects.get(pk=response["batch"])
    assert (batch.readings, batch.rejected) == (12, 9)


@pytest.mark.parametrize(("days", "kept"), [(0, True), (30, False)])
def test_retention_refuses_older_readings_only_when_set(settings, days, kept):
    settings.EDGE_RETENTION_DAYS = days
    node = node_make()

    outcome = ingest(node, [reading(0, "s-8", T0)], sensors=[declare("s-8")])

    assert outcome.response["accepted"] == (1 if kept else 0)
    if not kept:
        assert outcome.response["errors"][0]["code"] == "too_old"


def test_clock_skew_allowance_accepts_a_slightly_fast_device(settings):
    settings.EDGE_CLOCK_SKEW_SECONDS = 300
    node = node_make()
    soon = timezone.now() + dt.timedelta(seconds=120)

    outcome = ingest(node, [reading(0, "s-9", soon)], sensors=[declare("s-9")])

    assert outcome.response["accepted"] == 1


def test_a_reading_of_another_nodes_sensor_is_rejected_alone_and_the_rest_is_stored():
    # given a sensor registered to another node
    owner, node = node_make(), node_make()
    ingest(owner, [reading(0, "theirs", T0)], sensors=[declare("theirs")])
    readings = [reading(0, "mine", T0), reading(1, "theirs", T0 + dt.timedelta(minutes=1))]

    # when a batch of this node names it in a reading
    outcome = ingest(node, readings, sensors=[declare("mine")])

    # then that reading is rejected with its own reason and the rest of the batch is stored
    assert (outcome.response["accepted"], outcome.response["rejected"]) == (1, 1)
    [error] = outcome.response["errors"]
    assert (error["index"], error["field"], error["code"]) == (1, "sensor", "sensor_of_other_node")
    assert "'theirs'" in error["message"]
    assert _stored(node) == 1
    # and the other node's sensor and readings are untouched
    assert Sensor.objects.get(external_id="theirs").node == owner
    assert _stored(owner) == 1


def test_declaring_another_nodes_sensor_stores_nothing_and_frees_the_key():
    # given a sensor registered to another node
    owner, node = node_make(), node_make()
    ingest(owner, [reading(0, "theirs", T0)], sensors=[declare("theirs")])
    readings = [reading(0, "mine", T0)]

    # when a batch declares it
    with pytest.raises(SensorOfOtherNode) as refused:
        ingest(node, readings, sensors=[declare("mine"), declare("theirs")], key="k1", body="b")

    # then nothing of the batch is stored, not even its other declared sensor
    assert (refused.value.sensor, refused.value.index) == ("theirs", 1)
    assert "'theirs' (sensors[1].id)" in refused.value.message
    assert not Sensor.objects.filter(external_id="mine").exists()
    assert not ObservationBatch.objects.filter(node=node).exists()
    assert _stored(node) == 0
    # and the key is free for the corrected batch
    outcome = ingest(node, readings, sensors=[declare("mine")], key="k1", body="c")
    assert outcome.response["accepted"] == 1


def test_declaring_another_nodes_sensor_is_refused():
    owner, node = node_make(), node_make()
    ingest(owner, [], sensors=[declare("taken")])

    with pytest.raises(SensorOfOtherNode) as refused:
        ingest(node, [], sensors=[declare("free"), declare("taken")])

    assert (refused.value.index, refused.value.field) == (1, "sensors[1].id")
    assert Sensor.objects.get(external_id="taken").node == owner


def test_a_declaration_updates_kind_and_location_of_the_nodes_sensor():
    node = node_make()
    ingest(node, [], sensors=[declare("s-10", kind="SDS011")])

    ingest(
        node,
        [],
        sensors=[batches.SensorDeclaration(external_id="s-10", kind="PMS5003", lon=1, lat=2)],
    )

    sensor = Sensor.objects.get(external_id="s-10")
    assert sensor.kind == "PMS5003"
    assert sensor.location is not None
    assert sensor.location.coords == (1.0, 2.0)


@pytest.mark.parametrize(
    ("declarations", "field"),
    [
        ([declare("a"), declare("a")], "sensors[1].id"),
        ([batches.SensorDeclaration("a", "SDS011", 200, 0)], "sensors[0].location"),
        ([batches.SensorDeclaration("a", "X" * 33, None, None)], "sensors[0].kind"),
        ([batches.SensorDeclaration("", "SDS011", None, None)], "sensors[0].id"),
        ([batches.SensorDeclaration("a\x00b", "SDS011", None, None)], "sensors[0].id"),
        ([batches.SensorDeclaration("a", "\ud800", None, None)], "sensors[0].kind"),
    ],
)
def test_invalid_declarations_are_refused_naming_the_field(declarations, field):
    node = node_make()

    with pytest.raises(SensorDeclarationInvalid) as refused:
        ingest(node, [], sensors=declarations)

    assert refused.value.field == field
    assert not ObservationBatch.objects.filter(node=node).exists()


def test_an_error_while_storing_rolls_back_the_batch_row_and_its_readings(monkeypatch):
    # given a failure after the readings went in (the answer cannot be written)
    node = node_make()

    def broken(value):
        raise RuntimeError("disk full")

    monkeypatch.setattr(batches, "_json", broken)

    # when
    with pytest.raises(RuntimeError):
        ingest(node, [reading(0, "s-11", T0)], sensors=[declare("s-11")], key="k1")

    # then
    assert not ObservationBatch.objects.filter(node=node).exists()
    assert _stored(node) == 0
    assert not Sensor.objects.filter(external_id="s-11").exists()


def test_a_silent_node_is_active_again_after_a_batch():
    node = node_make()
    EdgeNode.objects.filter(pk=node.pk).update(status=NodeStatus.SILENT)

    ingest(node, [reading(0, "s-12", T0)], sensors=[declare("s-12")])

    node.refresh_from_db()
    assert node.status == NodeStatus.ACTIVE


def test_newest_reading_times_only_move_forward():
    node = node_make()
    ingest(node, [reading(0, "s-13", T0)], sensors=[declare("s-13")])

    ingest(node, [reading(0, "s-13", T0 - dt.timedelta(days=40))])

    assert Sensor.objects.get(external_id="s-13").last_reading_at == T0
    node.refresh_from_db()
    assert node.last_reading_at == T0
    assert "ingestion_observation_y2019m01" in observation_partitions()


def test_readings_of_many_months_create_each_partition_once():
    node = node_make()
    times = [dt.datetime(2018, m, 15, tzinfo=dt.UTC) for m in range(1, 13)]

    outcome = ingest(
        node, [reading(i, "s-14", t) for i, t in enumerate(times)], sensors=[declare("s-14")]
    )

    assert outcome.response["accepted"] == 12
    names = set(observation_partitions())
    assert {f"ingestion_observation_y2018m{m:02d}" for m in range(1, 13)} <= names
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM ingestion_observation WHERE time = %s",
            [times[4]],
        )
        assert cursor.fetchone()[0] == "ingestion_observation_y2018m05"


@pytest.mark.parametrize("name", ["nul\x00byte", "lone\ud800surrogate", "x" * 65])
def test_a_sensor_name_postgresql_cannot_hold_is_an_unknown_sensor(name):
    node = node_make()

    outcome = ingest(node, [reading(0, name, T0)], body="b")

    assert [e["code"] for e in outcome.response["errors"]] == ["unknown_sensor"]
    assert outcome.response["rejected"] == 1


def _months_without_partition(count: int) -> list[dt.date]:
    """``count`` months that have no partition yet (other tests commit some)."""
    candidates = [dt.date(year, month, 1) for year in range(2001, 2016) for month in (2, 7, 11)]
    missing = observation_partitions_missing(months=candidates)
    assert len(missing) >= count
    return missing[:count]


def test_only_months_of_readings_really_stored_get_a_partition():
    # given months without a partition, and readings in them that fail other checks
    node = node_make()
    unknown_sensor, unknown_parameter, out_of_range, stored = (
        dt.datetime(m.year, m.month, 10, tzinfo=dt.UTC) for m in _months_without_partition(4)
    )
    readings = [
        reading(0, "nobody", unknown_sensor),
        reading(1, "s-20", unknown_parameter, parameter="radon"),
        reading(2, "s-20", out_of_range, value=99999),
        reading(3, "s-20", stored),
    ]

    # when
    outcome = ingest(node, readings, sensors=[declare("s-20")])

    # then only the stored reading's month has a partition
    assert (outcome.response["accepted"], outcome.response["rejected"]) == (1, 3)
    names = set(observation_partitions())
    assert partition_name(stored.date().replace(day=1)) in names
    for time in (unknown_sensor, unknown_parameter, out_of_range):
        assert partition_name(time.date().replace(day=1)) not in names


def test_a_batch_needing_more_new_months_than_allowed_is_refused_whole(settings):
    # given a limit of two new months a batch, and a batch of readings in three
    settings.EDGE_MAX_NEW_MONTHS_PER_BATCH = 2
    node = node_make()
    months = _months_without_partition(3)
    readings = [
        reading(i, "s-21", dt.datetime(m.year, m.month, 5, tzinfo=dt.UTC))
        for i, m in enumerate(months)
    ]

    # when
    with pytest.raises(TooManyNewMonths) as refused:
        ingest(node, readings, sensors=[declare("s-21")], key="k1", body="b")

    # then it is refused before anything is made or stored, and the key stays free
    assert (refused.value.needed, refused.value.limit) == (3, 2)
    assert "EDGE_MAX_NEW_MONTHS_PER_BATCH" in refused.value.message
    assert observation_partitions_missing(months=months) == months
    assert not ObservationBatch.objects.filter(node=node).exists()
    assert not Sensor.objects.filter(external_id="s-21").exists()
    # and the same readings in two batches (the second has one new month) are stored
    assert ingest(node, readings[:2], sensors=[declare("s-21")], key="k1").response["accepted"] == 2
    assert ingest(node, readings, key="k2").response["accepted"] == 1
