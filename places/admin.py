"""Curators' admin: places with history, regions, datasets, attributes, the change log.

Edits go through ``places.services`` so that each one lands in the change log; deleting a
place is not offered (retire it instead), because the log must keep pointing at it.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.gis.geos import Point
from django.db.models import QuerySet, URLField
from django.http import HttpRequest
from kombu.exceptions import OperationalError as BrokerError

from ingestion import tasks as ingestion_tasks
from places import access, admin_duplicates, selectors, services  # noqa: F401 (registers its admin)
from places.access import Action
from places.admin_access import DatasetScopedAdminMixin, DatasetScopedInlineMixin
from places.admin_base import FastChangeListMixin, GeoAdmin, IdSearchMixin, ReadOnlyAdminMixin
from places.admin_curation import CurationAdminMixin, QualityFlagFilter
from places.admin_history import (
    AUDIT_LIST_DISPLAY,
    AUDIT_LIST_FILTER,
    AUDIT_SEARCH_HELP,
    ChangeAuditMixin,
    CountryFilter,
    NameFilter,
    PlaceHistoryAdminMixin,
    RecentlyChangedFilter,
    RegionFilter,
    history_table,
)
from places.models import (
    SRID,
    AreaVersion,
    Dataset,
    DataVersion,
    Place,
    PlaceAttribute,
    PlaceChange,
    PlaceSource,
    PlaceStatus,
    Region,
    RegionPart,
    SyncEvery,
)


@admin.register(Dataset)
class DatasetAdmin(DatasetScopedAdminMixin, admin.ModelAdmin):
    # Listed to those with a role in them; settings are the admin role's; sync is an import.
    dataset_path = "pk"
    change_action = Action.MANAGE
    action_rights = {"sync": Action.IMPORT}
    list_display = ("name", "slug", "licence", "snapshot_date", "sync_every", "updated_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = (
        "sync_checked_at",
        "sync_result",
        "sync_etag",
        "sync_last_modified",
        "created_at",
        "updated_at",
    )
    actions = ("sync_now",)

    @admin.action(
        description="Sync now: fetch the sync URL, import it as a snapshot if it changed",
        permissions=["sync"],
    )
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Dataset]) -> None:
        # The fetch runs on a worker: a slow source must not hold a web thread.
        chosen = list(queryset.exclude(sync_url="").values_list("pk", flat=True))
        try:
            for dataset_id in chosen:
                ingestion_tasks.dataset_sync_run.delay(dataset_id)
        except BrokerError as exc:
            self.message_user(
                request,
                f"The task queue could not be reached ({exc}); try again later.",
                messages.ERROR,
            )
            return
        if chosen:
            self.message_user(
                request,
                f"A check of {len(chosen)} dataset(s) was queued; its outcome shows in "
                "'Sync result' on each dataset's page.",
                messages.SUCCESS,
            )
        if skipped := queryset.count() - len(chosen):
            self.message_user(
                request,
                f"{skipped} dataset(s) have no sync URL and were left alone.",
                messages.WARNING,
            )

    def has_sync_permission(self, request: HttpRequest) -> bool:
        # A sync applies an import job (a snapshot retires places): a permission of its own.
        return request.user.has_perm("places.sync_dataset") and access.can_somewhere(
            request.user, Action.IMPORT
        )

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # A source URL typed without a scheme is taken as https (Django 6's default).
        if isinstance(db_field, URLField):
            kwargs["assume_scheme"] = "https"
        if db_field.name == "sync_every":
            # A form posted without the field (a script, an older page) keeps sync off.
            kwargs.update(required=False, empty_value=SyncEvery.OFF)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_exclude(self, request: HttpRequest, obj: Dataset | None = None) -> Any:
        # A dataset being added has no timestamps yet: the database sets them on insert,
        # and the form would show the pending default's Python object instead.
        return ("created_at", "updated_at") if obj is None else ()

    def get_readonly_fields(self, request: HttpRequest, obj: Dataset | None = None) -> Any:
        return self.readonly_fields if obj is not None else ()


class RegionAdminForm(forms.ModelForm):
    class Meta:
        model = Region
        fields = (
            "name",
            "level",
            "code",
            "code_system",
            "extra_codes",
            "parent",
            "population",
            "geom",
            "dataset",
        )
        help_texts = {
            "geom": "Saving a changed boundary cuts it into pieces again for point in polygon "
            "and measures its area again; the places inside the old or the new boundary get "
            "their region and country again, and each place that changes is logged in the "
            "change log.",
            "parent": "The country this region belongs to; its places take their country "
            "from it. Left empty, it is the country that holds a point inside the region.",
        }


@admin.register(Region)
class RegionAdmin(GeoAdmin):
    """Regions saved here are kept by ``places.services.region_save``, as loaded ones are."""

    form = RegionAdminForm
    list_display = ("name", "level", "code", "code_system", "parent", "population")
    list_filter = ("level", "code_system")
    search_fields = ("name", "=code")
    raw_id_fields = ("parent", "dataset")
    readonly_fields = ("area_km2", "created_at", "updated_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Region]:
        # Boundaries can be megabytes; the list never shows them (the form loads its own).
        return super().get_queryset(request).select_related("parent").defer("geom", "parent__geom")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting a region would silently unset places' region outside the change log.
        return False

    def save_model(self, request: HttpRequest, obj: Region, form: Any, change: bool) -> None:
        done = services.region_save(region=obj)
        if done.recut or done.relinked or done.places_reassigned:
            self.message_user(request, region_saved_message(obj, done), messages.INFO)


def region_saved_message(region: Region, done: services.RegionsRefreshed) -> str:
    """What saving a region did beyond the row itself, in a curator's words."""
    parts = []
    if done.recut:
        parts.append(f"its boundary was cut into {done.pieces} pieces for point in polygon")
    if done.relinked:
        parts.append(f"{done.relinked} region(s) now belong to another country")
    parts.append(
        f"{done.places_reassigned} place(s) got another region or country, "
        "each logged in the change log"
    )
    return f"{region}: " + "; ".join(parts) + "."


