"""Downloads for researchers: a selection of places as GeoParquet or CSV.

==========  ==================================================================================
format      what the file holds
==========  ==================================================================================
parquet     GeoParquet 1.1.0: ``geometry`` (the place's point, WKB) with a ``bbox`` struct
            column declared as its covering, ``footprint`` (WKB MultiPolygon, null where
            none), the place fields typed, and in the key-value metadata ``geo`` plus
            ``places:datasets`` (licence and attribution of each dataset in the file)
csv         the places list's CSV columns (``id``, ``lon``, ``lat``, every field, cells made
            spreadsheet-safe by the one rule of ``places.csv_cells``), then ``footprint_wkt``
==========  ==================================================================================

A selection is the places list's filters (``places.serving.query.PlaceQuery``). Small ones
(at most ``DOWNLOADS_SYNC_MAX_PLACES``) are written in the request; bigger ones by a Celery
task (``download_job_build``) reading the replica, into a file under ``MEDIA_ROOT`` named by
the job. A job is named by the selection, the format and the data and region versions of
the selection (see ``analytics.models_downloads``): while they hold, everyone asking gets
the same file; a changed place names a new job, and ``downloads_clean`` removes the files of
versions that have passed.

The rows are written by PostgreSQL (``ST_AsBinary``, ``ST_AsText``, the CSV cells) and read
through a server-side cursor ``DOWNLOADS_CHUNK_ROWS`` at a time; each chunk becomes one
Parquet row group (or a run of CSV lines), so a worker holds one chunk whatever the size of
the selection. Everything the file says (the count, the extents, the datasets, the rows, the
versions checked) is read in one REPEATABLE READ snapshot, so they agree.

CRS: the ``geo`` metadata leaves ``crs`` out, which the specification defines as OGC:CRS84,
that is WGS 84 with longitude first. That is exactly what is stored (SRID 4326 in PostGIS,
x = longitude) and written. Writing EPSG:4326's PROJJSON instead would declare latitude
first, which readers that honour the axis order would then swap.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.core.cache import cache
from django.db import connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from analytics.models_downloads import DownloadFormat, DownloadJob, DownloadStatus
from analytics.replica import read_source
from places import selectors as places_selectors
from places.geo import BBox
from places.serving.fields import FIELDS, PROPERTIES, csv_header
from places.serving.query import PlaceQuery

logger = logging.getLogger(__name__)

GEOPARQUET_VERSION = "1.1.0"
MEDIA_TYPES: dict[str, str] = {
    DownloadFormat.PARQUET: "application/vnd.apache.parquet",
    DownloadFormat.CSV: "text/csv; charset=utf-8",
}
EXTENSIONS: dict[str, str] = {DownloadFormat.PARQUET: "parquet", DownloadFormat.CSV: "csv"}
FOLDER = "downloads"
MAX_ATTEMPTS = 3

# One statement joins what the file shows; regions are read from the table (few, cached).
FROM = """
FROM places_place p
JOIN places_dataset d ON d.id = p.dataset_id
LEFT JOIN places_region c ON c.id = p.country_id
LEFT JOIN places_region r ON r.id = p.region_id
"""

# (column, SQL, Arrow type): the Parquet columns in order, before the geometries.
PARQUET_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("id", "p.id", pa.int64()),
    ("name", "p.name", pa.string()),
    ("religion", "p.religion", pa.string()),
    ("religion_raw", "p.religion_raw", pa.string()),
    ("denominations", "p.denominations", pa.list_(pa.string())),
    ("denomination_raw", "p.denomination_raw", pa.string()),
    ("dataset", "d.slug", pa.string()),
    ("source_key", "p.source_key", pa.string()),
    ("country_code", "c.code", pa.string()),
    ("country_name", "c.name", pa.string()),
    ("region_id", "r.id", pa.int64()),
    ("region_code", "r.code", pa.string()),
    ("region_name", "r.name", pa.string()),
    ("status", "p.status", pa.string()),
    ("start_date", "p.start_date", pa.date32()),
    ("start_date_raw", "p.start_date_raw", pa.string()),
    ("end_date", "p.end_date", pa.date32()),
    ("end_date_raw", "p.end_date_raw", pa.string()),
    # JSON text: every reader can parse it, where Parquet's JSON type is not read by all.
    ("tags", "p.tags::text", pa.string()),
    ("version", "p.version", pa.int64()),
    ("updated_at", "p.updated_at", pa.timestamp("us", tz="UTC")),
)
BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)
PARQUET_SCHEMA = pa.schema(
    [
        *[pa.field(name, kind) for name, _, kind in PARQUET_COLUMNS],
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("bbox", BBOX_TYPE, nullable=False),
        pa.field("footprint", pa.binary()),
    ]
)
# The point's WKB and its coordinates (a point's box is the point itself), then the footprint.
PARQUET_SQL = (
    "SELECT "
    + ", ".join(sql for _, sql, _ in PARQUET_COLUMNS)
    + ", ST_AsBinary(p.location), ST_X(p.location), ST_Y(p.location), ST_AsBinary(p.footprint)"
    + FROM
    + "WHERE {where} ORDER BY p.id"
)
CSV_HEADER = [*csv_header(list(PROPERTIES)), "footprint_wkt"]
# The list's CSV line (``places.serving.fields``: the same cells, quoting and spreadsheet
# rule), plus the footprint. WKT has no formula characters to guard and no quotes inside.
CSV_SQL = (
    "SELECT concat_ws(',', p.id::text, "
    "round(ST_X(p.location)::numeric, 7)::text, round(ST_Y(p.location)::numeric, 7)::text, "
    + ", ".join(expr for name in PROPERTIES for _, expr in FIELDS[name].csv)
    + ", coalesce('\"' || ST_AsText(p.footprint) || '\"', ''))"
    + FROM
    + "WHERE {where} ORDER BY p.id"
)
SELECTION_FACTS = """
SELECT count(*),
       ST_XMin(ST_Extent(p.location)), ST_YMin(ST_Extent(p.location)),
       ST_XMax(ST_Extent(p.location)), ST_YMax(ST_Extent(p.location)),
       ST_XMin(ST_Extent(p.footprint)), ST_YMin(ST_Extent(p.footprint)),
       ST_XMax(ST_Extent(p.footprint)), ST_YMax(ST_Extent(p.footprint)),
       coalesce(array_agg(DISTINCT p.dataset_id), '{}')
