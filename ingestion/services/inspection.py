"""Upload and inspect: store a file as a job and record what it holds (format, layers,
columns, encoding, row count, sample rows, the proposed mapping) before anything runs."""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models.functions import Now
from django.utils.text import get_valid_filename

from ingestion.mapping import (
    CONTENT_KEY_NOTE,
    LAYER_FIELD,
    NON_COLUMN_FIELDS,
    ColumnMapping,
    key_propose,
    mapping_propose,
)
from ingestion.models import ImportJob, ImportState
from ingestion.readers import CsvReader, UnreadableFile, open_reader
from ingestion.readers.drivers import GDAL_FORMATS
from ingestion.services import jobs
from ingestion.services.stored_files import import_job_local_file
from ingestion.staging.arrow_text import text_array
from ingestion.staging.geometry_text import has_heights_or_measures
from ingestion.staging.values import key_repeats, source_keys
from places.models import Dataset

if TYPE_CHECKING:
    from ingestion.readers import Reader
    from ingestion.readers.geo import GeoReader

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 10


SAMPLE_TEXT = 200


DIMENSIONS_DROPPED = (
    "Heights (Z) and measures (M) are dropped: places are stored as 2D longitude/latitude."
)


# CSV files up to this size (as stored, so gzip counts compressed) are counted row by row;
# larger ones are estimated from their first megabyte, and the job page says so.
EXACT_COUNT_MAX_BYTES = 8 * 1024**2


ESTIMATE_SAMPLE_BYTES = 1 << 20


# Share of a batch's rows that may repeat an earlier row's key before the key column is taken
# for no id and another key is proposed (a real id column with a few errors keeps its key).
REPEATS_FOR_FALLBACK = 0.1


# GDAL's own errors reach here as UnreadableFile (GeoReader converts them).
_READ_ERRORS = (
    UnreadableFile,
    pa.ArrowException,
    OSError,
    EOFError,
    zlib.error,
)


def import_job_upload(*, upload: UploadedFile, dataset: Dataset, mode: str, user: Any) -> ImportJob:
    """Store an uploaded file as a job for the admin's steps, then inspect it.

    Raises ``UnreadableFile`` (nothing stored) for an empty, over-size or unreadable file.
    The job comes back ``inspected``, or ``failed`` with the reason when the file passed the
    first checks but its rows cannot be read.
    """
    if not upload.size:
        raise UnreadableFile("the file is empty")
    if upload.size > jobs.MAX_FILE_BYTES:
        raise UnreadableFile(f"the file is {upload.size} bytes; the limit is {jobs.MAX_FILE_BYTES}")
    with tempfile.TemporaryDirectory(prefix="places-upload-") as folder:
        path = Path(folder) / _safe_name(upload.name or "")
        if hasattr(upload, "temporary_file_path"):
            # Django already spooled a large upload to disk: no second copy.
            os.symlink(upload.temporary_file_path(), path)
        else:
            with open(path, "wb") as fh:
                for chunk in upload.chunks():
                    fh.write(chunk)
        try:
            job = jobs.import_job_create(
                path=path,
                dataset=dataset,
                user=user,
                mode=mode,
                original_name=(upload.name or path.name)[:255],
                wait_for_review=True,
            )
        except (EOFError, OSError, zlib.error) as exc:
            # A corrupt or truncated gzip breaks the format check itself.
            raise UnreadableFile(f"the file cannot be read: {exc}") from None
        # Inspected from this local copy, so a file stored in a bucket is not fetched back,
        # under the stored copy's name (a GeoJSON's layer is named after its file).
        stored = Path(folder) / Path(job.file.name or path.name).name
        if stored != path:
            os.symlink(path, stored)
        _inspect_state_check(job)
        return _inspect(job, path=stored)


def _safe_name(name: str) -> str:
    try:
        return get_valid_filename(Path(name).name)[:100]
    except SuspiciousFileOperation:
        return "upload"


def import_job_inspect(*, job: ImportJob) -> ImportJob:
    """Record what the file holds: format, layers, columns, encoding, row count, sample rows
    and the proposed mapping; ``uploaded`` → ``inspected`` (inspecting again is harmless).

    A file whose rows cannot be read fails the job with the reason, and so does a stored
    copy that is gone or is not the uploaded file (``stored_files``).
    """
    _inspect_state_check(job)
    try:
        with import_job_local_file(job=job) as path:
            return _inspect(job, path=path)
    except UnreadableFile as exc:  # from the stored copy; _inspect handles the file's own
        return _inspection_failed(job, f"the file cannot be read: {exc}")


