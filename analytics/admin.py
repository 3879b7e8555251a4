"""Stored analytics results, read-only, with a button that queues a full recompute."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from analytics.models import RegionSummary
from analytics.tasks import analytics_recompute
from places.admin_base import ReadOnlyAdminMixin

RECOMPUTE_PERMISSION = "analytics.change_regionsummary"


@admin.register(RegionSummary)
class RegionSummaryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "code",
        "name",
        "level",
        "places",
        "per_100k_people",
        "per_1000_km2",
        "shannon",
        "computed_on",
        "computed_at",
    )
    list_filter = ("level", "computed_on")
    search_fields = ("code", "name")
    ordering = ("level", "code")

    def get_urls(self) -> list[Any]:
        return [
            path(
                "recompute/",
                self.admin_site.admin_view(require_POST(self.recompute_view)),
                name="analytics_regionsummary_recompute",
            ),
            *super().get_urls(),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = {"can_recompute": request.user.has_perm(RECOMPUTE_PERMISSION)}
        return super().changelist_view(request, extra_context={**(extra_context or {}), **extra})

    def recompute_view(self, request: HttpRequest) -> HttpResponse:
        """Queue a full recompute (the worker takes it on the analytics queue)."""
        if not request.user.has_perm(RECOMPUTE_PERMISSION):
            raise PermissionDenied
        analytics_recompute.delay(full=True)
        messages.success(
            request,
            "A full recompute of every region summary and sensor rollup is queued; the "
            "figures here change when a worker has run it.",
        )
        return HttpResponseRedirect(reverse("admin:analytics_regionsummary_changelist"))