FROM places_place p WHERE {where}
"""
DATASETS = """
SELECT slug, name, licence, attribution, source_url
FROM places_dataset WHERE id = ANY(%(ids)s) ORDER BY slug
"""


def _where(sql: str, where: str) -> str:
    # Not str.format: the CSV cells hold braces of their own (``#>> '{}'``).
    return sql.replace("{where}", where)


# --- Selections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """A ``PlaceQuery`` in JSON primitives, so a task can take it and a job can store it."""

    query: PlaceQuery

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for f in fields(self.query):
            value = getattr(self.query, f.name)
            if isinstance(value, BBox):
                value = [value.min_lon, value.min_lat, value.max_lon, value.max_lat]
            elif isinstance(value, datetime):
                value = value.isoformat()
            found[f.name] = value
        return found

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        values = dict(data)
        if values.get("bbox") is not None:
            values["bbox"] = BBox(*values["bbox"])
        if values.get("updated_since") is not None:
            values["updated_since"] = datetime.fromisoformat(values["updated_since"])
        return cls(query=PlaceQuery(**values))

    def key(self) -> str:
        """Names the selection in the job's natural key (``PlaceQuery.key``: its filters)."""
        return self.query.key()


def selection_versions(*, query: PlaceQuery, using: str) -> tuple[str, str]:
    """The data and region versions a file of ``query`` shows, as ``using`` sees them: the
    places of its dataset (all when none) inside its box, and every region (each row names
    its country and region)."""
    data = places_selectors.data_version(
        dataset_ids=[query.dataset_id] if query.dataset_id is not None else None,
        bbox=query.bbox,
        using=using,
    )
    return data, places_selectors.region_version(using=using)


def selection_count_capped(*, query: PlaceQuery, cap: int, using: str = "default") -> int:
    """How many places ``query`` matches, counted up to ``cap + 1`` at most: enough to tell
    a selection that is written at once from one that needs a task, at the cost of ``cap``
    rows, never of the whole selection."""
    where, params = query.where()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM places_place p WHERE {where} "
            "LIMIT %(cap_plus_one)s) AS capped",
            {**params, "cap_plus_one": cap + 1},
        )
        return int(cursor.fetchone()[0])


@dataclass(frozen=True)
class SelectionFacts:
    rows: int
    bbox: list[float] | None  # of the points; None when the selection is empty
    footprint_bbox: list[float] | None  # None when no place in it has a footprint
    datasets: list[dict[str, str]]  # slug, name, licence, attribution, source_url