def _inspect_state_check(job: ImportJob) -> None:
    if job.state not in (ImportState.UPLOADED, ImportState.INSPECTED):
        raise jobs.ImportJobStateError(
            f"job #{job.pk} is {job.get_state_display().lower()}; only a job that has not run "
            "yet can be inspected"
        )


def _inspection_failed(job: ImportJob, message: str) -> ImportJob:
    logger.info("import job %s: inspection failed: %s", job.pk, message)
    ImportJob.objects.filter(
        pk=job.pk, state__in=(ImportState.UPLOADED, ImportState.INSPECTED)
    ).update(state=ImportState.FAILED, error=message[:2000], finished_at=Now())
    job.refresh_from_db()
    return job


def _inspect(job: ImportJob, *, path: Path) -> ImportJob:
    """import_job_inspect's work on the file at ``path``, a local copy of the stored one."""
    try:
        reader = open_reader(path, job.format)
        layers = reader.layers()
        if not layers:
            raise UnreadableFile("the file holds no layers")
        unsplit: list[tuple[int | None, str]] = []
        row_count: int | None
        if isinstance(reader, CsvReader):
            row_count, estimated = _csv_row_count(reader, path)
            layer_rows: list[int | None] = [row_count]
            # A whole read (exact count) found every record that cannot be split, with its
            # line; otherwise the sample's first block shows those it holds.
            unsplit = list(reader.invalid_rows)
            sample_columns, sample_rows = _csv_sample(reader)
            unsplit = unsplit or list(reader.invalid_rows)
        else:
            layer_rows = [layer.features for layer in layers]
            row_count = None if None in layer_rows else sum(r or 0 for r in layer_rows)
            estimated = False
            sample_columns, sample_rows = (
                # Asked of the reader, not isinstance: naming GeoReader would load pyogrio.
                _geo_sample(cast("GeoReader", reader), layers[0].name)
                if reader.format in GDAL_FORMATS
                else _batch_sample(reader, layers[0].name)
            )
    except _READ_ERRORS as exc:
        return _inspection_failed(job, f"the file cannot be read: {exc}")
    # Every layer's columns: staff may choose any of the layers on the mapping form.
    columns = jobs.layers_columns(layers=[layer.columns for layer in layers])
    chosen_layers = job.options.get("chosen_layers") or []
    proposed, key_note = key_proposal(
        reader=reader,
        layers=[layer.name for layer in layers if layer.name in chosen_layers]
        or [layer.name for layer in layers],
        columns=columns,
        has_geometry=reader.has_geometry,
    )
    inspection: dict[str, Any] = {
        "format": job.format,
        "layers": [
            {
                "name": layer.name,
                "geometry_type": layer.geometry_type,
                "features": rows,
                "crs": layer.crs,
                "columns": list(layer.columns),
            }
            for layer, rows in zip(layers, layer_rows, strict=True)
        ],
        "columns": columns,
        "row_count": row_count,
        "row_count_estimated": estimated,
        "sample_columns": sample_columns,
        "sample_rows": sample_rows,
        # Left out of the sample (they have no columns) but rejected by the import.
        "unsplit_rows": [{"line": line, "text": _cell(text)} for line, text in unsplit[:5]],
        "unsplit_count": len(unsplit),
        "has_geometry": reader.has_geometry,
        "proposed_mapping": proposed.as_dict(),
        # Why the proposed key is what it is, when staff should know before a dry run.
        "key_note": key_note,
    }
    if _heights_or_measures(layers, inspection):
        inspection["geometry_notes"] = [DIMENSIONS_DROPPED]
    if isinstance(reader, CsvReader):
        inspection["encoding"] = reader.encoding
        inspection["delimiter"] = reader.delimiter
    with transaction.atomic():
        locked = ImportJob.objects.select_for_update().get(pk=job.pk)
        if locked.state not in (ImportState.UPLOADED, ImportState.INSPECTED):
            raise jobs.ImportJobStateError(f"job #{job.pk} changed state while being inspected")
        locked.inspection = inspection
        chosen = locked.options.get("chosen_layers")
        if chosen is not None and row_count is not None and len(layers) > 1:
            row_count = sum(
                rows or 0
                for layer, rows in zip(layers, layer_rows, strict=True)
                if layer.name in chosen
            )
        locked.rows_total = row_count
        locked.state = ImportState.INSPECTED
        mapping = locked.options.get("mapping") or {}
        if mapping.get("key") == key_propose(columns) != proposed.key:
            # The job still has the guess from the column names alone, whose values repeat.
            locked.options = {**locked.options, "mapping": {**mapping, "key": proposed.key}}
        locked.save(update_fields=["inspection", "rows_total", "state", "options"])
    return locked