@admin.register(RegionPart)
class RegionPartAdmin(ReadOnlyAdminMixin, GeoAdmin):
    """Pieces of regions, cut again whenever a boundary is saved (loader or admin); read-only."""

    list_display = ("id", "region", "level")
    list_filter = ("level",)
    raw_id_fields = ("region",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[RegionPart]:
        return super().get_queryset(request).select_related("region").defer("region__geom")


class PlaceAttributeInline(DatasetScopedInlineMixin, admin.TabularInline):
    model = PlaceAttribute
    extra = 0
    fields = ("key", "value_num", "value_text", "unit", "observed_on", "source")


# Set only by merging duplicates (places.services.merge), which logs the merge, points
# earlier merges at the survivor and can be undone: never by hand in a form.
MERGE_ONLY_FIELDS = ("merged_into",)
MERGE_STATUS_HELP = (
    "Active or retired. Merged is set only by merging duplicates (Places › Duplicate "
    "candidates), where a merge can also be undone."
)


class PlaceAdminForm(forms.ModelForm):
    """Carries the version the curator opened, so a stale form cannot undo newer changes.

    Longitude and latitude can be typed: a click on a small map lands kilometres off.
    Status can be active or retired here, never merged (``MERGE_ONLY_FIELDS``).
    """

    opened_version = forms.IntegerField(widget=forms.HiddenInput, required=False)
    longitude = forms.FloatField(
        required=False,
        min_value=-180,
        max_value=180,
        help_text="Typed coordinates (WGS84, decimal degrees) win over the map.",
    )
    latitude = forms.FloatField(required=False, min_value=-90, max_value=90)

    class Meta:
        model = Place
        fields = (
            "dataset",
            "source_key",
            *(f for f in services.EDITABLE_FIELDS if f not in MERGE_ONLY_FIELDS),
        )
        # Names and raw values are one line of text, not paragraphs.
        widgets = {
            field: forms.TextInput(attrs={"size": 60})
            for field in (
                "name",
                "religion_raw",
                "denomination_raw",
                "start_date_raw",
                "end_date_raw",
            )
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["opened_version"].initial = self.instance.version
        status = self.fields.get("status")  # absent when read-only (a merged place)
        if isinstance(status, forms.ChoiceField):
            status.choices = [c for c in PlaceStatus.choices if c[0] != PlaceStatus.MERGED]
            status.help_text = MERGE_STATUS_HELP
        location = self.instance.location if self.instance.pk else None
        if location is not None:
            self.fields["longitude"].initial = location.x
            self.fields["latitude"].initial = location.y
        if location is not None and "footprint" in self.fields:
            # A place without a footprint: its empty map opens at the place, not at 0°, 0°.
            self.fields["footprint"].widget.attrs.update(
                default_lon=location.x, default_lat=location.y, default_zoom=7
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        # Typed coordinates count when changed; both left empty (a form posted without
        # them) keep the map's point.
        lon, lat = cleaned.get("longitude"), cleaned.get("latitude")
        self.typed_location = False
        if {"longitude", "latitude"} & set(self.changed_data) and (lon, lat) != (None, None):
            if lon is None or lat is None:
                missing = "longitude" if lon is None else "latitude"
                if missing not in self.errors:
                    self.add_error(missing, "Give both longitude and latitude.")
            else:
                cleaned["location"] = Point(lon, lat, srid=SRID)
                self.typed_location = True
                self.errors.pop("location", None)
        opened = cleaned.get("opened_version")
        if self.instance.pk and opened is not None:
            current = Place.objects.filter(pk=self.instance.pk).values_list("version", flat=True)
            if current and current[0] != opened:
                raise forms.ValidationError(
                    f"This place was changed while you edited it (now version {current[0]}, "
                    f"you opened version {opened}). Reload the page to see the changes."
                )
        return cleaned


@admin.register(Place)
class PlaceAdmin(CurationAdminMixin, PlaceHistoryAdminMixin, DatasetScopedAdminMixin, GeoAdmin):
    form = PlaceAdminForm
    list_display = (
        "__str__",
        "religion",
        "dataset",
        "source_key",
        "region",
        "status",
        "version",
        "updated_at",
    )
    list_filter = (
        "status",
        "religion",
        "dataset",
        CountryFilter,
        RegionFilter,
        NameFilter,
        RecentlyChangedFilter,
        QualityFlagFilter,
    )
    search_fields = ("name",)
    search_help_text = (
        "Words of a name (case and accents ignored: Sao Paulo finds São Paulo), a key such "
        "as osm:way/123, or a place id."
    )
    raw_id_fields = ("country", "region")
    list_select_related = ("dataset", "region")
    readonly_fields = ("version", "created_at", "updated_at", "history", *MERGE_ONLY_FIELDS)
    fieldsets = (
        (None, {"fields": ("name", "dataset", "source_key", "status", "merged_into")}),
        ("Religion", {"fields": ("religion", "religion_raw", "denominations", "denomination_raw")}),
        (
            "Where",
            {"fields": (("longitude", "latitude"), "location", "footprint", "country", "region")},
        ),
        ("When", {"fields": (("start_date", "start_date_raw"), ("end_date", "end_date_raw"))}),
        ("Other", {"fields": ("tags", "version", "created_at", "updated_at", "opened_version")}),
        ("History", {"fields": ("history",)}),
    )
    inlines = (PlaceAttributeInline,)
    actions = (
        "retire_selected",
        "unretire_selected",
        "set_religion",
        "replace_denomination",
        "export_csv",
        "export_geojson",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Place]:
        return super().get_queryset(request).defer("region__geom")

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # An import job's page links here for the places that job added, updated or retired
        # (?changes__import_job_id=…&changes__operation=…): one join, so both hold for one change.
        if lookup in ("changes__import_job_id", "changes__operation"):
            return True
        return super().lookup_allowed(lookup, value, request)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Place], search_term: str
    ) -> tuple[QuerySet[Place], bool]:
        term = search_term.strip()
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        if ":" in term and " " not in term:  # a source key, answered by its index
            return queryset.filter(source_key=term), False
        # Names, case and accents ignored ("Sao Paulo" finds "São Paulo"), by their index.
        return selectors.place_name_search(queryset, term), False

    def get_fieldsets(self, request: HttpRequest, obj: Place | None = None) -> Any:
        if obj is not None:
            return self.fieldsets
        # A place being added has no version, timestamps or history yet (and the database
        # defaults behind them cannot be shown before the row exists).
        hidden = {"version", "created_at", "updated_at", "history", *MERGE_ONLY_FIELDS}
        return [
            (
                title,
                {
                    **options,
                    "fields": [
                        f for f in options["fields"] if isinstance(f, tuple) or f not in hidden
                    ],
                },
            )
            for title, options in self.fieldsets
            if any(f not in hidden for f in options["fields"])
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Place | None = None) -> tuple:
        # The natural key is fixed once the place exists: the change log and imports rely on it.
        if obj is None:
            return self.readonly_fields
        fixed = (*self.readonly_fields, "dataset", "source_key")
        # A merged place leaves that state only by an undo of the merge, on its pair's page.
        return (*fixed, "status") if obj.status == PlaceStatus.MERGED else fixed

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Latest changes")
    def history(self, obj: Place) -> str:
        # The same table as the History page (old → new, author), newest ten.
        return history_table(obj) if obj.pk else "-"

    def save_model(self, request: HttpRequest, obj: Place, form: Any, change: bool) -> None:
        if not change:
            data = {
                f: form.cleaned_data[f] for f in services.EDITABLE_FIELDS if f in form.cleaned_data
            }
            # Left empty, region and country come from the location (point in polygon).
            for key in ("country", "region"):
                if data.get(key) is None:
                    data.pop(key, None)
            created = services.place_create(
                dataset=form.cleaned_data["dataset"],
                source_key=form.cleaned_data["source_key"],
                data=data,
                user=request.user,
            )
            obj.pk = created.pk
            return
        data = {f: form.cleaned_data[f] for f in form.changed_data if f in services.EDITABLE_FIELDS}
        if getattr(form, "typed_location", False):
            data["location"] = form.cleaned_data["location"]
        # The form checked the version already; the service checks it again under the row lock.
        services.place_update(
            place=obj,
            data=data,
            user=request.user,
            expected_version=form.cleaned_data.get("opened_version"),
        )


@admin.register(PlaceAttribute)
class PlaceAttributeAdmin(DatasetScopedAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    dataset_path = "place__dataset"  # its own dataset field names the source, if any
    delete_action = Action.EDIT  # as in the place page's inline
    list_display = ("place", "key", "value_num", "value_text", "unit", "observed_on")
    list_filter = ("key",)
    search_fields = ("=key",)
    raw_id_fields = ("place", "dataset")
    date_hierarchy = "observed_on"


@admin.register(PlaceChange)
class PlaceChangeAdmin(
    ChangeAuditMixin,
    DatasetScopedAdminMixin,
    ReadOnlyAdminMixin,
    IdSearchMixin,
    FastChangeListMixin,
    admin.ModelAdmin,
):
    """The audit trail: read-only, as the table itself refuses updates and deletes. Its
    filters and columns (author, old → new) are in ``places.admin_history``."""

    list_display = AUDIT_LIST_DISPLAY
    list_filter = AUDIT_LIST_FILTER
    list_select_related = ("place", "user", "dataset")
    search_fields = ("comment",)
    search_help_text = AUDIT_SEARCH_HELP
    id_search_field = "place_id"
    raw_id_fields = ("place", "user")
    readonly_fields = ("author", "change_diff")
    # Newest first, as an audit is read; a filtered count then stops at the newest matches.
    ordering = ("-seq",)


@admin.register(DataVersion)
class DataVersionAdmin(DatasetScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Per-dataset data versions (moved by the change-log trigger); keys of caches and ETags."""

    list_display = ("dataset", "version", "changed_at")
    list_select_related = ("dataset",)


@admin.register(AreaVersion)
class AreaVersionAdmin(
    DatasetScopedAdminMixin, ReadOnlyAdminMixin, FastChangeListMixin, admin.ModelAdmin
):
    """Per-area data versions (moved by the change-log trigger); keys of map caches."""

    list_display = ("dataset", "cell", "version")
    list_filter = ("dataset",)
    list_select_related = ("dataset",)
    search_help_text = "Cell = row × 256 + column of a 1.40625° world grid."


@admin.register(PlaceSource)
class PlaceSourceAdmin(DatasetScopedAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """What each place's dataset last delivered, as the next import compares it: read-only
    (imports write it); kept apart from the place row, which the map reads."""

    dataset_path = "place__dataset"
    list_display = ("place",)
    list_select_related = ("place",)
    raw_id_fields = ("place",)
    search_fields = ("place__source_key",)
    search_help_text = "The place's key in its dataset, e.g. osm:node/42."
