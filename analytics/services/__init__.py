"""Analytics writes: computing results from the read source and storing them on the primary.

- ``summaries``: region summaries (places by religion and denomination, diversity, densities,
  founding decades, data quality), recomputed per region when its version key moved;
- ``sensors``: hourly and daily sensor rollups, their region means, nearest sensors;
- ``results``: the set-based writes, the provenance of every row, the results version and
  the lock that keeps recomputes one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from analytics.services.results import analytics_lock
from analytics.services.sensors import SensorRun, sensor_rollups_recompute
from analytics.services.summaries import SummaryRun, region_summaries_recompute


@dataclass(frozen=True)
class RecomputeRun:
    summaries: SummaryRun
    sensors: SensorRun


def analytics_recompute(*, full: bool = False) -> RecomputeRun:
    """Bring every stored result up to the read source: only what moved, or everything when
    ``full``. One at a time (raises ``results.Busy`` when another holds the lock); raises
    ``replica.ReplicaUnavailable`` when the replica may not be read now."""
    with analytics_lock():
        return RecomputeRun(
            summaries=region_summaries_recompute(full=full),
            sensors=sensor_rollups_recompute(full=full),
        )