def _heights_or_measures(layers: list[Any], inspection: dict[str, Any]) -> bool:
    """Whether a layer's type, or a sample row's geometry (a geo file's, or the proposed
    geometry column's), has heights or measures."""
    if any(has_heights_or_measures(layer.geometry_type) for layer in layers):
        return True
    names = inspection["sample_columns"]
    column = inspection["proposed_mapping"].get("geometry")
    if inspection["has_geometry"]:
        column = "geometry"  # the samples' last column, as WKT
    if column not in names:
        return False
    at = len(names) - 1 - names[::-1].index(column)
    return any(has_heights_or_measures(row[at]) for row in inspection["sample_rows"])


def key_proposal(
    *, reader: Reader, layers: list[str], columns: list[str], has_geometry: bool
) -> tuple[ColumnMapping, str | None]:
    """The proposed mapping, its key checked against the first batch of the first layer and
    across the first batches of all ``layers``, and a note on the key for staff (None when
    the key is an id column whose values do not repeat there).

    A few repeats are errors in an id column, which the duplicate rule reports row by row;
    a column repeating on more than REPEATS_FOR_FALLBACK of the rows is probably no id at all,
    so the next id column, or the content key, is proposed instead. An id column unique in
    each layer but repeating across them (each layer numbered from 1, as GIS tools write
    them) is made unique by its layer: ``{_layer}:{id}``.
    """
    proposed = mapping_propose(columns, has_geometry=has_geometry)
    note: str | None = None
    if not proposed.content_key():
        repeats, rows = _first_batch_key_repeats(reader, layers[0], proposed)
        if not repeats and len(layers) > 1:
            shared, total = _key_repeats_across_layers(reader, layers, proposed)
            if shared:
                key_columns = ", ".join(sorted(set(proposed.key_fields()) - NON_COLUMN_FIELDS))
                proposed.key = f"{{{LAYER_FIELD}}}:{proposed.key}"
                note = (
                    f"The key column {key_columns} is unique within each layer but {shared} of "
                    f"the first {total} rows of the {len(layers)} layers repeat another "
                    f"layer's key (each layer is numbered on its own): the key proposed is "
                    f"{proposed.key}, the layer's name and the id, which a re-import of the "
                    "same layers matches again."
                )
                return proposed, note
        if repeats:
            repeating = set(proposed.key_fields()) - {"_kind"}
            note = (
                f"The key column{'s' if len(repeating) > 1 else ''} "
                f"{', '.join(sorted(repeating))} repeat{'' if len(repeating) > 1 else 's'} "
                f"values: {repeats} of the first {rows} rows repeat{'s' if repeats == 1 else ''} "
                "an earlier row's key"
            )
            if repeats > 1 and repeats > rows * REPEATS_FOR_FALLBACK:
                proposed = mapping_propose(columns, has_geometry=has_geometry, repeating=repeating)
                note += f", too many for an id: the key proposed is {proposed.key} instead."
            else:
                note += "; the import rejects each repeat as a duplicate (the first row wins)."
    if proposed.content_key():
        note = f"{note} {CONTENT_KEY_NOTE}" if note else CONTENT_KEY_NOTE
    return proposed, note


def _key_repeats_across_layers(
    reader: Reader, layers: list[str], mapping: ColumnMapping
) -> tuple[int, int]:
    """Keys of the layers' first batches that another layer's first batch has too, and the
    rows read. Keys with ``{_kind}`` are not compared: the kind tells a Geofabrik file's
    point and polygon layers apart, and it is filled in only when staging."""
    if "_kind" in mapping.key_fields():
        return 0, 0
    seen: dict[str, str] = {}
    shared = total = 0
    for layer in layers:
        keys = _first_batch_keys(reader, layer, mapping)
        if keys is None:
            continue
        total += len(keys)
        for key in set(keys.filter(pc.not_equal(keys, "")).to_pylist()):
            if seen.setdefault(key, layer) != layer:
                shared += 1
    return shared, total


def _first_batch_keys(reader: Reader, layer: str, mapping: ColumnMapping) -> pa.Array | None:
    """The keys of a layer's first batch; None when it is empty or cannot be read."""
    batches = reader.batches(layer)
    try:
        batch = next(batches, None)
    except _READ_ERRORS:
        return None
    finally:
        batches.close()
    if batch is None or not batch.num_rows:
        return None
    texts = {name: text_array(values, batch.num_rows) for name, values in batch.arrays.items()}
    # ``_kind`` is the same for every row of a layer, so any value counts repeats alike.
    return source_keys(texts, mapping, kind="", size=batch.num_rows, layer=layer)


