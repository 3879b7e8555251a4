"""Heartbeats: what a node reports is kept, its clock offset measured, a silent node woken."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from ingestion.edge.models import EdgeNode, NodeStatus
from ingestion.edge.services.nodes import HeartbeatInvalid, edge_node_heartbeat
from tests.ingestion.edge.factories import node_make

pytestmark = pytest.mark.django_db


def test_a_heartbeat_records_the_report_and_answers_time_offset_and_status():
    # given a node whose clock runs 90 seconds ahead
    node = node_make()
    clock = timezone.now() + dt.timedelta(seconds=90)

    # when
    answer = edge_node_heartbeat(
        node=node,
        software_version="edge-client 1.0",
        queue_depth=12,
        disk_free_bytes=123456789,
        clock=clock,
    )

    # then
    assert answer["status"] == "active"
    assert answer["server_time"].endswith("Z")
    server_time = dt.datetime.fromisoformat(answer["server_time"])
    assert abs((server_time - timezone.now()).total_seconds()) < 60
    assert 85 <= answer["clock_offset_seconds"] <= 90
    node.refresh_from_db()
    assert node.software_version == "edge-client 1.0"
    assert (node.queue_depth, node.disk_free_bytes) == (12, 123456789)
    assert node.clock_offset_seconds == answer["clock_offset_seconds"]
    assert node.last_heartbeat_at == node.last_seen_at
    assert abs(node.last_heartbeat_at - server_time) < dt.timedelta(milliseconds=1)


def test_fields_left_out_keep_their_last_value():
    node = node_make()
    edge_node_heartbeat(
        node=node, software_version="v1", queue_depth=5, disk_free_bytes=10, clock=None
    )

    answer = edge_node_heartbeat(
        node=node, software_version=None, queue_depth=None, disk_free_bytes=None, clock=None
    )

    node.refresh_from_db()
    assert (node.software_version, node.queue_depth, node.disk_free_bytes) == ("v1", 5, 10)
    assert answer["clock_offset_seconds"] is None


def test_a_heartbeat_wakes_a_silent_node_but_not_a_disabled_one():
    silent, disabled = node_make(), node_make()
    EdgeNode.objects.filter(pk=silent.pk).update(status=NodeStatus.SILENT)
    EdgeNode.objects.filter(pk=disabled.pk).update(status=NodeStatus.DISABLED)

    woken = edge_node_heartbeat(
        node=silent, software_version=None, queue_depth=None, disk_free_bytes=None, clock=None
    )
    still = edge_node_heartbeat(
        node=disabled, software_version=None, queue_depth=None, disk_free_bytes=None, clock=None
    )

    assert woken["status"] == "active"
    assert still["status"] == "disabled"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"software_version": "x" * 65}, "software_version"),
        ({"queue_depth": -1}, "queue_depth"),
        ({"disk_free_bytes": 2**63}, "disk_free_bytes"),
        ({"queue_depth": True}, "queue_depth"),
        ({"clock": dt.datetime(2026, 1, 1)}, "clock"),
    ],
)
def test_values_the_database_cannot_hold_are_refused_naming_the_field(kwargs, field):
    node = node_make()
    given = {"software_version": None, "queue_depth": None, "disk_free_bytes": None}
    given |= {"clock": None} | kwargs

    with pytest.raises(HeartbeatInvalid) as refused:
        edge_node_heartbeat(node=node, **given)

    assert refused.value.field == field
    node.refresh_from_db()
    assert node.last_heartbeat_at is None
