"""Import jobs and their rejected rows in the admin (read-only for now)."""

from __future__ import annotations

from django.contrib import admin

from ingestion.models import ImportJob, ImportRejection
from places.admin_base import FastChangeListMixin, IdSearchMixin, ReadOnlyAdminMixin


class ReadOnlyAdmin(ReadOnlyAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    """Jobs and rejections are written by the import service only, and kept as its audit."""


@admin.register(ImportJob)
class ImportJobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "original_name",
        "dataset",
        "state",
        "rows_read",
        "added",
        "updated",
        "unchanged",
        "rejected",
        "created_at",
        "finished_at",
    )
    list_filter = ("state", "format", "dataset")
    search_fields = ("original_name", "=sha256")
    list_select_related = ("dataset",)


@admin.register(ImportRejection)
class ImportRejectionAdmin(IdSearchMixin, ReadOnlyAdmin):
    list_display = ("job", "row_number", "layer", "reason", "detail")
    list_filter = ("reason",)
    search_fields = ("detail",)
    search_help_text = "An import job id lists that job's rejected rows."
    id_search_field = "job_id"
    raw_id_fields = ("job",)
