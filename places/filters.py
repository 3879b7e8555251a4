"""Validated query parameters for the places API (django-filter).

Filtering itself is done by ``places.selectors.place_list``; these classes turn query strings
into typed values and answer a bad value with HTTP 400 naming the parameter.
"""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from places import selectors
from places.geo import BBox, BBoxError, parse_bbox
from places.models import Dataset, PlaceStatus, Region, RegionLevel, Religion


class BBoxField(forms.CharField):
    def clean(self, value: Any) -> BBox | None:
        text = super().clean(value)
        if not text:
            return None
        try:
            return parse_bbox(text)
        except BBoxError as exc:
            raise forms.ValidationError(f"Invalid bbox: {exc}.", code="invalid") from exc


@extend_schema_field(OpenApiTypes.STR)
class BBoxFilter(django_filters.Filter):
    field_class = BBoxField


class PlaceFilter(django_filters.FilterSet):
    bbox = BBoxFilter(
        help_text="minLon,minLat,maxLon,maxLat in WGS84. minLon > maxLon crosses the antimeridian."
    )
    religion = django_filters.ChoiceFilter(choices=Religion.choices)
    dataset = django_filters.ModelChoiceFilter(
        queryset=Dataset.objects.all(), to_field_name="slug", help_text="Dataset slug."
    )
    country = django_filters.ModelChoiceFilter(
        queryset=Region.objects.filter(level=RegionLevel.COUNTRY).only("id", "code"),
        to_field_name="code",
        help_text="Country code (Natural Earth ADM0_A3, e.g. GBR).",
    )
    region = django_filters.ModelChoiceFilter(
        queryset=Region.objects.only("id"), help_text="Region id (most detailed region)."
    )
    status = django_filters.ChoiceFilter(choices=PlaceStatus.choices)
    q = django_filters.CharFilter(help_text="Case-insensitive substring of the name.")

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        return selectors.place_list(**{k: v for k, v in self.form.cleaned_data.items() if v})


class RegionFilter(django_filters.FilterSet):
    level = django_filters.ChoiceFilter(choices=RegionLevel.choices)
    code = django_filters.CharFilter(help_text="Exact code, e.g. E09000001 or GBR.")

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        return selectors.region_list(**{k: v for k, v in self.form.cleaned_data.items() if v})
