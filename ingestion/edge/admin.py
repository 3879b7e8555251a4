"""Edge nodes in the admin: nodes with their status and last contact at a glance, keys
(created by an action that shows the key once, revoked by an action), sensors with their
latest readings, parameters, and batches with their per-item errors (read-only).

Everything goes through Django's model permissions: a curator without them sees none of it.
Keys are made only by ``edge_key_create`` (the action), never typed into a form.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from ingestion.edge.models import (
    EdgeNode,
    EdgeNodeKey,
    EdgeReadingCount,
    NodeStatus,
    ObservationBatch,
    Parameter,
    Sensor,
)
from ingestion.edge.services.keys import edge_key_create, edge_key_revoke
from places.admin_base import FastChangeListMixin, IdSearchMixin, ReadOnlyAdminMixin

ERRORS_SHOWN = 200

# The newest reading of each parameter: one index probe per parameter (newest first down the
# primary key of each month partition), however many readings the sensor has.
LATEST_READINGS = """
SELECT p.code, p.unit, o.time, o.value
FROM ingestion_parameter p
CROSS JOIN LATERAL (
    SELECT time, value FROM ingestion_observation
    WHERE sensor_id = %s AND parameter_id = p.id
    ORDER BY time DESC LIMIT 1
) o
ORDER BY p.code
"""


class KeyInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = EdgeNodeKey
    extra = 0
    fields = ("prefix", "name", "scopes", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = fields
    show_change_link = True
    verbose_name_plural = "Keys (create one with the list's action; revoke under Edge node keys)"


class SensorInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Sensor
    extra = 0
    fields = ("external_id", "kind", "last_reading_at")
    readonly_fields = fields
    show_change_link = True
    verbose_name_plural = "Sensors (each one's page shows its latest readings)"


@admin.register(EdgeNode)
class EdgeNodeAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "status",
        "last_seen_at",
        "last_reading_at",
        "region",
        "software_version",
        "queue_depth",
        "clock_offset_seconds",
    )
    list_filter = ("status", "region__level", "software_version")
    search_fields = ("name",)
    list_select_related = ("region",)
    raw_id_fields = ("owner", "region")
    readonly_fields = (
        "software_version",
        "last_heartbeat_at",
        "last_seen_at",
        "last_reading_at",
        "queue_depth",
        "disk_free_bytes",
        "clock_offset_seconds",
        "created_at",
    )
    inlines = [KeyInline, SensorInline]
    actions = ["create_key"]

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if "status" in form.base_fields:
            form.base_fields["status"].help_text = (
                "Disabled refuses all of the node's keys. Silent is set by the server after "
                "EDGE_SILENT_AFTER_SECONDS without contact and cleared by the next heartbeat "
                "or batch."
            )
        return form

    @admin.action(
        description="Create a key for each selected node (shown once)",
        permissions=["change"],
    )
    def create_key(self, request: HttpRequest, queryset: QuerySet[EdgeNode]) -> Any:
        if not request.user.has_perm("ingestion.add_edgenodekey"):
            self.message_user(request, "You may not create edge node keys.", level=messages.ERROR)
            return None
        nodes = list(queryset.exclude(status=NodeStatus.DISABLED))
        skipped = queryset.filter(status=NodeStatus.DISABLED).count()
        if skipped:
            self.message_user(
                request,
                f"{skipped} disabled node(s) skipped: their keys would be refused.",
                level=messages.WARNING,
            )
        if not nodes:
            return None
        created = [
            edge_key_create(node=node, name="admin", created_by=request.user)  # type: ignore[arg-type]
            for node in nodes
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "New edge node keys",
            "keys": created,
        }
        response = TemplateResponse(request, "admin/ingestion/edgenode/keys_created.html", context)
        # The page holds secrets: no cache may keep it.
        response["Cache-Control"] = "no-store"
        return response


@admin.register(EdgeNodeKey)
class EdgeNodeKeyAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "prefix",
        "node",
        "name",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("revoked_at", "node__status")
    search_fields = ("prefix", "node__name", "name")
    list_select_related = ("node",)
    fields = (
        "node",
        "prefix",
        "name",
        "scopes",
        "expires_at",
        "created_by",
        "created_at",
        "revoked_at",
        "last_used_at",
    )
    readonly_fields = (
        "node",
        "prefix",
        "created_by",
        "created_at",
        "revoked_at",
        "last_used_at",
    )
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # keys are made by the node list's action, which shows them once

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[EdgeNodeKey]) -> None:
        keys = list(queryset.filter(revoked_at__isnull=True))
        for key in keys:
            edge_key_revoke(key=key)
        self.message_user(request, f"{len(keys)} key(s) revoked; devices using them get 401.")


class SensorAdmin(FastChangeListMixin, IdSearchMixin, admin.ModelAdmin):
    list_display = ("external_id", "node", "kind", "last_reading_at", "created_at")
    list_filter = ("kind", "node__status")
    search_fields = ("external_id", "node__name")
    list_select_related = ("node",)
    raw_id_fields = ("node",)
    readonly_fields = ("last_reading_at", "created_at", "latest_readings")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # A sensor's node is chosen once: changing it would hand the sensor, and every reading
        # it has sent, to another node (and its keys).
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if obj is None else ("node", *fields)

    @admin.display(description="latest readings")
    def latest_readings(self, sensor: Sensor) -> SafeString | str:
        if sensor.pk is None:
            return "-"
        with connection.cursor() as cursor:
            cursor.execute(LATEST_READINGS, [sensor.pk])
            rows = cursor.fetchall()
        if not rows:
            return "No readings yet."
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{} {}</td><td>{}</td></tr>",
            (
                (code, f"{value:g}", unit, time.strftime("%Y-%m-%d %H:%M:%S UTC"))
                for code, unit, time, value in rows
            ),
        )
        return format_html(
            "<table><thead><tr><th>parameter</th><th>value</th><th>time</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            body,
        )


admin.site.register(Sensor, SensorAdmin)


@admin.register(Parameter)
class ParameterAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "unit", "min_value", "max_value")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # readings refer to parameters by id


@admin.register(ObservationBatch)
class ObservationBatchAdmin(ReadOnlyAdminMixin, FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "node",
        "idempotency_key",
        "received_at",
        "readings",
        "accepted",
        "duplicate",
        "rejected",
    )
    list_filter = ("node__status",)
    search_fields = ("idempotency_key", "node__name")
    list_select_related = ("node",)
    date_hierarchy = "received_at"
    fields = (
        "node",
        "idempotency_key",
        "body_sha256",
        "received_at",
        "readings",
        "accepted",
        "duplicate",
        "rejected",
        "errors",
        "counted_at",
    )
    readonly_fields = fields

    @admin.display(description="errors")
    def errors(self, batch: ObservationBatch) -> SafeString | str:
        errors = (batch.response or {}).get("errors", [])
        if not errors:
            return "None."
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((e["index"], e["field"], e["code"], e["message"]) for e in errors[:ERRORS_SHOWN]),
        )
        more = len(errors) - ERRORS_SHOWN
        tail = format_html("<p>… and {} more.</p>", more) if more > 0 else ""
        return format_html(
            "<table><thead><tr><th>index</th><th>field</th><th>code</th><th>message</th></tr>"
            "</thead><tbody>{}</tbody></table>{}",
            body,
            tail,
        )


@admin.register(EdgeReadingCount)
class EdgeReadingCountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The totals behind the ``edge_readings_total`` metric, kept by the batch follow-up."""

    list_display = ("outcome", "reason", "total")
    list_filter = ("outcome",)
