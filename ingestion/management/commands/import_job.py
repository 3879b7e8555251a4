"""Act on an import job: ``manage.py import_job {status,cancel,resume} JOB``.

``resume`` queues a job that failed or was cancelled part-way to go on from its checkpoint
(``--sync`` runs it in this process instead) and follows it; ``cancel`` stops a running job
after the batch it is applying, or closes one that has not started.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ingestion import selectors
from ingestion.management.commands._job_output import job_follow, job_print
from ingestion.models import ImportJob
from ingestion.services import jobs


class Command(BaseCommand):
    help = "Show, cancel or resume an import job."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "cancel", "resume"])
        parser.add_argument("job", type=int, help="The import job's id.")
        parser.add_argument("--sync", action="store_true", help="Resume here, not on a worker.")
        parser.add_argument("--timeout", type=int, default=1800, help="Seconds to wait.")

    def handle(self, *args: Any, **options: Any) -> None:
        job = ImportJob.objects.filter(pk=options["job"]).first()
        if job is None:
            raise CommandError(f"no import job #{options['job']}")
        if options["action"] == "status":
            self.stdout.write(selectors.import_job_state_help(job=job))
            job_print(job, out=self.stdout)
            return
        try:
            if options["action"] == "cancel":
                job = jobs.import_job_cancel(job=job)
            else:
                job = jobs.import_job_resume(job=job, enqueue=not options["sync"])
        except jobs.ImportJobStateError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"job #{job.pk} {selectors.import_job_step_outcome(job=job, step=options['action'])}"
        )
        if options["action"] == "cancel":
            return
        job_follow(job, run_here=options["sync"], timeout=options["timeout"], out=self.stdout)
