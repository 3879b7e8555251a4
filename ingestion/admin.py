"""Imports in the admin: upload a file, inspect it, fix the mapping, dry run, apply, cancel
or resume.

Every step is a service call (``ingestion.services.jobs`` and ``.inspection``); these views
only turn forms and buttons into those calls and show the job. Rejected rows stay read-only,
as the audit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from ingestion import selectors
from ingestion.edge import admin as edge_admin  # noqa: F401  # registers the edge models
from ingestion.mapping import ColumnMapping
from ingestion.models import ImportJob, ImportMode, ImportRejection, ImportState
from ingestion.readers import UnreadableFile
from ingestion.services import inspection, jobs
from ingestion.services.imports.consistency import consistency_summary
from places import access
from places.access import Action
from places.admin_access import DatasetScopedAdminMixin
from places.admin_base import FastChangeListMixin, IdSearchMixin, ReadOnlyAdminMixin
from places.models import Dataset

MODE_HELP = (
    "Upsert adds new places and updates changed ones. Snapshot does the same and also "
    "retires (never deletes) this dataset's imported places that are missing from the file. "
    "Append only adds places whose key is new."
)

JOB_URLS = ("progress", "inspect", "dry_run", "apply", "cancel", "resume", "rejections_csv")

DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}

MAPPING_HELP = {
    "key": (
        "Template over column names in braces that gives each row its key in the dataset, "
        "e.g. osm:{osm_type}/{osm_id} or {id}. {_kind} stands for node on point layers and "
        "area on polygon layers; {_content} for a digest of the row's own values and geometry "
        "(for files without an id column: a changed row gets a new key, so a re-import adds "
        "it instead of updating it); {_layer} for the row's layer name (ids numbered per "
        "layer: {_layer}:{id}). A later row with an already used key is rejected."
    ),
    "name": "Column with the place's name (may be empty; curators fill names in).",
    "religion": "Column with the religion, normalised to the vocabulary; raw text is kept.",
    "denomination": "Column with denominations; several may be separated by ';'.",
    "packed_class": (
        "A packed class column such as Geofabrik's fclass (christian_anglican), used when "
        "there is no religion column."
    ),
    "lon": "Longitude column (WGS84 degrees). Geo files use their geometry instead.",
    "lat": "Latitude column (WGS84 degrees).",
    "geometry": (
        "Column with the geometry as WKT, EWKT or hex WKB in WGS84 (geom, the_geom, wkt …). "
        "A row with a value there is placed by it, otherwise by its longitude/latitude; "
        "points are kept as they are, other shapes as a footprint with a point inside it. "
        "Heights (Z) and measures (M) are dropped. Geo files use their own geometry."
    ),
    "start_date": "Founding date, free text accepted (1885, 12 May 1885, mid-1990s).",
    "end_date": "Closing or demolition date, free text accepted.",
}


class UploadForm(forms.Form):
    file = forms.FileField(
        help_text=(
            "CSV or TSV (any delimiter and encoding, plain or .gz), GeoJSON or GeoJSONSeq "
            "(plain or .gz), a zipped Shapefile, a GeoPackage, Parquet or GeoParquet, or a "
            "JSON array of objects. The format is read from the content, not "
            f"the name; at most {jobs.MAX_FILE_BYTES // 1024**3} GB. The file is "
            "inspected first: nothing is imported until you apply it."
        )
    )
    dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.order_by("name"),
        required=False,
        help_text="The dataset the places belong to; keys are unique within it.",
    )
    new_dataset = forms.CharField(
        max_length=200,
        required=False,
        label="Or a new dataset",
        widget=forms.TextInput(attrs={"class": "vTextField"}),
        help_text=(
            "Name of a dataset to create for this file, when none above fits; its slug is "
            "made from the name (with -2, -3 … if taken). Licence and attribution are set "
            "later under Places gazetteer › Datasets."
        ),
    )
    mode = forms.ChoiceField(
        choices=ImportMode.choices, initial=ImportMode.UPSERT, help_text=MODE_HELP
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        cleaned["new_dataset"] = (cleaned.get("new_dataset") or "").strip()
        if cleaned.get("dataset") and cleaned["new_dataset"]:
            self.add_error("new_dataset", "Choose a dataset or name a new one, not both.")
        elif not cleaned.get("dataset") and not cleaned["new_dataset"]:
            self.add_error("dataset", "Choose a dataset, or name a new one below.")
        return cleaned


class MappingForm(forms.Form):
    """The mode and, for each place field, the column that feeds it."""

    mode = forms.ChoiceField(choices=ImportMode.choices, help_text=MODE_HELP)
    key = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.TextInput(attrs={"class": "vTextField"}),
        help_text=MAPPING_HELP["key"],
    )

    def __init__(
        self, *args: Any, columns: list[str], geo: bool, layers: list[str], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if len(layers) > 1:
            self.fields["layers"] = forms.MultipleChoiceField(
                choices=[(name, name) for name in layers],
                widget=forms.CheckboxSelectMultiple,
                label="Layers",
                help_text="The layers to import; the file's other layers are not read.",
            )
        choices = [("", "— not in the file —"), *((c, c) for c in columns)]
        for name in ColumnMapping(key="").as_dict():
            if name == "key" or (geo and name in {"lon", "lat", "geometry"}):
                continue
            self.fields[name] = forms.ChoiceField(
                choices=choices,
                required=False,
                label=name.replace("_", " ").capitalize(),
                help_text=MAPPING_HELP[name],
            )


class ReadOnlyAdmin(ReadOnlyAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    """Rows written by the import service only, and kept as its audit."""


@admin.register(ImportJob)
class ImportJobAdmin(DatasetScopedAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    # Importers of a dataset run its jobs; everyone with a role in it sees them.
    change_action = Action.IMPORT
    list_display = (
        "id",
        "original_name",
        "dataset",
        "mode",
        "state",
        "rows",
        "outcome",
        "created_at",
        "finished_at",
    )
    list_filter = ("state", "format", "mode", "dataset")
    search_fields = ("original_name", "=sha256")
    list_select_related = ("dataset",)

    @admin.display(description="rows read", ordering="rows_read")
    def rows(self, job: ImportJob) -> str:
        return f"{job.rows_read:,}"  # grouped like the outcome beside it

    @admin.display(description="added / updated / unchanged / retired / rejected")
    def outcome(self, job: ImportJob) -> str:
        # One column instead of five keeps the list readable on a laptop screen.
        return " / ".join(
            f"{n:,}" for n in (job.added, job.updated, job.unchanged, job.retired, job.rejected)
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a job is the audit of what an import did

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:job_id>/progress/",
                wrap(self.progress_view),
                name="ingestion_importjob_progress",
            ),
            path(
                "<int:job_id>/inspect/", wrap(self.inspect_view), name="ingestion_importjob_inspect"
            ),
            path(
                "<int:job_id>/dry-run/", wrap(self.dry_run_view), name="ingestion_importjob_dry_run"
            ),
            path("<int:job_id>/apply/", wrap(self.apply_view), name="ingestion_importjob_apply"),
            path("<int:job_id>/cancel/", wrap(self.cancel_view), name="ingestion_importjob_cancel"),
            path("<int:job_id>/resume/", wrap(self.resume_view), name="ingestion_importjob_resume"),
            path(
                "<int:job_id>/rejected-rows.csv",
                wrap(self.rejections_csv_view),
                name="ingestion_importjob_rejections_csv",
            ),
            *super().get_urls(),
        ]

    # --- upload ----------------------------------------------------------------------------

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = UploadForm(request.POST or None, request.FILES or None)
        # Only into datasets the user imports into; a new dataset is the admin role's.
        ids = access.dataset_ids_for(request.user, Action.IMPORT)
        if ids is not None:
            choice = cast(forms.ModelChoiceField, form.fields["dataset"])
            choice.queryset = Dataset.objects.filter(pk__in=ids).order_by("name")
        if not access.is_admin(request.user):
            del form.fields["new_dataset"]
        if request.method == "POST" and form.is_valid():
            try:
                # A new dataset exists only if the file is taken: a refusal rolls it back.
                with transaction.atomic():
                    dataset = form.cleaned_data["dataset"] or jobs.dataset_create_for_import(
                        name=form.cleaned_data["new_dataset"]
                    )
                    job = inspection.import_job_upload(
                        upload=form.cleaned_data["file"],
                        dataset=dataset,
                        mode=form.cleaned_data["mode"],
                        user=request.user,
                    )
            except UnreadableFile as exc:
                form.add_error("file", str(exc))
            else:
                if job.state == ImportState.FAILED:
                    messages.error(request, f"The file was stored but cannot be read: {job.error}")
                else:
                    messages.success(request, f"{job.original_name} is inspected; check it below.")
                for warning in _same_file_warnings(job):
                    messages.warning(request, warning)
                return HttpResponseRedirect(self._job_url(job))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Import a file",
            "form": form,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/ingestion/importjob/upload.html", context)

    # --- the job's page --------------------------------------------------------------------

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        job = self.get_object(request, unquote(object_id))
        if job is None:
            return self._get_obj_does_not_exist_redirect(  # type: ignore[attr-defined]
                request, self.opts, object_id
            )
        if not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        can_change = self.has_change_permission(request, job)
        mapping_form, redirect = self._mapping_step(request, job, can_change)
        if redirect is not None:
            return redirect
        context = {
            **self.admin_site.each_context(request),
            **self._job_context(job, can_change),
            "mapping_form": mapping_form,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/ingestion/importjob/job.html", context)

    def _mapping_step(
        self, request: HttpRequest, job: ImportJob, can_change: bool
    ) -> tuple[MappingForm | None, HttpResponse | None]:
        """The mapping form while the mapping can change; a POST saves it (or shows its
        errors). Returns the form to show, or the redirect that ends the request."""
        if not (job.inspection and job.state in jobs.MAPPING_EDITABLE):
            if request.method == "POST":
                messages.error(
                    request, "The mapping can only be changed before the job is applied."
                )
                return None, HttpResponseRedirect(self._job_url(job))
            return None, None
        columns = job.inspection.get("columns", [])
        geo = job.format != "csv"
        layers = [layer["name"] for layer in job.inspection.get("layers", [])]
        if request.method != "POST":
            initial = {
                "mode": job.mode,
                "layers": job.options.get("chosen_layers", layers),
                **job.options.get("mapping", {}),
            }
            form = MappingForm(initial=initial, columns=columns, geo=geo, layers=layers)
            return form, None
        if not can_change:
            raise PermissionDenied
        form = MappingForm(request.POST, columns=columns, geo=geo, layers=layers)
        if not form.is_valid():
            return form, None
        data = dict(form.cleaned_data)
        mode = data.pop("mode")
        chosen = data.pop("layers", None)
        try:
            jobs.import_job_mapping_set(job=job, mapping=data, mode=mode, layers=chosen)
        except jobs.MappingInvalid as exc:
            for name, message in exc.problems.items():
                form.add_error(name if name in form.fields else None, message)
            return form, None
        except jobs.ImportJobStateError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Mapping saved. Run a dry run to see its effect.")
        return None, HttpResponseRedirect(self._job_url(job))

    def _job_context(self, job: ImportJob, can_change: bool) -> dict[str, Any]:
        report = job.report or {}
        return {
            "opts": self.opts,
            "title": f"Import #{job.pk}: {job.original_name}",
            "job": job,
            "original": job,
            "state_help": selectors.import_job_state_help(job=job),
            "applied_part": selectors.import_job_applied_part(job=job),
            "status": selectors.import_job_status(job=job),
            "inspection": job.inspection,
            # A job made before layers could be chosen imports all of them.
            "chosen_layers": job.options.get(
                "chosen_layers", [layer["name"] for layer in job.inspection.get("layers", [])]
            ),
            "delimiter_label": DELIMITERS.get(job.inspection.get("delimiter", ""), ""),
            "mapping_rows": [
                (name, job.options["mapping"].get(name))
                for name in ColumnMapping(key="").as_dict()
                if name in job.options.get("mapping", {})
            ],
            "mapping_problems": selectors.import_job_mapping_problems(job=job),
            "report": report,
            "rejected_by_reason": selectors.import_job_rejections_by_reason(job=job),
            "samples": report.get("samples"),
            "consistency": (
                consistency_summary(report["consistency"]) if report.get("consistency") else ""
            ),
            "consistent": (report.get("consistency") or {}).get("consistent"),
            "preview": job.preview,
            "has_report": job.state in (ImportState.DRY_RUN_READY, ImportState.DONE),
            "warnings": _same_file_warnings(job),
            "result_links": _result_links(job),
            # From this dry run, or after an apply from the dry run kept before it.
            "keys_elsewhere": (
                report.get("samples") or (job.preview or {}).get("report", {}).get("samples") or {}
            ).get("keys_in_other_datasets"),
            "can_change": can_change,
            "can_inspect": can_change and job.state == ImportState.UPLOADED,
            "can_dry_run": can_change and job.state in jobs.MAPPING_EDITABLE,
            "can_apply": can_change and job.state == ImportState.DRY_RUN_READY,
            "can_cancel": can_change and selectors.import_job_cancellable(job=job),
            "can_resume": can_change and selectors.import_job_resumable(job=job),
            "urls": {
                name: reverse(f"admin:ingestion_importjob_{name}", args=[job.pk])
                for name in JOB_URLS
            },
        }

    # --- buttons and data ------------------------------------------------------------------

    def inspect_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return self._step(
            request, job_id, "inspected", lambda job: inspection.import_job_inspect(job=job)
        )

    def dry_run_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return self._step(
            request,
            job_id,
            "queued for a dry run",
            lambda job: jobs.import_job_dry_run_queue(job=job, user=request.user),
        )

    def apply_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return self._step(
            request,
            job_id,
            "queued to apply",
            lambda job: jobs.import_job_apply_queue(job=job, user=request.user),
        )

    def cancel_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return self._step(request, job_id, "cancel", lambda job: jobs.import_job_cancel(job=job))

    def resume_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return self._step(
            request,
            job_id,
            "resume",
            lambda job: jobs.import_job_resume(job=job, user=request.user),
        )

    def progress_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        job = self._job_or_404(request, job_id)
        return JsonResponse(selectors.import_job_status(job=job).as_dict())

    def rejections_csv_view(self, request: HttpRequest, job_id: int) -> StreamingHttpResponse:
        job = self._job_or_404(request, job_id)
        response = StreamingHttpResponse(
            selectors.import_rejections_csv(job=job), content_type="text/csv; charset=utf-8"
        )
        response["Content-Disposition"] = (
            f'attachment; filename="import-{job.pk}-rejected-rows.csv"'
        )
        return response

    def _step(
        self,
        request: HttpRequest,
        job_id: int,
        done: str,
        step: Callable[[ImportJob], ImportJob],
    ) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self._job_or_404(request, job_id)
        if not self.has_change_permission(request, job):
            raise PermissionDenied
        try:
            job = step(job)
        except (jobs.ImportJobStateError, jobs.MappingInvalid) as exc:
            messages.error(request, str(exc))
        else:
            if job.state == ImportState.FAILED:
                messages.error(request, f"Job #{job.pk} failed: {job.error}")
            elif done in ("cancel", "resume"):
                outcome = selectors.import_job_step_outcome(job=job, step=done)
                messages.success(request, f"Job #{job.pk} {outcome}.")
            else:
                messages.success(request, f"Job #{job.pk} {done}.")
        return HttpResponseRedirect(self._job_url(job))

    def _job_or_404(self, request: HttpRequest, job_id: int) -> ImportJob:
        job = ImportJob.objects.filter(pk=job_id).first()
        if job is None:
            raise Http404("no such import job")
        if not self.has_view_or_change_permission(request, job):
            raise PermissionDenied
        return job

    def _job_url(self, job: ImportJob) -> str:
        return reverse("admin:ingestion_importjob_change", args=[job.pk])


def _same_file_warnings(job: ImportJob) -> list[str]:
    """Earlier imports of this very file (by SHA-256), in this dataset or another."""
    warnings = []
    for earlier in selectors.import_job_same_file(job=job):
        where = (
            "this dataset"
            if earlier.dataset_id == job.dataset_id
            else f"another dataset, “{earlier.dataset}”,"
        )
        warnings.append(
            f"The same file (SHA-256) was already imported into {where} by import "
            f"#{earlier.pk} ({earlier.original_name}, {earlier.finished_at:%Y-%m-%d %H:%M})."
        )
    return warnings


def _result_links(job: ImportJob) -> dict[str, str]:
    """After an apply: the places it added and changed in the admin list, and the map
    fitted to them."""
    if job.state != ImportState.DONE or job.dry_run:
        return {}
    places = reverse("admin:places_place_changelist")
    links = {
        name: f"{places}?{urlencode(_job_changes(job.pk, op))}"
        for name, op, n in (
            ("added", "create", job.added),
            ("updated", "update", job.updated),
            ("retired", "retire", job.retired),
        )
        if n
    }
    extent = selectors.import_job_extent(job=job)
    if extent is not None:
        links["map"] = (
            f"{reverse('map')}?{urlencode({'bbox': ','.join(f'{v:.5f}' for v in extent)})}"
        )
    return links


def _job_changes(job_id: int, operation: str) -> dict[str, str | int]:
    """The place list's lookup for places with a change of this kind by this job."""
    return {"changes__import_job_id": job_id, "changes__operation": operation}


@admin.register(ImportRejection)
class ImportRejectionAdmin(DatasetScopedAdminMixin, IdSearchMixin, ReadOnlyAdmin):
    dataset_path = "job__dataset"
    list_display = ("job", "row_number", "layer", "reason", "detail")
    list_filter = ("reason",)
    search_fields = ("detail",)
    search_help_text = "An import job id lists that job's rejected rows."
    id_search_field = "job_id"
    raw_id_fields = ("job",)
