"""Check a dataset's sync URL now: ``manage.py sync_dataset SLUG [--sync]``.

The fetch runs in this process, as beat's check would; a changed file is queued as a
snapshot import on the ``ingestion`` queue, or run here with ``--sync``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingestion.management.commands._job_output import job_follow
from ingestion.services.sync import dataset_sync
from places.models import Dataset


class Command(BaseCommand):
    help = (
        "Fetch a dataset's sync URL (a conditional GET) and import it in snapshot mode when "
        "it changed; prints what the check did."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Slug of a dataset with a sync URL.")
        parser.add_argument("--sync", action="store_true", help="Run the import here.")
        parser.add_argument("--timeout", type=int, default=1800, help="Seconds to wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        dataset = Dataset.objects.filter(slug=options["slug"]).first()
        if dataset is None:
            raise CommandError(f"no dataset with the slug {options['slug']!r}")
        if not dataset.sync_url:
            raise CommandError(f"dataset {dataset.slug} has no sync URL; set it in the admin")
        outcome = dataset_sync(dataset=dataset, enqueue=not options["sync"])
        self.stdout.write(f"{dataset.slug}: {outcome.status}: {outcome.message}")
        if outcome.status == "error":
            raise CommandError(f"sync of {dataset.slug} failed: {outcome.message}")
        if outcome.job is None:
            return
        job_follow(
            outcome.job, run_here=options["sync"], timeout=options["timeout"], out=self.stdout
        )
