"""Import a file of places: ``manage.py import_places FILE --dataset SLUG [--dry-run]``.

The work runs as a Celery task on the ``ingestion`` queue (a worker must be running) and
this command follows its progress; ``--sync`` runs it in this process instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from ingestion import selectors, tasks
from ingestion.management.commands._dataset_options import (
    add_dataset_arguments,
    dataset_from_options,
)
from ingestion.management.commands._job_output import job_follow
from ingestion.mapping import CONTENT_KEY_NOTE
from ingestion.models import ImportMode
from ingestion.readers import UnreadableFile
from ingestion.services import jobs
from places import access
from places.models import Dataset


class Command(BaseCommand):
    help = (
        "Import places into a dataset from CSV/TSV, GeoJSON or GeoJSONSeq, a zipped Shapefile, "
        "a GeoPackage, Parquet or GeoParquet, or a JSON array of objects."
    )

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
        parser.add_argument(
            "--layer",
            action="append",
            dest="layers",
            metavar="NAME",
            help="Import this layer of a zip of shapefiles or a GeoPackage (repeat for more); "
            "every layer when left out.",
        )
        parser.add_argument("--sync", action="store_true", help="Run here, not on a worker.")
        parser.add_argument(
            "--skip-if-imported",
            action="store_true",
            help="Do nothing when this exact file was already imported into the dataset.",
        )
        parser.add_argument("--timeout", type=int, default=1800, help="Seconds to wait.")
        parser.add_argument(
            "--user",
            default=None,
            metavar="USERNAME",
            help="Import as this user, who must be an importer of the dataset (or an admin); "
            "without it the command imports as the system.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"no such file: {path}")
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"--user: no such user: {options['user']}")
            if not Dataset.objects.filter(slug=options["dataset"]).exists() and not (
                access.is_admin(user)
            ):
                # Creating a dataset is the admin role's; an importer imports into theirs.
                raise CommandError(f"--user: {user} may not create dataset {options['dataset']}")
        dataset = dataset_from_options(options)
        if options["skip_if_imported"] and not options["dry_run"]:
            previous = selectors.import_job_last_applied(
                dataset=dataset, sha256=jobs.file_sha256(path)
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
                job = jobs.import_job_create(
                    path=path,
                    dataset=dataset,
                    user=user,
                    dry_run=options["dry_run"],
                    mode=options["mode"],
                    mapping=mapping,
                    layers=options["layers"],
                )
                if not options["sync"]:
                    transaction.on_commit(lambda: tasks.import_job_run.delay(job.pk))
        except UnreadableFile as exc:
            raise CommandError(f"{path.name}: {exc}") from None
        except PermissionDenied as exc:
            raise CommandError(f"--user: {exc}") from None
        where = "running in this process" if options["sync"] else "queued"
        self.stdout.write(f"{path.name}: job #{job.pk} ({job.format}) {where}")
        # What the key's note adds to the content key's, which the outcome states (job_print).
        note = (job.options.get("key_note") or "").removesuffix(CONTENT_KEY_NOTE).strip()
        if note:
            self.stdout.write(f"  {note}")
        file_layers = [layer["name"] for layer in job.options.get("layers", [])]
        if len(file_layers) > 1:
            chosen = job.options["chosen_layers"]
            self.stdout.write(
                f"layers: {', '.join(chosen)}"
                + (f" (of {', '.join(file_layers)})" if len(chosen) < len(file_layers) else "")
            )
        job_follow(job, run_here=options["sync"], timeout=options["timeout"], out=self.stdout)
