"""Reading the stored file for staging: batches in a fixed order (so a second read gives the
same rows the same sids), turned into CSV for ``COPY`` in a thread of their own.

Nothing here touches the database: it runs in the prefetch thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingestion.mapping import ColumnMapping
from ingestion.models import ImportJob
from ingestion.readers import Batch, open_reader, srid_from_crs
from ingestion.staging import (
    RepeatedKeys,
    batch_texts,
    embedded_newlines,
    malformed_rows,
    raw_values,
    stage_batch,
    stage_csv,
)


@dataclass
class FileBatch:
    batch: Batch
    layer: str
    kind: str
    srid: int
    first_sid: int
    first_row: int
    # Set on the last item of a CSV with records that could not be split: their line and
    # text, and how many fields a record should have.
    malformed: list[tuple[int | None, str]] | None = None
    expected_fields: int = 0
    # CSV: each row's line in the file (before the records pyarrow skipped are counted in,
    # which RENUMBER_AFTER_MALFORMED does once they are staged).
    row_numbers: np.ndarray | None = None


def file_batches(job: ImportJob, *, path: Path, lines: bool = True) -> Iterator[FileBatch]:
    """The batches of the job's file at ``path`` (a local copy of the stored file:
    ``ingestion.services.stored_files``) in staging order, each with the sid of its first
    row (a second read of the file sees the same rows under the same sids), and for CSV with
    each row's file line unless ``lines`` is false (a reader after sids only)."""
    reader = open_reader(path, job.format)
    total = 0
    # Layers are listed again from the stored copy: a GeoJSON layer is named after its file.
    layers = reader.layers()
    # Only the layers chosen for the job (a job made before layers could be chosen: all). A
    # file of one layer is read whole: its layer is named after the file, which was renamed.
    chosen = job.options.get("chosen_layers") if len(layers) > 1 else None
    for layer in layers:
        if chosen is not None and layer.name not in chosen:
            continue
        geometry_type = (layer.geometry_type or "").lower()
        # CSV records are numbered as lines with the header as line 1.
        next_row = 2 if job.format == "csv" else 1
        for batch in reader.batches(layer.name):
            row_numbers = None
            advance = batch.num_rows
            if lines and job.format == "csv":
                # A value spanning lines pushes the rows after it down the file.
                extra = embedded_newlines(batch)
                before = np.concatenate(([0], np.cumsum(extra)[:-1])) if extra.size else extra
                row_numbers = next_row + np.arange(batch.num_rows, dtype=np.int64) + before
                advance += int(extra.sum())
            yield FileBatch(
                batch=batch,
                # Layer names are reported only where a file has several.
                layer=layer.name if len(layers) > 1 else "",
                kind="node" if geometry_type in {"point", "multipoint"} else "area",
                srid=srid_from_crs(layer.crs) if job.format != "csv" else 4326,
                first_sid=total + 1,
                first_row=next_row,
                row_numbers=row_numbers,
            )
            next_row += advance
            total += batch.num_rows
    invalid = getattr(reader, "invalid_rows", [])
    if invalid:
        # Records that could not be split come last, as one batch without columns.
        yield FileBatch(
            batch=Batch(arrays={}, wkb_array=None, num_rows=len(invalid)),
            layer="",
            kind="",
            srid=4326,
            first_sid=total + 1,
            first_row=0,
            malformed=invalid,
            expected_fields=len(getattr(reader, "header", [])),
        )


def stage_chunks(job: ImportJob, *, path: Path) -> Iterator[tuple[bytes, int, pa.Array, int]]:
    """Every batch as CSV for COPY, with its row count, the keys of its valid rows that may
    repeat an earlier row's (their original values staged) and its number of unsplittable
    CSV records (no database access: this runs in the prefetch thread)."""
    mapping = ColumnMapping.from_dict(job.options["mapping"])
    seen = RepeatedKeys()
    for item in file_batches(job, path=path):
        if item.malformed is not None:
            rows = malformed_rows(
                item.malformed,
                job_id=job.pk,
                first_sid=item.first_sid,
                expected=item.expected_fields,
                delimiter=job.options.get("delimiter") or ",",
            )
            repeats = pa.array([], pa.string())
        else:
            rows = stage_batch(
                item.batch,
                mapping,
                job_id=job.pk,
                first_sid=item.first_sid,
                layer=item.layer,
                first_row_number=item.first_row,
                geometry_kind=item.kind,
                srid=item.srid,
                row_numbers=item.row_numbers,
                repeated=seen,
            )
            # Valid rows carry original values only where their key may repeat.
            may_repeat = pc.and_(pc.is_null(rows.column("reject")), pc.is_valid(rows.column("raw")))
            repeats = rows.column("source_key").filter(may_repeat).combine_chunks()
        unsplit = 0 if item.malformed is None else len(item.malformed)
        yield stage_csv(rows), item.batch.num_rows, repeats, unsplit


def raw_chunks(job: ImportJob, wanted: np.ndarray, *, path: Path) -> Iterator[bytes]:
    """The original values of the rows with sids ``wanted`` (sorted), as CSV (sid, raw).

    The file is read only as far as the last wanted row: closing the reader there also
    spares the CSV reader's closing pass that numbers unsplittable records (staged with
    their text already).
    """
    for item in file_batches(job, path=path, lines=False):
        if item.malformed is not None:
            continue
        end = item.first_sid + item.batch.num_rows
        sids = wanted[np.searchsorted(wanted, item.first_sid) : np.searchsorted(wanted, end)]
        if sids.size:
            picked = pa.array(sids - item.first_sid)
            texts = {n: values.take(picked) for n, values in batch_texts(item.batch).items()}
            yield stage_csv(pa.table({"sid": pa.array(sids), "raw": raw_values(texts, sids.size)}))
        if end > wanted[-1]:
            return


_DONE = object()


def prefetch(items: Iterator[Any], *, depth: int) -> Iterator[Any]:
    """Yield ``items``, computed up to ``depth`` ahead in a second thread.

    An error in the thread is raised here; if the consumer stops early, the thread stops
    at its next item.
    """
    queue: Queue[Any] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.5)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(_DONE)
        except BaseException as exc:  # handed over to the consumer, who raises it
            queue.put(exc)

    thread = threading.Thread(target=produce, name="import-staging", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full queue finish
            with suppress(Empty):
                queue.get(timeout=0.1)
        thread.join()
