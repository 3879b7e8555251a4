"""Curation in the admin: the review queue and the data-quality tools of the places list.

Rights come from ``places.access`` alone (propose, review, edit, view per dataset), not from
model permissions: contributors and reviewers need no change permission on places.
Work is done by ``places.services.review`` and ``places.services.quality``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.gis.geos import GEOSGeometry
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from places import access
from places.access import Action
from places.admin_base import FastChangeListMixin, OfflineMapWidget
from places.admin_history import CappedCountPaginator
from places.csv_cells import safe_cell
from places.models import Dataset, Place, Religion
from places.models_curation import (
    ApiToken,
    PlaceFlag,
    PlaceProposal,
    ProposalStatus,
    QualityFlag,
    QualityRefresh,
)
from places.services import quality, review

# --- data quality on the places list -----------------------------------------------------------

EXPORT_FIELDS = (
    "id",
    "dataset",
    "source_key",
    "name",
    "religion",
    "denominations",
    "status",
    "region_id",
    "country_id",
    "start_date",
    "end_date",
)
BULK_FIX_LIMIT = 5_000
# The places list's parameters that leave a list by flag counted by the flags' index alone.
FLAG_LIST_PARAMETERS = {"flag", "dataset__id__exact", "p", "o"}


class QualityFlagFilter(admin.SimpleListFilter):
    """Places with a stored data-quality flag (``PlaceFlag``): an index range on
    (flag, dataset), narrowed by the dataset filter when one is chosen."""

    title = "data quality"
    parameter_name = "flag"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(QualityFlag.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Place]) -> QuerySet[Place]:
        value = self.value()
        if value not in QualityFlag.values:
            return queryset
        flags = PlaceFlag.objects.filter(flag=value)
        dataset = request.GET.get("dataset__id__exact", "")
        if dataset.isdigit():
            flags = flags.filter(dataset_id=int(dataset))
        return queryset.filter(pk__in=flags.values("place_id"))


class SetReligionForm(forms.Form):
    religion = forms.ChoiceField(choices=Religion.choices)
    comment = forms.CharField(required=False, max_length=500, label="Why (logged)")


class ReplaceDenominationForm(forms.Form):
    old = forms.CharField(max_length=100, label="Replace the denomination")
    new = forms.CharField(
        max_length=100,
        required=False,
        label="by",
        help_text="A recognised value, e.g. "
        + ", ".join(sorted(quality.KNOWN_DENOMINATIONS)[:12])
        + " …; empty removes it.",
    )
    comment = forms.CharField(required=False, max_length=500, label="Why (logged)")


def _csv_rows(queryset: QuerySet[Place]) -> Iterator[str]:
    class Line:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Line())
    yield writer.writerow([*EXPORT_FIELDS, "longitude", "latitude", "flags"])
    for place, flags in _export_places(queryset):
        values = [
            "|".join(place.denominations) if f == "denominations" else getattr(place, f)
            for f in EXPORT_FIELDS
        ]
        if values[1] is not None:
            values[1] = place.dataset.slug
        cells = ["" if v is None else safe_cell(str(v)) for v in values]
        cells += [str(place.location.x), str(place.location.y), "|".join(flags)]
        yield writer.writerow(cells)


def _export_places(queryset: QuerySet[Place]) -> Iterator[tuple[Place, list[str]]]:
    """The places of a selection with their flags (one query for each)."""
    flags: dict[int, list[str]] = {}
    places = list(queryset.select_related("dataset").defer("footprint"))
    ids = [p.pk for p in places]
    for place_id, flag in PlaceFlag.objects.filter(place_id__in=ids).values_list("place", "flag"):
        flags.setdefault(place_id, []).append(flag)
    for place in places:
        yield place, sorted(flags.get(place.pk, []))


def _geojson_chunks(queryset: QuerySet[Place]) -> Iterator[str]:
    yield '{"type":"FeatureCollection","features":['
    for n, (place, flags) in enumerate(_export_places(queryset)):
        properties = {
            f: (place.dataset.slug if f == "dataset" else getattr(place, f))
            for f in EXPORT_FIELDS
            if f != "id"
        }
        feature = {
            "type": "Feature",
            "id": place.pk,
            "geometry": json.loads(place.location.geojson),
            "properties": {**properties, "flags": flags},
        }
        yield ("," if n else "") + json.dumps(feature, default=str)
    yield "]}"


class CurationAdminMixin:
    """For ``PlaceAdmin``: data-quality counts, bulk fixes and exports, and the links to
    propose an edit of a place and to the review queue."""

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view  # type: ignore[attr-defined]
        return [
            path("quality/", wrap(self.quality_view), name="places_place_quality"),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        place = (
            Place.objects.filter(pk=object_id).only("dataset_id").first()
            if object_id.isdigit()
            else None
        )
        extra = dict(extra_context or {})
        if place is not None and access.can(request.user, Action.PROPOSE, place.dataset_id):
            extra["propose_url"] = reverse("admin:places_placeproposal_propose", args=[place.pk])
        return super().change_view(request, object_id, form_url, extra)  # type: ignore[misc]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra = {**(extra_context or {}), "quality_url": reverse("admin:places_place_quality")}
        return super().changelist_view(request, extra)  # type: ignore[misc]

    def get_paginator(
        self, request: HttpRequest, queryset: Any, per_page: int, *args: Any, **kwargs: Any
    ) -> Any:
        # A list by flag would be counted by joining every flagged place (60,000 of a million
        # in the benchmark: 0.3-1.4 s) for a page of 50. Filtered by flag (and dataset) alone,
        # the flags' own index counts it; with other filters too, counting stops at 10,000.
        flag = request.GET.get(QualityFlagFilter.parameter_name)
        if flag in QualityFlag.values:
            if set(request.GET) <= FLAG_LIST_PARAMETERS:
                flags = PlaceFlag.objects.filter(flag=flag)
                dataset = request.GET.get("dataset__id__exact", "")
                if dataset.isdigit():
                    flags = flags.filter(dataset_id=int(dataset))
                ids = access.dataset_ids_for(request.user, Action.VIEW)
                if ids is not None:
                    flags = flags.filter(dataset_id__in=ids)
                paginator = Paginator(queryset, per_page, *args, **kwargs)
                paginator.count = flags.count()
                return paginator
            return CappedCountPaginator(queryset, per_page, *args, **kwargs)
        return super().get_paginator(  # type: ignore[misc]
            request, queryset, per_page, *args, **kwargs
        )

    def quality_view(self, request: HttpRequest) -> HttpResponse:
        """Flag counts per dataset (of the datasets the user may view), each a link to the
        places list filtered by that dataset and flag."""
        if not access.can_somewhere(request.user, Action.VIEW):
            raise PermissionDenied
        counts = quality.quality_flag_counts(user=request.user)
        datasets = Dataset.objects.filter(pk__in=counts).order_by("slug")
        changelist = reverse("admin:places_place_changelist")
        rows = [
            {
                "dataset": dataset,
                "cells": [
                    (
                        counts[dataset.pk].get(flag, 0),
                        f"{changelist}?dataset__id__exact={dataset.pk}&flag={flag}",
                    )
                    for flag in QualityFlag.values
                ],
            }
            for dataset in datasets
        ]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "opts": Place._meta,
            "title": "Data quality",
            "flags": QualityFlag.choices,
            "rows": rows,
        }
        return TemplateResponse(request, "admin/places/place/quality.html", context)

    def _intermediate(
        self, request: HttpRequest, queryset: QuerySet[Place], *, action: str, title: str, form: Any
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "opts": Place._meta,
            "title": title,
            "form": form,
            "count": queryset.count(),
            "limit": BULK_FIX_LIMIT,
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action": action,
        }
        return TemplateResponse(request, "admin/places/place/bulk_fix.html", context)

    def _chosen(self, queryset: QuerySet[Place]) -> list[int]:
        return list(queryset.order_by("pk").values_list("pk", flat=True)[:BULK_FIX_LIMIT])

    @admin.action(
        description="Set the religion of selected places (each change logged)",
        permissions=["change"],
    )
    def set_religion(self, request: HttpRequest, queryset: QuerySet[Place]) -> Any:
        form = SetReligionForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            religion = form.cleaned_data["religion"]
            changed = quality.places_set_religion(
                place_ids=self._chosen(queryset),
                religion=religion,
                user=request.user,
                comment=form.cleaned_data["comment"],
            )
            self.message_user(  # type: ignore[attr-defined]
                request, f"Religion set to {religion} on {changed} place(s).", messages.SUCCESS
            )
            return None
        return self._intermediate(
            request, queryset, action="set_religion", title="Set religion", form=form
        )

    @admin.action(
        description="Replace a denomination in selected places (each change logged)",
        permissions=["change"],
    )
    def replace_denomination(self, request: HttpRequest, queryset: QuerySet[Place]) -> Any:
        form = ReplaceDenominationForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            old, new = form.cleaned_data["old"], form.cleaned_data["new"]
            changed = quality.places_denomination_replace(
                place_ids=self._chosen(queryset),
                old=old,
                new=new,
                user=request.user,
                comment=form.cleaned_data["comment"],
            )
            self.message_user(  # type: ignore[attr-defined]
                request,
                f"Denomination {old} replaced by {new or '(nothing)'} in {changed} place(s).",
                messages.SUCCESS,
            )
            return None
        return self._intermediate(
            request,
            queryset,
            action="replace_denomination",
            title="Replace a denomination",
            form=form,
        )

    # Exports need the edit right, like every action here: an admin action needs more than
    # the right to see the list (the admin's tests hold every action to that).
    @admin.action(description="Export selected places as CSV", permissions=["change"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Place]) -> HttpResponseBase:
        response = StreamingHttpResponse(_csv_rows(queryset), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="places.csv"'
        return response

    @admin.action(description="Export selected places as GeoJSON", permissions=["change"])
    def export_geojson(self, request: HttpRequest, queryset: QuerySet[Place]) -> HttpResponseBase:
        response = StreamingHttpResponse(
            _geojson_chunks(queryset), content_type="application/geo+json"
        )
        response["Content-Disposition"] = 'attachment; filename="places.geojson"'
        return response


# --- the review queue --------------------------------------------------------------------------

PROPOSE_FORM_FIELDS = tuple(f for f in review.PROPOSABLE_FIELDS if f != "footprint")


class ProposeForm(forms.ModelForm):
    comment = forms.CharField(
        required=False,
        max_length=1000,
        label="Why (shown to the reviewer)",
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
    )

    class Meta:
        model = Place
        fields = PROPOSE_FORM_FIELDS
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


class ProposalMineFilter(admin.SimpleListFilter):
    title = "whose"
    parameter_name = "whose"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("mine", "My proposals"), ("to_review", "For me to review")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "mine":
            return queryset.filter(proposer=request.user)
        if self.value() == "to_review":
            queryset = queryset.filter(status=ProposalStatus.PENDING).exclude(proposer=request.user)
            ids = access.dataset_ids_for(request.user, Action.REVIEW)
            return queryset if ids is None else queryset.filter(dataset_id__in=ids)
        return queryset


def _shown(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@admin.register(PlaceProposal)
class PlaceProposalAdmin(FastChangeListMixin, admin.ModelAdmin):
    """Proposals: their proposers see their own, reviewers those of their datasets."""

    list_display = (
        "id",
        "place",
        "dataset",
        "proposer",
        "proposed_fields",
        "status",
        "created_at",
        "reviewer",
        "decided_at",
        "review_link",
    )
    list_filter = ("status", ProposalMineFilter, "dataset")
    list_select_related = ("place", "dataset", "proposer", "reviewer")
    readonly_fields = ("diff", "review_comment", "applied_change")
    fields = (
        "place",
        "dataset",
        "proposer",
        "status",
        "comment",
        "diff",
        "base_version",
        "reviewer",
        "review_comment",
        "decided_at",
        "applied_change",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[PlaceProposal]:
        queryset = super().get_queryset(request).defer("place__footprint")
        ids = access.dataset_ids_for(request.user, Action.REVIEW)
        if ids is None:
            return queryset
        return queryset.filter(Q(proposer=request.user) | Q(dataset_id__in=ids))

    def _may_see(self, request: HttpRequest, obj: PlaceProposal | None) -> bool:
        user = request.user
        if obj is None:
            return (
                any(access.can_somewhere(user, a) for a in (Action.PROPOSE, Action.REVIEW))
                or PlaceProposal.objects.filter(proposer_id=user.pk).exists()
            )
        return obj.proposer_id == user.pk or access.can(user, Action.REVIEW, obj.dataset_id)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may_see(request, None)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._may_see(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # proposed from a place's page ("Propose an edit")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # decided on the review page, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the record of who proposed and who decided

    @admin.display(description="fields")
    def proposed_fields(self, obj: PlaceProposal) -> str:
        return ", ".join(sorted(obj.values))

    @admin.display(description="")
    def review_link(self, obj: PlaceProposal) -> str:
        label = "Review" if obj.status == ProposalStatus.PENDING else "Details"
        url = reverse("admin:places_placeproposal_review", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="Proposed change")
    def diff(self, obj: PlaceProposal) -> str:
        return format_html(
            "<table><tr><th>field</th><th>when proposed</th><th>proposed</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (f, _shown(obj.base_values.get(f)), _shown(v))
                    for f, v in sorted(obj.values.items())
                ),
            ),
        )

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "propose/<int:place_id>/",
                wrap(self.propose_view),
                name="places_placeproposal_propose",
            ),
            path("<int:pk>/review/", wrap(self.review_view), name="places_placeproposal_review"),
            *super().get_urls(),
        ]

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": PlaceProposal._meta,
            "title": title,
        }

    def propose_view(self, request: HttpRequest, place_id: int) -> HttpResponse:
        """A place's fields to change, sent for review."""
        place = Place.objects.filter(pk=place_id).first()
        if place is None:
            raise Http404("No such place.")
        if not access.can(request.user, Action.PROPOSE, place.dataset_id):
            raise PermissionDenied
        form = ProposeForm(request.POST or None, instance=place)
        widget = OfflineMapWidget(
            attrs={"default_zoom": 12, "csp_nonce": str(getattr(request, "csp_nonce", ""))}
        )
        form.fields["location"].widget = widget
        if request.method == "POST" and form.is_valid():
            values = {f: form.cleaned_data[f] for f in form.changed_data if f != "comment"}
            try:
                proposal = review.proposal_create(
                    place=place,
                    user=request.user,
                    values=values,
                    comment=form.cleaned_data["comment"],
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                self.message_user(
                    request,
                    f"Proposal #{proposal.pk} is waiting for a reviewer of {place.dataset}.",
                    messages.SUCCESS,
                )
                return redirect(reverse("admin:places_placeproposal_review", args=[proposal.pk]))
        context = {
            **self._context(request, f"Propose an edit of {place}"),
            "place": place,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/places/placeproposal/propose.html", context)

    def review_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The proposal against the current record, field by field, with conflicts marked
        and both locations on maps; approve or reject with a comment."""
        proposal = (
            PlaceProposal.objects.select_related("proposer", "reviewer", "dataset")
            .filter(pk=pk)
            .first()
        )
        if proposal is None or not self._may_see(request, proposal):
            raise Http404("No such proposal.")
        may_review = (
            access.can(request.user, Action.REVIEW, proposal.dataset_id)
            and proposal.proposer_id != request.user.pk
            and proposal.status == ProposalStatus.PENDING
        )
        error = ""
        if request.method == "POST":
            if not may_review:
                raise PermissionDenied
            comment = request.POST.get("comment", "").strip()
            try:
                if "approve" in request.POST:
                    review.proposal_approve(
                        proposal=proposal,
                        user=request.user,
                        comment=comment,
                        force=request.POST.get("force") == "on",
                    )
                    self.message_user(request, f"Proposal #{pk} approved and applied.")
                else:
                    review.proposal_reject(proposal=proposal, user=request.user, comment=comment)
                    self.message_user(request, f"Proposal #{pk} rejected.")
                return redirect(reverse("admin:places_placeproposal_changelist"))
            except review.ProposalError as exc:
                error = str(exc)
            except ValidationError as exc:
                error = " ".join(exc.messages)
        place = Place.objects.get(pk=proposal.place_id)
        conflicts = {c.field for c in review.proposal_conflicts(proposal=proposal, place=place)}
        rows = [
            {
                "field": field,
                "base": _shown(proposal.base_values.get(field)),
                "current": _shown(review._current_values(place, [field])[field]),
                "proposed": _shown(value),
                "conflict": field in conflicts,
            }
            for field, value in sorted(proposal.values.items())
        ]
        maps = []
        if "location" in proposal.values:
            nonce = str(getattr(request, "csp_nonce", ""))
            for label, geojson in (
                ("now", json.loads(place.location.geojson)),
                ("proposed", proposal.values["location"]),
            ):
                widget = OfflineMapWidget(
                    attrs={"default_zoom": 14, "csp_nonce": nonce, "disabled": True}
                )
                geom = GEOSGeometry(json.dumps(geojson), srid=4326)
                maps.append((label, widget.render(f"location_{label}", geom)))
        context = {
            **self._context(request, f"Proposal #{proposal.pk} for {place}"),
            "proposal": proposal,
            "place": place,
            "rows": rows,
            "conflicts": bool(conflicts),
            "maps": maps,
            "media": self.media + OfflineMapWidget().media,
            "may_review": may_review,
            "error": error,
        }
        return TemplateResponse(request, "admin/places/placeproposal/review.html", context)


class AdminRoleViewOnlyMixin:
    """Rows the admin role reads and nobody edits here; rights from ``places.access`` alone."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.is_admin(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.is_admin(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(AdminRoleViewOnlyMixin, admin.ModelAdmin):
    """Users' API tokens: made by ``manage.py api_token_create`` (the key is shown there
    once); only the digest is stored, so nothing here can show a key."""

    list_display = ("user", "name", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name")
    list_select_related = ("user",)
    exclude = ("key_sha256",)


@admin.register(QualityRefresh)
class QualityRefreshAdmin(AdminRoleViewOnlyMixin, admin.ModelAdmin):
    """When each dataset's data-quality flags were last computed in full (beat's refresh)."""

    list_display = ("dataset", "last_seq", "refreshed_at")
    list_select_related = ("dataset",)
