"""The gazetteer: datasets, places, regions, dated attributes and the one change log.

Invariants live in database constraints (unique natural keys, checks) because set-based
imports write these tables with SQL, not through ``save()``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.gis.db import models
from django.contrib.gis.db.models.functions import IsValid
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex, GistIndex, OpClass
from django.core.validators import URLValidator
from django.db.models import F, Func, Q
from django.db.models.functions import Now, Upper

SRID = 4326


class Religion(models.TextChoices):
    """Controlled vocabulary, aligned with OpenStreetMap's ``religion=*`` values."""

    BAHAI = "bahai", "Bahá’í"
    BUDDHIST = "buddhist", "Buddhist"
    CHRISTIAN = "christian", "Christian"
    HINDU = "hindu", "Hindu"
    JAIN = "jain", "Jain"
    JEWISH = "jewish", "Jewish"
    MUSLIM = "muslim", "Muslim"
    SHINTO = "shinto", "Shinto"
    SIKH = "sikh", "Sikh"
    TAOIST = "taoist", "Taoist"
    ZOROASTRIAN = "zoroastrian", "Zoroastrian"
    MULTIFAITH = "multifaith", "Multifaith"
    OTHER = "other", "Other"
    UNKNOWN = "unknown", "Unknown"


class SyncEvery(models.TextChoices):
    """How often beat fetches a dataset's ``sync_url`` (``ingestion.services.sync``)."""

    OFF = "off", "Off"
    HOURLY = "hourly", "Every hour"
    DAILY = "daily", "Every day"
    WEEKLY = "weekly", "Every week"


