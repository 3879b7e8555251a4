"""Prometheus gauges of the analytics replica, read when scraped (``analytics.replica``).

Exported only when ``REPLICA_DATABASE_URL`` is set:

- ``analytics_replica_up``: 1 when the replica answers in recovery, 0 otherwise;
- ``analytics_replica_lag_bytes``: WAL the primary has written that the replica has not
  replayed;
- ``analytics_replica_lag_seconds``: how far behind that is in time (0 when caught up).

Read at each scrape from the servers rather than kept in a process: whichever gunicorn worker
answers /metrics gives the same figures, and a replica that stopped shows at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from analytics.replica import replica_configured, replica_status

logger = logging.getLogger(__name__)


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            "analytics_replica_up", "1 when the analytics replica answers in recovery."
        ),
        GaugeMetricFamily(
            "analytics_replica_lag_bytes", "WAL bytes the analytics replica has not replayed."
        ),
        GaugeMetricFamily(
            "analytics_replica_lag_seconds", "Seconds the analytics replica's replay is behind."
        ),
    )


class ReplicaCollector(Collector):
    def describe(self) -> Iterator[Metric]:
        # Registration asks for the names; describing must not touch the database.
        yield from _families()

    def collect(self) -> Iterator[Metric]:
        if not replica_configured():
            return
        up, lag_bytes, lag_seconds = _families()
        try:
            status = replica_status()
        except Exception:
            # A scrape must still answer with the other metrics when the primary cannot.
            logger.exception("replica metrics could not be read")
            return
        up.add_metric([], 1 if status.usable else 0)
        yield up
        if status.lag_bytes is not None:
            lag_bytes.add_metric([], status.lag_bytes)
            yield lag_bytes
        if status.lag_seconds is not None:
            lag_seconds.add_metric([], status.lag_seconds)
            yield lag_seconds


_collector: ReplicaCollector | None = None


def replica_metrics_register() -> None:
    """Add the replica collector to the default registry once per process."""
    global _collector
    if _collector is None:
        _collector = ReplicaCollector()
        REGISTRY.register(_collector)
