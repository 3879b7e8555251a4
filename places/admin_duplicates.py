"""Curators' review of likely duplicates: the list, the merge page, "not a duplicate", undo.

Rights are per dataset (``places.access``) and need both places' datasets: a pair is listed
to those who may view both, merged or dismissed by those who may merge in both and hold the
merge permission of their role (``places.access.MERGE_PERMISSION``). The rows
are written only by the finder and the services (``places.services.duplicates``, ``merge``),
so the admin's own add, change and delete are off.
"""

from __future__ import annotations

import functools
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from places import access, services
from places.access import Action
from places.admin_base import FastChangeListMixin
from places.models import Place, PlaceStatus
from places.models_duplicates import DuplicateCandidate, DuplicateReason, DuplicateStatus
from places.services.history import HistoryError


class ReasonFilter(admin.SimpleListFilter):
    title = "reason"
    parameter_name = "reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Any:
        return DuplicateReason.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in DuplicateReason.values:
            return queryset.filter(reasons__contains=[self.value()])
        return queryset


class ActivePairFilter(admin.SimpleListFilter):
    """Open pairs whose places were merged or retired since are moot: hidden by default."""

    title = "places"
    parameter_name = "places"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Any:
        return (("all", "Any status"),)

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Both active",
        }
        yield from super().choices(changelist)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "all":
            return queryset
        return queryset.filter(
            Q(status=DuplicateStatus.MERGED)
            | Q(place_a__status=PlaceStatus.ACTIVE, place_b__status=PlaceStatus.ACTIVE)
        )


def _both(user: Any, action: Action, candidate: DuplicateCandidate) -> bool:
    return access.can(user, action, candidate.dataset_a_id) and access.can(
        user, action, candidate.dataset_b_id
    )


