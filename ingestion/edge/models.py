"""Edge nodes, their keys and sensors, the parameters they measure, and the readings.

``Observation`` is a PostgreSQL table partitioned by month of ``time`` (created by migration
0008 with raw SQL: Django cannot declare partitioning). A reading's identity is its natural key
(sensor, parameter, time), the table's primary key: sent twice, it is stored once, whatever
batch carried it.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.gis.db import models
from django.contrib.postgres.fields import ArrayField
from django.db.models.functions import Now

SRID = 4326


class NodeStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SILENT = "silent", "Silent (no request for too long)"
    DISABLED = "disabled", "Disabled (its keys are refused)"


class KeyScope(models.TextChoices):
    PUSH_READINGS = "push_readings", "Push readings"
    PULL_PLACES = "pull_places", "Pull places"


class EdgeNode(models.Model):
    """A field device (an air-quality box, a survey phone) that syncs with the server."""

    name = models.CharField(max_length=100, unique=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="edge_nodes",
    )
    region = models.ForeignKey(
        "places.Region",
        on_delete=models.PROTECT,
        related_name="edge_nodes",
        help_text="The region whose places the node pulls (its change feed).",
    )
    location = models.PointField(srid=SRID, null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=NodeStatus.choices, default=NodeStatus.ACTIVE, db_index=True
    )
    software_version = models.CharField(max_length=64, blank=True)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the node last made a request: heartbeat, batch or pull (server time).",
    )
    last_reading_at = models.DateTimeField(
        null=True, blank=True, help_text="Time of the newest reading the node has sent."
    )
    batches_stored = models.BigIntegerField(
        default=0,
        db_default=0,
        editable=False,
        help_text="Batches of readings stored for the node (one more at each batch's commit, "
        "whatever order batches commit in: the sensors layer's cache follows their sum).",
    )
    queue_depth = models.BigIntegerField(
        null=True, blank=True, help_text="Readings waiting on the device (last heartbeat)."
    )
    disk_free_bytes = models.BigIntegerField(null=True, blank=True)
    clock_offset_seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="Device clock minus server clock at the last heartbeat (positive: ahead).",
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class EdgeNodeKey(models.Model):
    """An API key of one node. The secret is shown once; only its SHA-256 is kept.

    Keys look like ``edge_<prefix>_<secret>``; the prefix (unique, not secret) finds the row,
    the hash of the whole key proves it. A key of 32 random bytes needs no slow hash.
    """

    node = models.ForeignKey(EdgeNode, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100, blank=True, help_text="What the key is for.")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, help_text="SHA-256 of the whole key, hex.")
    scopes = ArrayField(
        models.CharField(max_length=16, choices=KeyScope.choices),
        default=list,
        help_text="What the key may do: push_readings, pull_places.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node", "-created_at"]

    def __str__(self) -> str:
        return f"{self.node} key {self.prefix}"


class Parameter(models.Model):
    """A measured quantity, its unit and the physically possible range of its values."""

    code = models.SlugField(max_length=32, unique=True, help_text="e.g. pm2_5, temperature.")
    name = models.CharField(max_length=100)
    unit = models.CharField(max_length=16, help_text="e.g. µg/m³, °C, %, Pa.")
    min_value = models.FloatField(help_text="Smallest physically possible value.")
    max_value = models.FloatField(help_text="Largest physically possible value.")

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.code} ({self.unit})"


class Sensor(models.Model):
    """One sensor of one node. Its id is global (like sensor.community's ``sensor_id``), so a
    node that names a sensor registered to another node is refused, not given a second one."""

    node = models.ForeignKey(EdgeNode, on_delete=models.PROTECT, related_name="sensors")
    external_id = models.CharField(
        max_length=64,
        unique=True,
        help_text="The sensor's global id, e.g. sensor.community's sensor_id.",
    )
    kind = models.CharField(max_length=32, blank=True, help_text="e.g. SDS011, BME280, DHT22.")
    location = models.PointField(srid=SRID, null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    last_reading_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["node", "external_id"]

    def __str__(self) -> str:
        return f"{self.node}/{self.external_id}"


class ObservationBatch(models.Model):
    """One accepted POST of readings, found again by its idempotency key: a replay gets the
    first answer back (``response``), a different body under the same key is refused."""

    node = models.ForeignKey(EdgeNode, on_delete=models.PROTECT, related_name="batches")
    idempotency_key = models.CharField(max_length=128)
    body_sha256 = models.CharField(max_length=64, help_text="SHA-256 of the decoded body.")
    received_at = models.DateTimeField(db_default=Now(), editable=False)
    readings = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0)
    duplicate = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    response = models.JSONField(default=dict, help_text="The answer given, replayed as is.")
    counted_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When the batch's readings were added to the reading counters (metrics).",
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "idempotency_key"], name="batch_node_idempotency_key"
            )
        ]
        indexes = [
            models.Index(fields=["node", "-received_at"], name="batch_node_received"),
            # The sweep that counts batches whose follow-up task was lost reads only these.
            models.Index(
                fields=["id"], condition=models.Q(counted_at__isnull=True), name="batch_uncounted"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.node} batch {self.idempotency_key}"


class EdgeReadingCount(models.Model):
    """Running totals of readings by outcome and reason, behind the Prometheus counters.

    Kept in the database, not in a process: every web and worker process exports the same
    totals, and they survive restarts. Each batch is added once (``ObservationBatch.counted_at``).
    """

    outcome = models.CharField(max_length=16, help_text="accepted, duplicate or rejected.")
    reason = models.CharField(
        max_length=32, blank=True, help_text="The per-item code (empty for accepted readings)."
    )
    total = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["outcome", "reason"]
        constraints = [
            models.UniqueConstraint(fields=["outcome", "reason"], name="edge_reading_count_key")
        ]

    def __str__(self) -> str:
        return f"{self.outcome}/{self.reason or '-'}: {self.total}"


class Observation(models.Model):
    """One reading. Partitioned by month of ``time`` (see migration 0008); the primary key is
    the natural key. References are not foreign-key constraints: rows arrive by ``COPY`` from
    the batch service, which has just checked them, and per-row checks would halve the rate."""

    pk = models.CompositePrimaryKey("sensor", "parameter", "time")
    sensor = models.ForeignKey(
        Sensor, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    parameter = models.ForeignKey(
        Parameter,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    time = models.DateTimeField()
    value = models.FloatField()
    batch = models.ForeignKey(
        ObservationBatch,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )

    class Meta:
        managed = True

    def __str__(self) -> str:
        return f"{self.sensor_id}/{self.parameter_id}@{self.time:%Y-%m-%dT%H:%M:%SZ}={self.value}"