def selection_facts(*, query: PlaceQuery, using: str) -> SelectionFacts:
    """What the file says about itself, in one pass over the selection: its size, the
    extents of its two geometry columns and the datasets it draws on."""
    where, params = query.where()
    with connections[using].cursor() as cursor:
        cursor.execute(_where(SELECTION_FACTS, where), params)
        rows, *extents, dataset_ids = cursor.fetchone()
        cursor.execute(DATASETS, {"ids": list(dataset_ids)})
        names = ("slug", "name", "licence", "attribution", "source_url")
        datasets = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    points, footprints = extents[:4], extents[4:]
    return SelectionFacts(
        rows=int(rows),
        bbox=[float(v) for v in points] if points[0] is not None else None,
        footprint_bbox=[float(v) for v in footprints] if footprints[0] is not None else None,
        datasets=datasets,
    )


@contextmanager
def read_snapshot(using: str) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction on ``using``, so the versions, the facts and
    every row are read as of one moment. Inside a transaction already open (a test's) that
    one is used as it is."""
    connection = connections[using]
    opened = not connection.in_atomic_block
    with transaction.atomic(using=using):
        if opened:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


# --- Writers ---------------------------------------------------------------------------------


def geo_metadata(facts: SelectionFacts) -> dict[str, Any]:
    """The ``geo`` key of GeoParquet 1.1.0 (``crs`` left out: OGC:CRS84, see the module
    docstring). The file-level boxes are the selection's extents; the covering tells readers
    that the ``bbox`` struct column holds each row's box of ``geometry``."""
    geometry: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Point"],
        "covering": {
            "bbox": {
                "xmin": ["bbox", "xmin"],
                "ymin": ["bbox", "ymin"],
                "xmax": ["bbox", "xmax"],
                "ymax": ["bbox", "ymax"],
            }
        },
    }
    footprint: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["MultiPolygon"]}
    if facts.bbox is not None:
        geometry["bbox"] = facts.bbox
    if facts.footprint_bbox is not None:
        footprint["bbox"] = facts.footprint_bbox
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": geometry, "footprint": footprint},
    }


def file_metadata(
    *, facts: SelectionFacts, selection: Selection, versions: tuple[str, str]
) -> dict[bytes, bytes]:
    """The Parquet key-value metadata: ``geo``, and what a researcher must cite and can
    reproduce (datasets with licence and attribution, the filters, the versions)."""
    return {
        b"geo": json.dumps(geo_metadata(facts)).encode(),
        b"places:datasets": json.dumps(facts.datasets).encode(),
        b"places:selection": json.dumps(selection.to_json()).encode(),
        b"places:data_version": versions[0].encode(),
        b"places:region_version": versions[1].encode(),
    }


def _fetch_chunks(*, sql: str, params: dict[str, Any], using: str) -> Iterator[list[tuple]]:
    # A server-side cursor: PostgreSQL keeps the result and hands over one chunk per fetch.
    with connections[using].chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(settings.DOWNLOADS_CHUNK_ROWS):
            yield rows