def _first_batch_key_repeats(reader: Reader, layer: str, mapping: ColumnMapping) -> tuple[int, int]:
    """Rows of the first batch whose (non-empty) key repeats an earlier row's, and the rows
    read. A batch that cannot be read counts as no repeats: the import reports it anyway."""
    keys = _first_batch_keys(reader, layer, mapping)
    if keys is None:
        return 0, 0
    return key_repeats(keys), len(keys)


def _csv_row_count(reader: CsvReader, path: Path) -> tuple[int, bool]:
    """Data rows of a CSV (malformed records included), and whether it is an estimate."""
    if path.stat().st_size <= EXACT_COUNT_MAX_BYTES:
        rows = sum(batch.num_rows for batch in reader.batches())
        return rows + len(reader.invalid_rows), False
    return _csv_row_estimate(reader, path), True


def _csv_row_estimate(reader: CsvReader, path: Path) -> int:
    """Records in the first megabyte, scaled by how much of the (compressed) file it took."""
    decompress = zlib.decompressobj(16 + zlib.MAX_WBITS) if _is_gzip(path) else None
    text = bytearray()
    consumed = 0
    with open(path, "rb") as fh:
        while len(text) < ESTIMATE_SAMPLE_BYTES:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            consumed += len(chunk)
            if decompress is None:
                text += chunk
            else:
                text += decompress.decompress(chunk)
                consumed -= len(decompress.unused_data)
    lines = bytes(text).decode(reader.encoding, errors="replace")
    records = 0
    try:
        for _ in csv.reader(io.StringIO(lines), delimiter=reader.delimiter):
            records += 1
    except csv.Error:  # the sample ends inside a quoted value
        pass
    # The header is one record and the last one is probably cut.
    records = max(records - 2, 1)
    return max(1, round(records * path.stat().st_size / max(consumed, 1)))


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= SAMPLE_TEXT else text[: SAMPLE_TEXT - 1] + "…"


def _csv_sample(reader: CsvReader) -> tuple[list[str], list[list[str | None]]]:
    batches = reader.batches()
    try:
        batch = next(batches, None)
    finally:
        batches.close()
    if batch is None:
        return reader.header, []
    count = min(SAMPLE_ROWS, batch.num_rows)
    rows = [[_cell(batch.columns[c][i]) for c in reader.header] for i in range(count)]
    return reader.header, rows


def _batch_sample(reader: Any, layer: str) -> tuple[list[str], list[list[str | None]]]:
    """The first rows of a streamed reader (Parquet, JSON array): its first batch only."""
    from django.contrib.gis.geos import GEOSException, GEOSGeometry

    batches = reader.batches(layer)
    try:
        batch = next(batches, None)
    finally:
        batches.close()
    if batch is None:
        return [], []
    names = list(batch.columns)
    rows: list[list[str | None]] = []
    for i in range(min(SAMPLE_ROWS, batch.num_rows)):
        values = [_cell(batch.columns[n][i]) for n in names]
        if batch.wkb is not None:
            wkb = batch.wkb[i]
            try:
                values.append(_cell(GEOSGeometry(memoryview(wkb)).wkt) if wkb else None)
            except (GEOSException, ValueError):
                values.append("(unreadable geometry)")
        rows.append(values)
    return ([*names, "geometry"] if batch.wkb is not None else names), rows


def _geo_sample(reader: GeoReader, layer: str) -> tuple[list[str], list[list[str | None]]]:
    """The first features of a layer; geometries as (shortened) WKT in the file's CRS."""
    from django.contrib.gis.geos import GEOSException, GEOSGeometry

    names, geometry, records = reader.first_records(layer, SAMPLE_ROWS)
    # Feature ids GDAL keeps only as FIDs come from the reader, as in its batches.
    id_column = reader.feature_id_column(names)
    if id_column:
        ids = reader.feature_ids()
        for record, feature_id in zip(records, ids, strict=False):
            record[id_column] = feature_id
        ids.close()
        if id_column not in names:
            names.append(id_column)
    rows: list[list[str | None]] = []
    for record in records:
        values = [_cell(record.get(n)) for n in names]
        wkb = record.get(geometry)
        try:
            values.append(_cell(GEOSGeometry(memoryview(wkb)).wkt) if wkb else None)
        except (GEOSException, ValueError):
            values.append("(unreadable geometry)")
        rows.append(values)
    return [*names, "geometry"], rows
