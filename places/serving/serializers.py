"""API representations of places, regions and datasets (the detail and catalogue views).

Lists of places are not serialised here: PostgreSQL writes them (``places.serving.features``).
"""

from __future__ import annotations

from rest_framework import serializers
from rest_framework_gis.serializers import GeoFeatureModelSerializer

from places.models import Dataset, Place, Region
from places.serving.fields import PROPERTIES


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "slug",
            "name",
            "source_url",
            "licence",
            "attribution",
            "snapshot_date",
            "notes",
            "created_at",
            "updated_at",
        ]


class RegionSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = Region
        fields = ("id", "name", "level", "code", "code_system")


# A tuple, and each Meta takes its own list: rest_framework_gis appends the geometry field to
# a GeoFeatureModelSerializer's ``Meta.fields`` in place (``+=``), so a shared list would give
# every region list its boundaries once any detail or the schema had been built.
REGION_FIELDS = (
    "id",
    "name",
    "level",
    "code",
    "code_system",
    "extra_codes",
    "parent",
    "population",
    "area_km2",
)


class RegionSerializer(serializers.ModelSerializer):
    parent = RegionSummarySerializer(read_only=True, allow_null=True)

    class Meta:
        model = Region
        fields = list(REGION_FIELDS)


class RegionGeoSerializer(GeoFeatureModelSerializer):
    parent = RegionSummarySerializer(read_only=True, allow_null=True)

    class Meta:
        model = Region
        geo_field = "geom"
        fields = list(REGION_FIELDS)


class PlaceDetailSerializer(GeoFeatureModelSerializer):
    """One place as a GeoJSON Feature: its representative point, every listed property, and
    what only the detail shows (footprint, merge target, creation time)."""

    dataset: serializers.SlugRelatedField[Dataset] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    country = RegionSummarySerializer(read_only=True, allow_null=True)
    region = RegionSummarySerializer(read_only=True, allow_null=True)
    superseded_by = serializers.IntegerField(
        source="merged_into_id",
        read_only=True,
        allow_null=True,
        help_text="For a merged place, the place it was merged into (its URL answers a 301 "
        "there); null otherwise.",
    )

    class Meta:
        model = Place
        geo_field = "location"
        id_field = "id"
        # Every listed property (places.serving.fields), then what only the detail shows.
        fields = ["id", *PROPERTIES, "footprint", "merged_into", "superseded_by", "created_at"]
