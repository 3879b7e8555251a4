"""Import a file of places: ``manage.py import_places FILE --dataset SLUG [--dry-run]``.

The work runs as a Celery task on the ``ingestion`` queue (a worker must be running) and
this command follows its progress; ``--sync`` runs it in this process instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from ingestion import selectors, tasks
from ingestion.management.commands._dataset_options import (
    add_dataset_arguments,
    dataset_from_options,
)
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.readers import UnreadableFile
from ingestion.services import imports

FINAL_STATES = {
    ImportState.DONE,
    ImportState.DRY_RUN_READY,
    ImportState.FAILED,
    ImportState.CANCELLED,
}


class Command(BaseCommand):
    help = "Import places from CSV, GeoJSON, zipped Shapefile or GeoPackage into a dataset."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        add_dataset_arguments(parser)
        parser.add_argument("--mode", choices=ImportMode.values, default=ImportMode.UPSERT)
        parser.add_argument("--dry-run", action="store_true", help="Report, change nothing.")
        parser.add_argument(
            "--mapping",
            default=None,
            help='JSON column mapping overriding the proposal, e.g. {"key": "{ref}"}.',
        )
        parser.add_argument("--sync", action="store_true", help="Run here, not on a worker.")
        parser.add_argument(
            "--skip-if-imported",
            action="store_true",
            help="Do nothing when this exact file was already imported into the dataset.",
        )
        parser.add_argument("--timeout", type=int, default=1800, help="Seconds to wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        dataset = dataset_from_options(options)
        if options["skip_if_imported"] and not options["dry_run"]:
            previous = selectors.import_job_last_applied(
                dataset=dataset, sha256=imports.file_sha256(path)
            )
            if previous:
                self.stdout.write(f"{path.name}: already imported by job #{previous.pk}; skipped")
                return
        try:
            mapping = json.loads(options["mapping"]) if options["mapping"] else None
        except json.JSONDecodeError as exc:
            raise CommandError(f"--mapping is not valid JSON: {exc}") from None
        try:
            with transaction.atomic():
                job = imports.import_job_create(
                    path=path,
                    dataset=dataset,
                    dry_run=options["dry_run"],
                    mode=options["mode"],
                    mapping=mapping,
                )
                if not options["sync"]:
                    transaction.on_commit(lambda: tasks.import_job_run.delay(job.pk))
        except UnreadableFile as exc:
            raise CommandError(f"{path.name}: {exc}") from None
        where = "running in this process" if options["sync"] else "queued"
        self.stdout.write(f"{path.name}: job #{job.pk} ({job.format}) {where}")
        if options["sync"]:
            imports.import_job_execute(job_id=job.pk)
        job = self._wait(job, options["timeout"])
        self._print(job)
        if job.state == ImportState.FAILED:
            raise CommandError(f"import job #{job.pk} failed: {job.error}")

    def _wait(self, job: ImportJob, timeout: int) -> ImportJob:
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.state in FINAL_STATES:
                return job
            progress = selectors.import_job_progress(job=job)
            if progress != last:
                total = f"/{job.rows_total}" if job.rows_total else ""
                self.stdout.write(f"  {job.state}: {progress}{total} rows read")
                last = progress
            time.sleep(0.5)
        raise CommandError(
            f"job #{job.pk} still {job.state} after {timeout}s; is a worker running "
            "(celery -A config worker -Q ingestion)?"
        )

    def _print(self, job: ImportJob) -> None:
        self.stdout.write(
            f"job #{job.pk} {job.state}: {job.rows_read} rows read; {job.added} added, "
            f"{job.updated} updated, {job.unchanged} unchanged, {job.retired} retired, "
            f"{job.rejected} rejected"
            + (" (dry run: what an import would do; nothing was written)" if job.dry_run else "")
        )
        if job.retired:
            self.stdout.write(f"  {job.retired} place(s) missing from the snapshot retired")
        conflicts = (job.report or {}).get("conflicts", 0)
        if conflicts:
            self.stdout.write(
                f"  {conflicts} place(s) changed by someone else during the import were left "
                "as they are; import again to apply the file's values"
            )
        for reason, count in (job.report or {}).get("rejected_by_reason", {}).items():
            self.stdout.write(f"  rejected {count} × {reason}")
        for rejection in job.rejections.all()[:10]:
            self.stdout.write(
                f"    row {rejection.row_number}: {rejection.reason}: {rejection.detail}"
            )
