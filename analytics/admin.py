"""Stored analytics results, read-only, with a button that queues a full recompute, and the
staff's dashboard of charts drawn from the statistics API."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from analytics import selectors
from analytics.apis import SUMMARY_LEVELS
from analytics.models import RegionSummary
from analytics.tasks import analytics_recompute
from places.admin_base import ReadOnlyAdminMixin
from places.basemap import basemap_config
from places.models import RegionLevel, Religion

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
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="analytics_dashboard",
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

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Charts of the stored results for any staff member (the figures are public through
        the API; the page is the staff's way in). The page reads the same /api/v1/stats/
        endpoints researchers do; only the choices it offers come from here."""
        config = {
            "figures": selectors.DASHBOARD_FIGURES,
            "levels": dict(SUMMARY_LEVELS),
            "religions": dict(Religion.choices),
            "sensors": selectors.sensors_with_rollups(),
            "extent": selectors.region_extent(level=RegionLevel.DISTRICT),
            "api": reverse("analytics:summary-list"),
            # Always the offline basemap: the page needs no other server, whatever
            # MAP_STYLE_URL names for the public map.
            "basemap": basemap_config()["basemap"],
        }
        context = {
            **self.admin_site.each_context(request),
            "title": "Analytics dashboard",
            "opts": self.model._meta,
            "dashboard_config": config,
        }
        return render(request, "admin/analytics/dashboard.html", context)