class Dataset(models.Model):
    """A source of records: an OSM extract, a national register, a boundary file."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    source_url = models.URLField(max_length=500, blank=True)
    sync_url = models.URLField(
        max_length=500,
        blank=True,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="A file (any format an upload takes) fetched on the schedule below and "
        "imported in snapshot mode when it changed: places missing from it are retired.",
    )
    sync_every = models.CharField(
        max_length=8,
        choices=SyncEvery.choices,
        default=SyncEvery.OFF,
        help_text="How often the sync URL is checked (a conditional GET: an unchanged file "
        "is not downloaded again).",
    )
    sync_etag = models.CharField(
        max_length=255, blank=True, editable=False, help_text="ETag of the last fetch."
    )
    sync_last_modified = models.CharField(
        max_length=64, blank=True, editable=False, help_text="Last-Modified of the last fetch."
    )
    sync_checked_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the sync URL was last checked."
    )
    sync_result = models.TextField(
        blank=True,
        editable=False,
        help_text="What the last check did: unchanged, the job it queued, or the error.",
    )
    licence = models.CharField(max_length=200, blank=True, help_text="e.g. ODbL 1.0, OGL v3.0")
    attribution = models.TextField(blank=True, help_text="Text to show wherever the data is shown.")
    snapshot_date = models.DateField(
        null=True, blank=True, help_text="Date of the source snapshot the records reflect."
    )
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["slug"]
        permissions = [("sync_dataset", "Can fetch a dataset's sync URL now and import it")]
        constraints = [
            models.CheckConstraint(
                condition=Q(sync_every="off") | ~Q(sync_url=""),
                name="dataset_sync_needs_url",
                violation_error_message="A sync schedule needs a sync URL.",
            )
        ]

    def __str__(self) -> str:
        return self.name


class RegionLevel(models.TextChoices):
    COUNTRY = "country", "Country"
    ADMIN1 = "admin1", "First-level subdivision"
    DISTRICT = "district", "District"
    OTHER = "other", "Other"


class Region(models.Model):
    """A named boundary. Codes are text so that leading zeros survive (``001``)."""

    name = models.CharField(max_length=200)
    level = models.CharField(max_length=16, choices=RegionLevel.choices)
    code = models.CharField(max_length=64, help_text="Code in its code system, kept as text.")
    code_system = models.CharField(
        max_length=32,
        help_text="Which scheme the code belongs to: ne-adm0-a3, iso3166-2, gss (ONS) …",
    )
    extra_codes = models.JSONField(
        default=dict, blank=True, help_text="Other codes for the same area, e.g. ISO alpha-2."
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    population = models.BigIntegerField(null=True, blank=True)
    area_km2 = models.FloatField(null=True, blank=True, help_text="Geodesic area in km².")
    geom = models.MultiPolygonField(srid=SRID)
    dataset = models.ForeignKey(
        Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="regions"
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        ordering = ["level", "name"]
        constraints = [
            models.UniqueConstraint(fields=["code_system", "code"], name="region_code_unique"),
            models.CheckConstraint(condition=IsValid("geom"), name="region_geom_valid"),
        ]
        indexes = [models.Index(fields=["level", "name"], name="region_level_name")]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class RegionPart(models.Model):
    """A region cut into small pieces (``ST_Subdivide``) so point-in-polygon stays fast.

    A GiST lookup on a country's full outline tests thousands of vertices per point; on
    pieces of at most 64 vertices it tests only those near the point.
    """

    region = models.ForeignKey(Region, on_delete=models.CASCADE, related_name="parts")
    level = models.CharField(max_length=16, choices=RegionLevel.choices)
    geom = models.GeometryField(srid=SRID)

    # No B-tree on ``level``: the planner would AND it with the GiST index and read every
    # piece of that level per point (measured 2.9x slower on the GB sample).


class PlaceStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"
    MERGED = "merged", "Merged"


class Place(models.Model):
    """One place from one dataset, known there by ``source_key`` (e.g. ``osm:way/123``)."""

    # No index of its own: place_source_key_unique (dataset, source_key) leads with it.
    # Dataset, country and region are checked per statement by triggers, not by foreign-key
    # constraints (migration 0014): a constraint checks each imported row on its own.
    dataset = models.ForeignKey(
        Dataset,
        on_delete=models.PROTECT,
        related_name="places",
        db_index=False,
        db_constraint=False,
    )
    source_key = models.CharField(
        max_length=255, help_text="The record's key in its dataset, e.g. osm:node/42."
    )
    name = models.TextField(blank=True, help_text="Empty when the source has no name.")
    religion = models.CharField(max_length=16, choices=Religion.choices, default=Religion.UNKNOWN)
    religion_raw = models.TextField(blank=True, help_text="The value as the source wrote it.")
    denominations = ArrayField(
        models.TextField(),
        default=list,
        blank=True,
        help_text="Normalised denominations (lowercase, underscores); several are allowed.",
    )
    denomination_raw = models.TextField(blank=True)
    location = models.PointField(srid=SRID, help_text="Representative point (WGS84).")
    # Indexed in Meta, only where there is one: most places are points without a footprint.
    footprint = models.MultiPolygonField(srid=SRID, null=True, blank=True, spatial_index=False)
    country = models.ForeignKey(
        Region,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        limit_choices_to={"level": RegionLevel.COUNTRY},
        db_constraint=False,
    )
    region = models.ForeignKey(
        Region,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="places",
        help_text="The most detailed region that contains the place (e.g. its district).",
        db_constraint=False,
    )
    tags = models.JSONField(default=dict, blank=True, help_text="Free tags from the source.")
    start_date = models.DateField(null=True, blank=True)
    start_date_raw = models.TextField(blank=True, help_text="As written, e.g. “early 1960's”.")
    end_date = models.DateField(null=True, blank=True)
    end_date_raw = models.TextField(blank=True)
    status = models.CharField(max_length=8, choices=PlaceStatus.choices, default=PlaceStatus.ACTIVE)
    merged_into = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="merged_from",
        db_index=False,  # partial index in Meta: only merged places have one
    )
    # What the dataset last delivered is in PlaceSource, a table of its own (issue 14); the
    # place keeps 8 bytes of it, so that a re-import's first question for every row (is this
    # file row the one the place was made from?) reads the place's key and nothing else.
    source_fingerprint = models.BigIntegerField(
        null=True,
        blank=True,
        editable=False,
        help_text="64-bit hash (hashtextextended) of the fingerprint of the file row the place "
        "was last imported from, with the regions' version; empty for curator-made places.",
    )
    created_at = models.DateTimeField(db_default=Now(), editable=False)
    updated_at = models.DateTimeField(db_default=Now(), editable=False)
    version = models.PositiveIntegerField(
        db_default=1, editable=False, help_text="Goes up by one with every recorded change."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "source_key"], name="place_source_key_unique"
            ),
            models.CheckConstraint(
                condition=Q(status__in=PlaceStatus.values), name="place_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(merged_into__isnull=True) | Q(status=PlaceStatus.MERGED),
                name="place_merged_into_only_when_merged",
            ),
            models.CheckConstraint(
                condition=Q(start_date__isnull=True)
                | Q(end_date__isnull=True)
                | Q(end_date__gte=F("start_date")),
                name="place_dates_ordered",
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="place_version_positive"),
        ]
        # Every index is paid for by every import's inserts (migration 0012 dropped those that
        # duplicated others and made near-empty ones partial); country and region keep their
        # FK indexes.
        indexes = [
            # Plain B-trees: Django's db_index on a CharField adds a second, LIKE-only index.
            models.Index(fields=["religion"], name="place_religion"),
            # Nearly every place is active: only the others are worth an index entry.
            models.Index(
                fields=["status"], name="place_inactive", condition=~Q(status=PlaceStatus.ACTIVE)
            ),
            models.Index(
                fields=["merged_into"],
                name="place_merged_into",
                condition=Q(merged_into__isnull=False),
            ),
            GistIndex(
                fields=["footprint"], name="place_footprint", condition=Q(footprint__isnull=False)
            ),
            models.Index(fields=["updated_at"], name="place_updated_at"),
            # Curators look places up by their OSM id across datasets.
            models.Index(fields=["source_key"], name="place_source_key"),
            # Read by the API's `q` before it took the admin's name search (which has its own
            # trigram index, place_name_unaccent_trgm); no code reads it now. It goes in the
            # release after the first tagged release (v*) that stopped reading it, as the
            # rule for migrations asks (k8s/README.md): running code may still read it while
            # a release rolls out or back. Dropping it made a first import 10 % faster
            # (README, Benchmarks).
            GinIndex(OpClass(Upper("name"), name="gin_trgm_ops"), name="place_name_trgm"),
        ]

    def __str__(self) -> str:
        return self.name or f"(unnamed {self.source_key})"


class PlaceSource(models.Model):
    """Field values as the place's dataset last delivered them, for the next import's diff.

    An import changes only fields whose source value moved, so a curator's fix survives
    re-imports. Kept apart from ``Place`` because only imports read it: inline, it was two
    thirds of every place row, and the map, the tiles and the lists read place rows by the
    hundred thousand (migration 0025 measured the effect). The row fingerprint of the file
    row rides under ``_fingerprint``. Places a curator created have none.
    """

    # No database constraint: an import writes a place and its source values in one
    # statement, and a constraint would check each row on its own at commit (as for the
    # place's own references, migration 0014). Django deletes the row with its place.
    place = models.OneToOneField(
        Place,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="source",
        db_constraint=False,
    )
    source_values = models.JSONField(
        help_text="Field values as the dataset last delivered them (``_fingerprint``: the "
        "file row's fingerprint)."
    )

    def __str__(self) -> str:
        return f"source values of place {self.place_id}"


class PlaceAttribute(models.Model):
    """A dated fact about a place (attendance, census figure …).

    The table is declaratively partitioned by ``observed_on`` (see migration 0002); its real
    primary key is ``(id, observed_on)``, as PostgreSQL requires, and ``id`` alone is unique
    because it comes from one sequence.
    """

    id = models.BigAutoField(primary_key=True)
    place = models.ForeignKey(Place, on_delete=models.CASCADE, related_name="attributes")
    key = models.CharField(max_length=64, help_text="What is measured, e.g. attendance.")
    value_num = models.FloatField(null=True, blank=True)
    value_text = models.TextField(blank=True)
    unit = models.CharField(max_length=32, blank=True)
    observed_on = models.DateField(help_text="The date the fact refers to.")
    source = models.CharField(max_length=200, blank=True)
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(db_default=Now(), editable=False)

    class Meta:
        indexes = [models.Index(fields=["place", "key", "observed_on"], name="attr_place_key")]

    def __str__(self) -> str:
        value = self.value_num if self.value_num is not None else self.value_text
        return f"{self.key}={value} on {self.observed_on}"


class ChangeOperation(models.TextChoices):
    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    RETIRE = "retire", "Retire"
    MERGE = "merge", "Merge"
    # Undo by a curator: of one change (only the fields it touched), or of every change after
    # an earlier version. They are changes of their own, so history only ever grows.
    REVERT = "revert", "Revert"
    RESTORE = "restore", "Restore"


class ChangeSource(models.TextChoices):
    USER = "user", "User"
    IMPORT = "import", "Import"
    DEVICE = "device", "Edge device"
    SYSTEM = "system", "System"


class TxidCurrent(Func):
    function = "txid_current"
    template = "%(function)s()"
    output_field = models.BigIntegerField()


class PlaceChange(models.Model):
    """The one append-only change log of places (UPDATE and DELETE are refused by a trigger).

    ``seq`` is a monotonic sequence. Sequence values are taken before commit, so a reader that
    follows ``seq`` alone could skip a row committed late; change feeds therefore page by
    ``(xact_id, seq)`` and only hand out rows older than every open transaction
    (see ``places.selectors.place_change_feed``).
    """

    seq = models.BigAutoField(primary_key=True)
    # The log's references are checked by Django (PROTECT), not by foreign-key triggers: it is
    # history that must outlive what it names, it is written only by our own statements with
    # ids they just read or wrote, and the per-row checks were a fifth of a large import's
    # time. Their indexes are the composite ones in Meta.
    place = models.ForeignKey(
        Place,
        on_delete=models.PROTECT,
        related_name="changes",
        db_constraint=False,
        db_index=False,
    )
    dataset = models.ForeignKey(
        Dataset, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    operation = models.CharField(max_length=8, choices=ChangeOperation.choices)
    changes = models.JSONField(
        default=dict, help_text='Changed fields: {"field": {"old": …, "new": …}}.'
    )
    place_version = models.PositiveIntegerField(help_text="The place's version after this change.")
    source = models.CharField(max_length=8, choices=ChangeSource.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,  # partial index in Meta: imports and devices log without a user
    )
    # An id, not a relation: ingestion builds on places, and a relation back from places
    # would make each app's migrations depend on the other's. Jobs are never deleted.
    import_job_id = models.BigIntegerField(
        null=True,
        blank=True,
        db_index=True,
        help_text="The ingestion.ImportJob that wrote this change, for imports.",
    )
    device_id = models.CharField(max_length=100, blank=True)
    comment = models.TextField(blank=True)
    # What a revert undid, or for a restore the change that made the version gone back to.
    # An id checked by Django, like the log's other references (see ``place``).
    reverts = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reverted_by",
        db_constraint=False,
        db_index=False,
        help_text="For a revert, the change it undid; for a restore, the change that made "
        "the version the place went back to.",
    )
    at = models.DateTimeField(db_default=Now(), db_index=True)
    xact_id = models.BigIntegerField(db_default=TxidCurrent(), editable=False)

    class Meta:
        ordering = ["seq"]
        indexes = [
            models.Index(fields=["place", "seq"], name="change_place_seq"),
            models.Index(fields=["dataset", "seq"], name="change_dataset_seq"),
            models.Index(fields=["xact_id", "seq"], name="change_feed"),
            models.Index(fields=["user"], name="change_user", condition=Q(user__isnull=False)),
            # "Reverted by #n" on a history page; only reverts and restores have one.
            models.Index(
                fields=["reverts"], name="change_reverts", condition=Q(reverts__isnull=False)
            ),
            # The audit view's rare operations and people's changes, newest first. Partial, so
            # an import's creates and updates (nearly every row) pay nothing for them.
            models.Index(
                fields=["seq"],
                name="change_rare_operations",
                condition=~Q(operation__in=["create", "update"]),
            ),
            models.Index(
                fields=["seq"], name="change_by_people", condition=Q(source__in=["user", "device"])
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.operation} place {self.place_id}"


class DataVersion(models.Model):
    """A per-dataset counter that moves with every committed write to the change log.

    Maintained by triggers on ``PlaceChange`` (listed in ``places.dbobjects``), so no write
    path that logs can forget it. It moves at commit (a deferred trigger), holding the row only
    for an instant, and every commit yields a new value from one sequence: caches and ETags
    keyed on it never serve data older than the last commit a web process has been told of
    (the commit notifies; ``places.version_watch``).
    """

    dataset = models.OneToOneField(
        Dataset, primary_key=True, on_delete=models.CASCADE, related_name="data_version"
    )
    version = models.BigIntegerField()
    changed_at = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"{self.dataset_id}@{self.version}"


AREA_CELL_DEGREES = 1.40625  # 360 / 256; SQL function places_area_cell (places.dbobjects)


class AreaVersion(models.Model):
    """The data version of one dataset's places inside one cell of a 256 × 128 world grid.

    Moved at commit by the change-log triggers (``places.dbobjects``) for the cells a transaction
    touched, from the same sequence as ``DataVersion``: a map view or tile keyed on the
    versions of its cells stays cached through edits elsewhere.
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    cell = models.IntegerField(help_text="row × 256 + column of a 1.40625° cell")
    version = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "cell"], name="areaversion_dataset_cell")
        ]
        # Every cached map view and tile of all datasets reads its cells' versions by cell
        # (``places.selectors.data_version``); without it that read scanned the table.
        indexes = [models.Index(fields=["cell"], name="areaversion_cell")]

    def __str__(self) -> str:
        return f"{self.dataset_id}/{self.cell}@{self.version}"


