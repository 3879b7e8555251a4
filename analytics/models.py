"""Stored analytics results: region summaries and sensor rollups.

Everything here is computed by ``analytics.services`` from a read source (the replica when
there is one, see ``analytics.replica``) and written on the primary, each row with where it
was computed (``computed_on``), the data and region versions as read there, and when. The API
reads these rows; it never recomputes.
"""

from __future__ import annotations

from django.contrib.gis.db import models
from django.db.models import Q
from django.db.models.functions import Now


class ComputedOn(models.TextChoices):
    REPLICA = "replica", "Replica"
    PRIMARY = "primary", "Primary"


class Interval(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"


class Provenance(models.Model):
    """Where and as of which versions a row was computed."""

    computed_on = models.CharField(max_length=8, choices=ComputedOn.choices)
    data_version = models.CharField(max_length=32)
    region_version = models.CharField(max_length=32)
    computed_at = models.DateTimeField(db_default=Now())

    class Meta:
        abstract = True


class RegionSummary(Provenance):
    """The figures of one region (country, first-level region or district) over its active
    places. ``version_key`` is the region's own data version (see
    ``analytics.services.summaries.REGION_KEYS``): the summary is recomputed only when it moved.
    """

    region = models.OneToOneField(
        "places.Region", on_delete=models.CASCADE, primary_key=True, related_name="summary"
    )
    level = models.CharField(max_length=16)
    code = models.CharField(max_length=64)
    name = models.CharField(max_length=200)
    population = models.BigIntegerField(null=True)
    area_km2 = models.FloatField(null=True)
    places = models.IntegerField()
    by_religion = models.JSONField(default=dict, help_text="{religion: places}")
    by_denomination = models.JSONField(default=dict, help_text="{denomination: places}")
    shannon = models.FloatField(null=True, help_text="Over known religions (natural log).")
    simpson = models.FloatField(null=True, help_text="1 − Σp² over known religions.")
    per_1000_km2 = models.FloatField(null=True)
    per_100k_people = models.FloatField(null=True)
    dated_places = models.IntegerField(default=0)
    founding_decades = models.JSONField(default=dict, help_text="{decade: places founded}")
    unnamed = models.IntegerField(default=0)
    unknown_religion = models.IntegerField(default=0)
    outside_region = models.IntegerField(default=0)
    duplicate_coordinates = models.IntegerField(default=0)
    version_key = models.CharField(max_length=32)

    class Meta:
        indexes = [models.Index(fields=["level", "code"], name="summary_level_code")]

    def __str__(self) -> str:
        return f"{self.name} ({self.code}): {self.places}"


class SensorRollup(Provenance):
    """One sensor's readings of one parameter in one hour or day (``bucket`` is its start,
    UTC). ``expected`` is the bucket's length over the sensor's typical interval (the median
    gap between its consecutive readings of the parameter in the window rolled up)."""

    sensor = models.ForeignKey("ingestion.Sensor", on_delete=models.CASCADE, related_name="+")
    parameter = models.ForeignKey("ingestion.Parameter", on_delete=models.CASCADE, related_name="+")
    interval = models.CharField(max_length=4, choices=Interval.choices)
    bucket = models.DateTimeField()
    count = models.IntegerField()
    min = models.FloatField()
    max = models.FloatField()
    mean = models.FloatField()
    median = models.FloatField()
    p98 = models.FloatField()
    expected = models.IntegerField(null=True)
    coverage = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["sensor", "parameter", "interval", "bucket"], name="rollup_key"
            )
        ]
        indexes = [models.Index(fields=["parameter", "interval", "bucket"], name="rollup_bucket")]


class RegionSensorRollup(Provenance):
    """Mean of the sensor means of one parameter over the sensors inside a region, per hour
    or day: each sensor weighs the same, however often it reports."""

    region = models.ForeignKey("places.Region", on_delete=models.CASCADE, related_name="+")
    parameter = models.ForeignKey("ingestion.Parameter", on_delete=models.CASCADE, related_name="+")
    interval = models.CharField(max_length=4, choices=Interval.choices)
    bucket = models.DateTimeField()
    mean = models.FloatField()
    sensors = models.IntegerField()
    readings = models.IntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["region", "parameter", "interval", "bucket"], name="region_rollup_key"
            )
        ]


class PlaceNearestSensor(Provenance):
    """For a place with a PM2.5 sensor within ``ANALYTICS_SENSOR_RADIUS_M``: the nearest one,
    and that sensor's latest daily PM2.5 mean (null when it has no daily PM2.5 yet)."""

    place = models.OneToOneField(
        "places.Place",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="+",
        db_constraint=False,
    )
    sensor = models.ForeignKey("ingestion.Sensor", on_delete=models.CASCADE, related_name="+")
    distance_m = models.FloatField()
    pm2_5_day = models.DateField(null=True)
    pm2_5 = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(distance_m__gte=0), name="nearest_distance_ok")
        ]


class ResultsVersion(models.Model):
    """One row: a counter moved in the same transaction as every write of results, which
    keys the API's cache and ETags (a read of stored results can never be older than it)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(db_default=Now())

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="results_version_single")]


# Download jobs live in their own module (analytics.downloads); Django finds models here.
from analytics.models_downloads import DownloadJob  # noqa: E402, F401
