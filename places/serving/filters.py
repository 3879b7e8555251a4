"""Validated query parameters for the regions API (django-filter).

Filtering itself is done by ``places.selectors.region_list``; this class turns query strings
into typed values and answers a bad value with HTTP 400 naming the parameter. (The places
endpoints share ``places.serving.params.PlaceFiltersQuery`` instead: their SQL is built by hand.)
"""

from __future__ import annotations

import django_filters
from django.db.models import QuerySet

from places import selectors
from places.models import RegionLevel


class RegionFilter(django_filters.FilterSet):
    level = django_filters.ChoiceFilter(choices=RegionLevel.choices)
    code = django_filters.CharFilter(help_text="Exact code, e.g. E09000001 or GBR.")

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        return selectors.region_list(**{k: v for k, v in self.form.cleaned_data.items() if v})