# Roles and the security audit trail have a module of their own (places.access reads them).
from places.models_access import (  # noqa: E402
    DatasetRole as DatasetRole,
)
from places.models_access import (  # noqa: E402
    Role as Role,
)
from places.models_access import (  # noqa: E402
    SecurityEvent as SecurityEvent,
)
from places.models_access import (  # noqa: E402
    SecurityEventKind as SecurityEventKind,
)
from places.models_curation import (  # noqa: E402
    ApiToken as ApiToken,
)
from places.models_curation import (  # noqa: E402
    PlaceFlag as PlaceFlag,
)
from places.models_curation import (  # noqa: E402
    PlaceProposal as PlaceProposal,
)
from places.models_curation import (  # noqa: E402
    ProposalStatus as ProposalStatus,
)
from places.models_curation import (  # noqa: E402
    QualityFlag as QualityFlag,
)
from places.models_curation import (  # noqa: E402
    QualityRefresh as QualityRefresh,
)
from places.models_duplicates import (  # noqa: E402
    DuplicateCandidate as DuplicateCandidate,
)
from places.models_duplicates import (  # noqa: E402
    DuplicateReason as DuplicateReason,
)
from places.models_duplicates import (  # noqa: E402
    DuplicateStatus as DuplicateStatus,
)
