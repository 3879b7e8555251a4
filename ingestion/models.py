"""Import jobs and the rows they rejected."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Now


class ImportState(models.TextChoices):
    UPLOADED = "uploaded", "Uploaded"
    INSPECTED = "inspected", "Inspected"
    DRY_RUN_READY = "dry_run_ready", "Dry run ready"
    QUEUED = "queued", "Queued"
    # A worker runs the job: a dry run or an apply (``dry_run`` tells which).
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class ImportMode(models.TextChoices):
    UPSERT = "upsert", "Upsert (add and update)"
    SNAPSHOT = "snapshot", "Snapshot (also retire places missing from the file)"
    APPEND = "append", "Append (add only)"


class ImportJob(models.Model):
    """One import of one file into one dataset; the unit of progress, report and audit."""

    dataset = models.ForeignKey("places.Dataset", on_delete=models.PROTECT, related_name="imports")
    file = models.FileField(upload_to="imports/%Y/%m/", max_length=500)
    original_name = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    format = models.CharField(max_length=32, help_text="Detected format, e.g. csv, shapefile.")
    options = models.JSONField(default=dict, blank=True, help_text="Column mapping, layers …")
    mode = models.CharField(max_length=8, choices=ImportMode.choices, default=ImportMode.UPSERT)
    dry_run = models.BooleanField(default=False, help_text="Compute counts, change nothing.")
    cancel_requested_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set when someone cancels a running job: the run stops after the batch it is "
        "applying, keeping what committed.",
    )
    state = models.CharField(
        max_length=16, choices=ImportState.choices, default=ImportState.UPLOADED, db_index=True
    )
    rows_total = models.BigIntegerField(null=True, blank=True)
    rows_read = models.BigIntegerField(default=0)
    added = models.BigIntegerField(default=0)
    updated = models.BigIntegerField(default=0)
    unchanged = models.BigIntegerField(default=0)
    retired = models.BigIntegerField(default=0)
    rejected = models.BigIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True, help_text="Counts per rejection reason …")
    inspection = models.JSONField(
        default=dict,
        blank=True,
        help_text="What inspecting the file found: layers, columns, row count, sample rows.",
    )
    preview = models.JSONField(
        default=dict,
        blank=True,
        help_text="The dry run's counts and samples, kept when the job is then applied.",
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Last sign of life of the run (every batch); a stale one gets the job re-queued.",
    )
    checkpoint = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where a resumed or redelivered run goes on: rows staged, the applied prefix of "
        "staged rows and the batches committed past it.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Import #{self.pk} {self.original_name} → {self.dataset_id} ({self.state})"

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class RejectionReason(models.TextChoices):
    MISSING_KEY = "missing_key", "No source key"
    KEY_TOO_LONG = "key_too_long", "Source key longer than 255 characters"
    MALFORMED_ROW = "malformed_row", "Row cannot be parsed (wrong number of fields)"
    MISSING_GEOMETRY = "missing_geometry", "No geometry or coordinates"
    BAD_COORDINATES = "bad_coordinates", "Coordinates not finite or out of range"
    INVALID_GEOMETRY = "invalid_geometry", "Geometry invalid and not repairable"
    DUPLICATE_KEY = "duplicate_key", "Key already used earlier in the file"
    CELL_TOO_LARGE = "cell_too_large", "A value is larger than the per-value limit"
    NOT_PLACE_OF_WORSHIP = "not_place_of_worship", "Not a place of worship (school, cemetery …)"


class ImportRejection(models.Model):
    """A row the import refused, with its original values and why."""

    job = models.ForeignKey(ImportJob, on_delete=models.CASCADE, related_name="rejections")
    row_number = models.BigIntegerField(help_text="Line (CSV, header = 1) or feature number.")
    layer = models.TextField(blank=True)
    reason = models.CharField(max_length=32, choices=RejectionReason.choices)
    detail = models.TextField(blank=True)
    raw = models.JSONField(default=dict)

    class Meta:
        ordering = ["job", "row_number"]
        indexes = [models.Index(fields=["job", "row_number"], name="rejection_job_row")]

    def __str__(self) -> str:
        return f"row {self.row_number}: {self.reason}"


# Edge-node models live in their own module; imported here so Django registers them with this
# app (app label ``ingestion``).
from ingestion.edge.models import (  # noqa: E402,F401
    EdgeNode,
    EdgeNodeKey,
    EdgeReadingCount,
    KeyScope,
    NodeStatus,
    Observation,
    ObservationBatch,
    Parameter,
    Sensor,
)
