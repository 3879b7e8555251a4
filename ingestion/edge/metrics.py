"""Prometheus metrics of the edge nodes, read from PostgreSQL when scraped.

Values come from the database, not from counters in a process: gunicorn runs several
workers and /metrics is answered by whichever takes the request, so a per-process counter
would jump between workers' values. The reading counters are running totals kept by the
batch follow-up task (``EdgeReadingCount``); the gauges are read from the nodes.

Exported (three small queries per scrape):

- ``edge_nodes{status}``: nodes by status (active, silent, disabled);
- ``edge_nodes_silent``: nodes marked silent (no heartbeat or batch for
  ``EDGE_SILENT_AFTER_SECONDS``);
- ``edge_node_newest_reading_age_seconds{node}``: now minus the time of the node's newest
  reading (years for a node replaying an archive);
- ``edge_readings_total{outcome, reason}``: readings accepted, duplicate (``stored`` before
  or ``duplicate_in_batch``) and rejected by reason (``out_of_range``, ``unknown_sensor`` …).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db.models import Count
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingestion.edge.models import EdgeNode, EdgeReadingCount, NodeStatus

logger = logging.getLogger(__name__)


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily
]:
    return (
        GaugeMetricFamily("edge_nodes", "Edge nodes by status.", labels=["status"]),
        GaugeMetricFamily(
            "edge_nodes_silent", "Edge nodes without heartbeat or readings for too long."
        ),
        GaugeMetricFamily(
            "edge_node_newest_reading_age_seconds",
            "Seconds since the time of the node's newest reading.",
            labels=["node"],
        ),
        CounterMetricFamily(
            "edge_readings",
            "Readings received from edge nodes, by outcome and reason.",
            labels=["outcome", "reason"],
        ),
    )


class EdgeCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        # Registration asks for the names; describing must not touch the database.
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        by_status, silent, age, readings = _families()
        try:
            counts = dict(EdgeNode.objects.order_by().values_list("status").annotate(n=Count("id")))
            newest = [
                (name, last)
                for name, last in EdgeNode.objects.filter(
                    last_reading_at__isnull=False
                ).values_list("name", "last_reading_at")
                if last is not None
            ]
            totals = list(EdgeReadingCount.objects.values_list("outcome", "reason", "total"))
        except Exception:
            # A scrape must still answer with the other metrics when the database cannot.
            logger.exception("edge metrics could not be read")
            return
        for status in NodeStatus.values:
            by_status.add_metric([status], counts.get(status, 0))
        silent.add_metric([], counts.get(NodeStatus.SILENT.value, 0))
        now = timezone.now()
        for name, last_reading_at in newest:
            age.add_metric([name], (now - last_reading_at).total_seconds())
        for outcome, reason, total in totals:
            readings.add_metric([outcome, reason], total)
        yield from (by_status, silent, age, readings)


_collector: EdgeCollector | None = None


def edge_metrics_register() -> None:
    """Add the edge collector to the default registry once per process."""
    global _collector
    if _collector is None:
        _collector = EdgeCollector()
        REGISTRY.register(_collector)
