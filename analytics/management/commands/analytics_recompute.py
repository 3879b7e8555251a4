"""``manage.py analytics_recompute [--full] [--queue]``: bring the stored analytics up to date."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics.replica import ReplicaUnavailable
from analytics.services import analytics_recompute
from analytics.services.results import Busy
from analytics.tasks import analytics_recompute as analytics_recompute_task


class Command(BaseCommand):
    help = (
        "Recompute region summaries and sensor rollups: only regions whose data moved and "
        "the recent days of readings, or everything with --full. Runs here unless --queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--full", action="store_true", help="Recompute every result.")
        parser.add_argument(
            "--queue", action="store_true", help="Queue the Celery task instead of running here."
        )

    def handle(self, *args: Any, full: bool, queue: bool, **options: Any) -> None:
        if queue:
            analytics_recompute_task.delay(full=full)
            self.stdout.write("analytics recompute queued" + (" (full)" if full else ""))
            return
        try:
            run = analytics_recompute(full=full)
        except Busy as exc:
            raise CommandError("another analytics recompute is running; try again later") from exc
        except ReplicaUnavailable as exc:
            raise CommandError(f"the replica cannot be read now: {exc}") from exc
        s, r = run.summaries, run.sensors
        self.stdout.write(
            f"{s.recomputed} of {s.regions} region summaries recomputed on the {s.computed_on}; "
            f"{r.sensor_rollups} sensor rollups, {r.region_rollups} region rollups and "
            f"{r.nearest} nearest sensors written"
        )