def _parquet_batch(rows: list[tuple]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True))
    width = len(PARQUET_COLUMNS)
    arrays = [pa.array(columns[i], type=kind) for i, (_, _, kind) in enumerate(PARQUET_COLUMNS)]
    xs = pa.array(columns[width + 1], type=pa.float64())
    ys = pa.array(columns[width + 2], type=pa.float64())
    arrays += [
        pa.array(columns[width], type=pa.binary()),
        pa.StructArray.from_arrays([xs, ys, xs, ys], fields=list(BBOX_TYPE)),
        pa.array(columns[width + 3], type=pa.binary()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=PARQUET_SCHEMA)


Progress = Callable[[int], None]


def _write_parquet(
    *,
    out: IO[bytes],
    query: PlaceQuery,
    metadata: dict[bytes, bytes],
    using: str,
    progress: Progress,
) -> int:
    where, params = query.where()
    schema = PARQUET_SCHEMA.with_metadata(metadata)
    done = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for rows in _fetch_chunks(sql=_where(PARQUET_SQL, where), params=params, using=using):
            writer.write_batch(_parquet_batch(rows).replace_schema_metadata(metadata))
            done += len(rows)
            progress(done)
    return done


def _write_csv(*, out: IO[bytes], query: PlaceQuery, using: str, progress: Progress) -> int:
    where, params = query.where()
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    csv.writer(text, lineterminator="\n").writerow(CSV_HEADER)
    done = 0
    for rows in _fetch_chunks(sql=_where(CSV_SQL, where), params=params, using=using):
        text.write("".join(line + "\n" for (line,) in rows))
        done += len(rows)
        progress(done)
    text.detach()  # the caller owns ``out``
    return done


def selection_write(
    *,
    out: IO[bytes],
    selection: Selection,
    fmt: str,
    facts: SelectionFacts,
    versions: tuple[str, str],
    using: str,
    progress: Progress = lambda done: None,
) -> int:
    """Write the places of ``selection`` to ``out`` in ``fmt``, in id order; return how many.

    Call inside ``read_snapshot(using)`` with the facts and versions read there.
    """
    if fmt == DownloadFormat.PARQUET:
        metadata = file_metadata(facts=facts, selection=selection, versions=versions)
        return _write_parquet(
            out=out, query=selection.query, metadata=metadata, using=using, progress=progress
        )
    return _write_csv(out=out, query=selection.query, using=using, progress=progress)


@dataclass(frozen=True)
class SmallDownload:
    body: bytes
    datasets: list[dict[str, str]]


def selection_bytes(*, selection: Selection, fmt: str, using: str = "default") -> SmallDownload:
    """A small selection's file, whole, read in one snapshot (the request's answer)."""
    out = io.BytesIO()
    with read_snapshot(using):
        versions = selection_versions(query=selection.query, using=using)
        facts = selection_facts(query=selection.query, using=using)
        selection_write(
            out=out, selection=selection, fmt=fmt, facts=facts, versions=versions, using=using
        )
    return SmallDownload(body=out.getvalue(), datasets=facts.datasets)


# --- Jobs ------------------------------------------------------------------------------------


def download_job_path(job: DownloadJob) -> Path:
    return Path(settings.MEDIA_ROOT) / job.file_name


def download_job_request(
    *, selection: Selection, fmt: str, rows_estimate: int
) -> tuple[DownloadJob, bool]:
    """The job of this selection and format at the versions the read source shows now, made
    if there is none, and whether it needs a task (new, or failed and worth another try).

    The caller queues ``download_job_build`` for it after commit. Raises
    ``ReplicaUnavailable`` when the read source says to retry later.
    """
    source = read_source()
    versions = selection_versions(query=selection.query, using=source.alias)
    job, created = DownloadJob.objects.get_or_create(
        selection_key=selection.key(),
        format=fmt,
        data_version=versions[0],
        region_version=versions[1],
        defaults={"selection": selection.to_json(), "rows_estimate": rows_estimate},
    )
    if created:
        return job, True
    retried = DownloadJob.objects.filter(
        pk=job.pk, status=DownloadStatus.FAILED, attempts__lt=MAX_ATTEMPTS
    ).update(status=DownloadStatus.PENDING, error="", updated_at=Now())
    if retried:
        job.refresh_from_db()
    return job, bool(retried)


def _claim(job_id: int) -> bool:
    """Take the job for this worker: pending, or running with a silent worker (its progress
    clock stopped). A conditional UPDATE, so two deliveries never build it side by side."""
    stale = timezone.now() - timedelta(seconds=settings.DOWNLOADS_STALE_SECONDS)
    return bool(
        DownloadJob.objects.filter(
            Q(status=DownloadStatus.PENDING)
            | Q(status=DownloadStatus.RUNNING, updated_at__lt=stale),
            pk=job_id,
        ).update(
            status=DownloadStatus.RUNNING,
            attempts=F("attempts") + 1,
            rows_done=0,
            updated_at=Now(),
        )
    )


def download_job_build(*, job_id: int) -> DownloadJob | None:
    """Build the job's file from the read source, if the job is still to be built.

    Idempotent: a job that is ready, taken by another worker or gone is left as it is. The
    file is written beside its final name and renamed when complete, so a reader never sees
    half a file. When the source no longer shows the job's versions (the data moved on since
    it was asked for), the job expires instead: its file would not be what it names.
    Raises ``ReplicaUnavailable`` (before taking the job) for the task to retry.
    """
    source = read_source()
    if not _claim(job_id):
        logger.info("download job %s is not to be built (gone, done or taken)", job_id)
        return DownloadJob.objects.filter(pk=job_id).first()
    job = DownloadJob.objects.get(pk=job_id)
    selection = Selection.from_json(job.selection)
    job.file_name = f"{FOLDER}/places-{job.pk}-{job.data_version}.{EXTENSIONS[job.format]}"
    final = download_job_path(job)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".part")

    estimate = job.rows_estimate

    def progress(done: int) -> None:
        cache.set(progress_key(job_id), [done, estimate], timeout=settings.DOWNLOADS_STALE_SECONDS)

    # Nothing is written to the database inside the snapshot: the source may be the primary
    # (the fallback), whose read-only transaction would refuse it. Progress goes to Redis.
    try:
        with read_snapshot(source.alias):
            versions = selection_versions(query=selection.query, using=source.alias)
            moved = versions != (job.data_version, job.region_version)
            if not moved:
                facts = selection_facts(query=selection.query, using=source.alias)
                estimate = facts.rows
                progress(0)
                with partial.open("wb") as out:
                    rows = selection_write(
                        out=out,
                        selection=selection,
                        fmt=job.format,
                        facts=facts,
                        versions=versions,
                        using=source.alias,
                        progress=progress,
                    )
        if not moved:
            os.replace(partial, final)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        logger.exception("download job %s failed", job_id)
        DownloadJob.objects.filter(pk=job_id).update(
            status=DownloadStatus.FAILED, error=str(exc)[:2000], updated_at=Now()
        )
        raise
    finally:
        cache.delete(progress_key(job_id))
    if moved:
        DownloadJob.objects.filter(pk=job_id).update(
            status=DownloadStatus.EXPIRED,
            error="The data changed before the file was built; ask again.",
            finished_at=Now(),
            updated_at=Now(),
        )
        return DownloadJob.objects.get(pk=job_id)
    DownloadJob.objects.filter(pk=job_id).update(
        status=DownloadStatus.READY,
        file_name=job.file_name,
        size_bytes=final.stat().st_size,
        rows_done=rows,
        rows_estimate=rows,
        datasets=facts.datasets,
        computed_on="replica" if source.on_replica else "primary",
        finished_at=Now(),
        updated_at=Now(),
    )
    return DownloadJob.objects.get(pk=job_id)


