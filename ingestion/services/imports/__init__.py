"""Import a file of places into a dataset: stream, COPY, validate, diff and upsert in SQL.

A run goes through phases, each crash-safe, each in a module of its own with its SQL named
beside it:

- **run** (``run``): claim the job, hold its locks, go through the phases; fail, or re-raise
  transient errors for a retry.
- **stage** (``stage``, ``reading``): stream the file into ``ingestion_importstage``
  (UNLOGGED), a reader batch per transaction, then validate it as a whole and save the
  rejected rows.
- **apply** (``apply``, ``diff``): batches of ``IMPORT_BATCH_ROWS`` staged rows,
  ``IMPORT_APPLY_WORKERS`` at a time: point in polygon, diff, places and their change-log
  entries, each batch committing with its record in the checkpoint.
- **checkpoint** (``checkpoint``): which staged rows are applied, so a resumed or
  redelivered run does only the rest.
- **finish** (``finish``, ``snapshot``, ``samples``, ``consistency``): snapshot retirements
  and their consistency report, the final state and report and the removal of the staging
  rows, in one transaction; a dry run's one diff and its samples; a cancelled run's end.

Batches that committed stay applied when a run stops (an error, a lost worker, a cancel):
the job's counts say what they changed, and a resumed run applies only the rest. A dry run
stages the file, diffs it in one statement and writes no place. Creating, queueing,
cancelling and resuming jobs is ``ingestion.services.jobs``.
"""

from ingestion.services.imports.run import (
    FINAL_STATES,
    MAX_ATTEMPTS,
    TRANSIENT_ERRORS,
    import_job_execute,
    import_jobs_stale_claim,
    import_stage_sweep,
)

__all__ = [
    "FINAL_STATES",
    "MAX_ATTEMPTS",
    "TRANSIENT_ERRORS",
    "import_job_execute",
    "import_jobs_stale_claim",
    "import_stage_sweep",
]