class MergeForm(forms.Form):
    """Which place survives, and for each field whose values differ, whose value it keeps."""

    survivor = forms.ChoiceField(
        choices=(("a", "the first"), ("b", "the second")),
        widget=forms.RadioSelect,
        help_text="The place that is kept; the other is marked merged and redirects to it.",
    )
    comment = forms.CharField(required=False, max_length=500)

    def __init__(self, *args: Any, differing: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.differing = differing
        for field in differing:
            self.fields[f"take_{field}"] = forms.ChoiceField(
                choices=(("a", "first"), ("b", "second")),
                widget=forms.RadioSelect,
                initial="a",
                label=field,
            )

    def taken_from(self, side: str) -> list[str]:
        return [f for f in self.differing if self.cleaned_data.get(f"take_{f}") == side]


def _shown(place: Place, field: str) -> str:
    value = getattr(place, field)
    if field == "location" and value is not None:
        return f"{value.x:.6f}, {value.y:.6f}"
    if field == "footprint":
        return "a footprint" if value is not None else "-"
    if value in (None, "", [], {}):
        return "-"
    return str(value)


@admin.register(DuplicateCandidate)
class DuplicateCandidateAdmin(FastChangeListMixin, admin.ModelAdmin):
    list_display = (
        "pair",
        "merge_link",
        "score",
        "reason_list",
        "distance_m",
        "name_similarity",
        "status",
        "dataset_a",
        "dataset_b",
        "updated_at",
    )
    list_filter = ("status", ReasonFilter, ActivePairFilter, "dataset_a", "dataset_b")
    list_select_related = ("place_a", "place_b", "dataset_a", "dataset_b")
    ordering = ("-score", "id")
    search_help_text = "A place id finds its pairs."
    search_fields = ("=place_a__id",)
    actions = ("mark_not_duplicate",)
    fields = (
        "place_a",
        "place_b",
        "score",
        "reasons",
        "distance_m",
        "name_similarity",
        "status",
        "survivor",
        "decided_by",
        "decided_at",
        "merge_changes",
        "found_at",
        "updated_at",
    )
    readonly_fields = fields
    change_form_template = "admin/places/duplicatecandidate/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[DuplicateCandidate]:
        queryset = super().get_queryset(request).defer("place_a__footprint", "place_b__footprint")
        ids = access.dataset_ids_for(request.user, Action.VIEW)
        if ids is None:
            return queryset
        return queryset.filter(dataset_a__in=ids, dataset_b__in=ids)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[DuplicateCandidate], search_term: str
    ) -> tuple[QuerySet[DuplicateCandidate], bool]:
        term = search_term.strip()
        if term.isdigit():
            return queryset.filter(Q(place_a_id=int(term)) | Q(place_b_id=int(term))), False
        return queryset.none() if term else queryset, False

    # Seeing pairs is the datasets' right (places.access); deciding them needs the merge
    # permission as well (has_merge_permission).
    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_somewhere(request.user, Action.VIEW)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return access.can_somewhere(request.user, Action.VIEW)
        return _both(request.user, Action.VIEW, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_merge_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Both, as everywhere in the admin: the role's model permission (its group) and the
        # merge right in the datasets.
        if not request.user.has_perm(access.MERGE_PERMISSION):
            return False
        if obj is None:
            return access.can_somewhere(request.user, Action.MERGE)
        return _both(request.user, Action.MERGE, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions: dict[str, Any] = super().get_actions(request)
        return {
            name: (self._guarded(func), name, description)
            for name, (func, _, description) in actions.items()
        }

    @staticmethod
    def _guarded(func: Any) -> Any:
        """An action runs only when the user may merge in both datasets of every row."""

        @functools.wraps(func)
        def guarded(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
            ids = access.dataset_ids_for(request.user, Action.MERGE)
            if ids is not None and queryset.exclude(dataset_a__in=ids, dataset_b__in=ids).exists():
                modeladmin.message_user(
                    request,
                    "Nothing was done: some of the selected pairs have a place in a dataset "
                    "where you may not merge.",
                    messages.ERROR,
                )
                return None
            return func(modeladmin, request, queryset)

        return guarded

    @admin.action(
        description="Not a duplicate: never propose these pairs again", permissions=["merge"]
    )
    def mark_not_duplicate(
        self, request: HttpRequest, queryset: QuerySet[DuplicateCandidate]
    ) -> None:
        done = skipped = 0
        for candidate in queryset.exclude(status=DuplicateStatus.MERGED):
            services.duplicate_mark_not_duplicate(candidate=candidate, user=request.user)
            done += 1
        skipped = queryset.filter(status=DuplicateStatus.MERGED).count()
        self.message_user(
            request, f"{done} pair(s) marked not a duplicate; they are not proposed again."
        )
        if skipped:
            self.message_user(
                request,
                f"{skipped} merged pair(s) were left alone: undo the merge first.",
                messages.WARNING,
            )

    @admin.display(description="pair")
    def pair(self, obj: DuplicateCandidate) -> str:
        return format_html(
            "{} (#{}) / {} (#{})", obj.place_a, obj.place_a_id, obj.place_b, obj.place_b_id
        )

    @admin.display(description="decide")
    def merge_link(self, obj: DuplicateCandidate) -> str:
        if obj.status != DuplicateStatus.OPEN:
            return obj.get_status_display()
        return format_html(
            '<a href="{}">Merge or dismiss</a>',
            reverse("admin:places_duplicatecandidate_merge", args=[obj.pk]),
        )

    @admin.display(description="reasons")
    def reason_list(self, obj: DuplicateCandidate) -> str:
        labels = dict(DuplicateReason.choices)
        return "; ".join(labels.get(r, r) for r in obj.reasons)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path(
                "<int:candidate_id>/merge/",
                wrap(self.merge_view),
                name="places_duplicatecandidate_merge",
            ),
            path(
                "<int:candidate_id>/undo/",
                wrap(self.undo_view),
                name="places_duplicatecandidate_undo",
            ),
            *super().get_urls(),
        ]

    def _candidate(self, request: HttpRequest, candidate_id: int) -> DuplicateCandidate:
        candidate = self.get_queryset(request).filter(pk=candidate_id).first()
        if candidate is None:
            raise Http404("No such pair.")
        if not self.has_merge_permission(request, candidate):
            raise PermissionDenied
        return candidate

    def merge_view(self, request: HttpRequest, candidate_id: int) -> HttpResponse:
        """The two places side by side, field by field; merge, or "not a duplicate"."""
        candidate = self._candidate(request, candidate_id)
        a = Place.objects.select_related("dataset").get(pk=candidate.place_a_id)
        b = Place.objects.select_related("dataset").get(pk=candidate.place_b_id)
        differing = [f for f in services.MERGE_FIELDS if getattr(a, f) != getattr(b, f)]
        data = request.POST if request.method == "POST" else None
        form = MergeForm(data, differing=differing)
        back = reverse("admin:places_duplicatecandidate_changelist")
        if request.method == "POST" and request.POST.get("decision") == "not_duplicate":
            try:
                services.duplicate_mark_not_duplicate(candidate=candidate, user=request.user)
            except services.DuplicateDecisionError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request, f"{a} and {b} are not a duplicate; the pair is not proposed again."
                )
                return HttpResponseRedirect(back)
        elif request.method == "POST" and form.is_valid():
            keep, gone = (a, b) if form.cleaned_data["survivor"] == "a" else (b, a)
            # The fields whose value the curator took from the place that goes.
            other = "b" if form.cleaned_data["survivor"] == "a" else "a"
            try:
                services.place_merge(
                    survivor=keep,
                    merged=gone,
                    take=form.taken_from(other),
                    user=request.user,
                    comment=form.cleaned_data["comment"],
                )
            except services.DuplicateDecisionError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"#{gone.pk} was merged into #{keep.pk}; its pages now redirect there. "
                    "The merge can be undone from the pair's page.",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(back)
        rows = [
            (field, _shown(a, field), _shown(b, field), form[f"take_{field}"])
            for field in differing
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Duplicates? {a} / {b}",
            "candidate": candidate,
            "a": a,
            "b": b,
            "rows": rows,
            "same": [f for f in services.MERGE_FIELDS if f not in differing],
            "form": form,
            "decided": candidate.status != DuplicateStatus.OPEN,
        }
        return TemplateResponse(request, "admin/places/duplicatecandidate/merge.html", context)

    def undo_view(self, request: HttpRequest, candidate_id: int) -> HttpResponse:
        candidate = self._candidate(request, candidate_id)
        page = reverse("admin:places_duplicatecandidate_change", args=[candidate.pk])
        if request.method != "POST":
            return HttpResponseRedirect(page)
        try:
            services.place_merge_undo(
                candidate=candidate, user=request.user, force=bool(request.POST.get("force"))
            )
        except (services.DuplicateDecisionError, HistoryError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(
                request, "The merge was undone: both places are as before, and the pair is open."
            )
        return HttpResponseRedirect(page)