def progress_key(job_id: int) -> str:
    return f"download:{job_id}:rows"


def download_job_progress(job: DownloadJob) -> tuple[int, int]:
    """Places written so far and places expected: counted in Redis while the job runs (the
    expected ones exactly, once the build has counted them), stored once it is done."""
    if job.status == DownloadStatus.RUNNING:
        done, estimate = cache.get(progress_key(job.pk)) or [0, job.rows_estimate]
        return int(done), int(estimate)
    return job.rows_done, job.rows_estimate


def download_job_current(job: DownloadJob) -> bool:
    """Whether the job's versions are still those of its selection (on the primary)."""
    query = Selection.from_json(job.selection).query
    return selection_versions(query=query, using="default") == (
        job.data_version,
        job.region_version,
    )


def downloads_clean() -> list[int]:
    """Expire the files of jobs whose versions have passed (kept ``DOWNLOADS_KEEP_SECONDS``
    after they were built, for downloads under way), delete expired and failed jobs after
    ``DOWNLOADS_FORGET_DAYS``, and return the ids of the jobs cleaned.

    Safe to run twice at once: a file already gone is no error, and each update is
    conditional on the status it found.
    """
    kept = timezone.now() - timedelta(seconds=settings.DOWNLOADS_KEEP_SECONDS)
    cleaned = []
    for job in DownloadJob.objects.filter(status=DownloadStatus.READY, finished_at__lt=kept):
        if download_job_current(job):
            continue
        if DownloadJob.objects.filter(pk=job.pk, status=DownloadStatus.READY).update(
            status=DownloadStatus.EXPIRED, updated_at=Now()
        ):
            download_job_path(job).unlink(missing_ok=True)
            cleaned.append(job.pk)
    forget = timezone.now() - timedelta(days=settings.DOWNLOADS_FORGET_DAYS)
    DownloadJob.objects.filter(
        status__in=[DownloadStatus.EXPIRED, DownloadStatus.FAILED], updated_at__lt=forget
    ).delete()
    return cleaned


def download_jobs_stale() -> list[int]:
    """Jobs whose task was lost (pending or running, silent for ``DOWNLOADS_STALE_SECONDS``):
    the periodic task queues them again, and the build's claim takes each once."""
    stale = timezone.now() - timedelta(seconds=settings.DOWNLOADS_STALE_SECONDS)
    return list(
        DownloadJob.objects.filter(
            status__in=[DownloadStatus.PENDING, DownloadStatus.RUNNING], updated_at__lt=stale
        ).values_list("pk", flat=True)
    )
