"""Edge metrics on /metrics, read from the database: the same totals from any process."""

from __future__ import annotations

import datetime as dt

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestion.edge import tasks
from ingestion.edge.models import EdgeNode, NodeStatus
from tests.ingestion.edge.factories import declare, ingest, node_make, reading

pytestmark = pytest.mark.django_db


def _samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.content.decode()):
        if family.name.startswith("edge_"):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_show_silent_nodes_reading_age_and_counted_readings(client):
    # given a silent node, and a node whose batch was counted
    before = _samples(client)
    quiet = node_make("metrics-quiet")
    EdgeNode.objects.filter(pk=quiet.pk).update(status=NodeStatus.SILENT)
    node = node_make("metrics-busy")
    newest = dt.datetime(2019, 3, 1, 7, 0, tzinfo=dt.UTC)
    outcome = ingest(
        node,
        [reading(0, "m-1", newest), reading(1, "m-1", newest, value=9999)],
        sensors=[declare("m-1")],
    )
    tasks.edge_batch_follow_up(outcome.response["batch"])

    # when
    after = _samples(client)

    # then
    silent_before = before.get(("edge_nodes_silent", ()), 0)
    assert after[("edge_nodes_silent", ())] == silent_before + 1
    assert after[("edge_nodes", (("status", "silent"),))] == silent_before + 1
    age = after[("edge_node_newest_reading_age_seconds", (("node", "metrics-busy"),))]
    assert age > (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) - newest).total_seconds()
    accepted = ("edge_readings_total", (("outcome", "accepted"), ("reason", "")))
    rejected = ("edge_readings_total", (("outcome", "rejected"), ("reason", "out_of_range")))
    assert after[accepted] == before.get(accepted, 0) + 1
    assert after[rejected] == before.get(rejected, 0) + 1
