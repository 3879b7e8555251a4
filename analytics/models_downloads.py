"""Download jobs: one file of a selection of places, per format and per data version.

A job is named by what it holds: the selection (the filters, hashed into ``selection_key``),
the format, and the data and region versions the file shows. Asking again for the same
selection while those versions hold finds the same job and its file; a changed place moves
the data version and so names a new job. The unique constraint on that natural key is what
makes a repeated request, or two at once, land on one row.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


class DownloadFormat(models.TextChoices):
    PARQUET = "parquet", "GeoParquet"
    CSV = "csv", "CSV"


class DownloadStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    # The data moved on before the file was built, or the file was cleaned up after it did.
    EXPIRED = "expired", "Expired"


class DownloadJob(models.Model):
    selection = models.JSONField(
        help_text="The filters, as analytics.downloads.selectors.Selection."
    )
    selection_key = models.CharField(max_length=40)
    format = models.CharField(max_length=8, choices=DownloadFormat.choices)
    data_version = models.CharField(max_length=64)
    region_version = models.CharField(max_length=64)
    status = models.CharField(
        max_length=8, choices=DownloadStatus.choices, default=DownloadStatus.PENDING
    )
    rows_estimate = models.BigIntegerField(default=0, help_text="Places expected.")
    rows_done = models.BigIntegerField(default=0, help_text="Places written so far.")
    file_name = models.CharField(max_length=200, blank=True, help_text="Under MEDIA_ROOT.")
    size_bytes = models.BigIntegerField(null=True, blank=True)
    datasets = models.JSONField(
        default=list, blank=True, help_text="Licence and attribution of each dataset in the file."
    )
    computed_on = models.CharField(max_length=8, blank=True, help_text="replica or primary.")
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(db_default=Now())
    # Moved by every progress write: a running job whose clock stopped lost its worker.
    updated_at = models.DateTimeField(db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["selection_key", "format", "data_version", "region_version"],
                name="download_natural_key",
            ),
            models.CheckConstraint(
                condition=~Q(status="ready") | ~Q(file_name=""), name="download_ready_has_file"
            ),
        ]
        indexes = [models.Index(fields=["status", "updated_at"], name="download_status")]

    def __str__(self) -> str:
        return f"{self.format} {self.selection_key[:8]}@{self.data_version} ({self.status})"
