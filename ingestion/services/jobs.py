"""An import job's life: create, inspect, choose the mapping, dry run, apply, cancel, resume.

States move ``uploaded → inspected → (queued → running →) dry_run_ready → (queued →
running →) done``, or end ``failed`` / ``cancelled``. Every step checks the state it starts
from under a row lock, so two clicks, or a click racing the worker, cannot both win.

An apply commits in batches, each with the job's checkpoint. So:

- a job that fails part-way keeps what its committed batches applied (its counts say how
  much) and can be **resumed**: the rest is applied from the checkpoint;
- a **running** job can be cancelled: the worker stops before its next batch, the job ends
  ``cancelled`` with the counts of what was applied, and it too can be resumed;
- a job that is not running yet is cancelled at once, and its task finds nothing to run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from django.core.files import File
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from django.utils.text import slugify
from kombu.exceptions import OperationalError as BrokerError

from ingestion import tasks
from ingestion.mapping import (
    NON_COLUMN_FIELDS,
    ColumnMapping,
    mapping_problems,
    mapping_propose,
)
from ingestion.models import ImportJob, ImportMode, ImportState
from ingestion.readers import (
    CsvReader,
    UnreadableFile,
    detect_format,
    open_reader,
    srid_from_crs,
)
from ingestion.selectors import (
    NOT_STARTED_STATES,
    import_job_mapping_problems,
    import_job_resumable,
)
from places import access
from places.access import Action
from places.models import Dataset

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 2 * 1024**3
MAPPING_EDITABLE = (ImportState.INSPECTED, ImportState.DRY_RUN_READY)


class ImportJobStateError(ValueError):
    """The step is not allowed in the job's current state; the message says why."""


class MappingInvalid(ValueError):
    """The column mapping cannot work on the file; ``problems`` maps field → message."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in problems.items()))
        self.problems = problems


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_job_create(
    *,
    path: Path,
    dataset: Dataset,
    user: Any = None,
    dry_run: bool = False,
    mode: str = ImportMode.UPSERT,
    mapping: dict[str, Any] | None = None,
    original_name: str | None = None,
    wait_for_review: bool = False,
    layers: list[str] | None = None,
) -> ImportJob:
    """Check the file, store a copy, propose a column mapping and queue the job.

    Raises ``UnreadableFile`` (nothing stored) when the file cannot be imported.
    ``wait_for_review`` (the admin's upload → inspect → dry run → apply steps) stores the
    job as ``uploaded`` instead, with the proposed mapping even when it is not usable yet:
    the user corrects it on the job's page, and it is checked again before anything runs.
    ``layers`` names the layers to import (a zip of shapefiles, a GeoPackage); all of them
    when it is not given. The mapping is proposed from, and checked against, the columns of
    the chosen layers together. A ``user`` given must be an importer of the dataset
    (``places.access``): ``PermissionDenied`` otherwise; no user means the system (beat, a
    shell command run without ``--user``).
    """
    if user is not None:
        access.require(user, Action.IMPORT, dataset)
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFile("the file is empty")
    if size > MAX_FILE_BYTES:
        raise UnreadableFile(f"the file is {size} bytes; the limit is {MAX_FILE_BYTES}")
    fmt = detect_format(path)
    reader = open_reader(path, fmt)
    all_layers = reader.layers()
    if not all_layers:
        raise UnreadableFile("the file holds no layers")
    layer_names = layers_choose(available=[layer.name for layer in all_layers], chosen=layers)
    picked = [layer for layer in all_layers if layer.name in layer_names]
    columns = layers_columns(layers=[layer.columns for layer in picked])
    if wait_for_review:
        # The inspection that follows checks the key against the first batch: read it once.
        proposed, key_note = mapping_propose(columns, has_geometry=reader.has_geometry), None
    else:
        # The key checked against the first batch, as the inspection does: an id column whose
        # values repeat is passed over (inspection imports this module, hence the late import).
        from ingestion.services.inspection import key_proposal

        proposed, key_note = key_proposal(
            reader=reader,
            layers=[layer.name for layer in picked],
            columns=columns,
            has_geometry=reader.has_geometry,
        )
    chosen = ColumnMapping.from_dict({**proposed.as_dict(), **(mapping or {})})
    problems = mapping_problems(chosen, columns=columns, has_geometry=reader.has_geometry)
    problems = problems or _layer_key_problems(
        chosen, layers={layer.name: layer.columns for layer in picked}
    )
    problems |= _snapshot_layer_problems(
        mode=mode, chosen=layer_names, available=[layer.name for layer in all_layers]
    )
    if problems and not wait_for_review:
        raise UnreadableFile("; ".join(f"{name}: {message}" for name, message in problems.items()))
    if reader.has_geometry:
        _check_crs(picked)
    job = ImportJob(
        dataset=dataset,
        original_name=original_name or path.name,
        size_bytes=size,
        sha256=file_sha256(path),
        format=fmt,
        options={
            "mapping": chosen.as_dict(),
            # The chosen layers' columns in file order: reports list original values so.
            "columns": columns,
            "layers": [
                {
                    "name": layer.name,
                    "geometry_type": layer.geometry_type,
                    "crs": layer.crs,
                    "columns": list(layer.columns),
                }
                for layer in all_layers
            ],
            # What is read when the job runs (file_batches): every layer unless told.
            "chosen_layers": layer_names,
            # Why the proposed key is what it is (the command prints it), when it is used.
            **({"key_note": key_note} if key_note and chosen.key == proposed.key else {}),
            **(
                {"encoding": reader.encoding, "delimiter": reader.delimiter}
                if isinstance(reader, CsvReader)
                else {}
            ),
        },
        mode=mode,
        dry_run=dry_run,
        state=ImportState.UPLOADED if wait_for_review else ImportState.QUEUED,
        rows_total=sum(layer.features or 0 for layer in picked) or None,
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
    with open(path, "rb") as fh:
        job.file.save(f"{job.sha256[:16]}-{path.name}", File(fh), save=False)
    job.save()
    return job


def layers_choose(*, available: list[str], chosen: list[str] | None) -> list[str]:
    """The layers to import, in the file's order: all of them unless ``chosen`` names some.

    Raises ``UnreadableFile`` naming the file's layers when a chosen one is not among them,
    or when none is chosen: an import never falls back to some layer silently.
    """
    if chosen is None:
        return list(available)
    unknown = [name for name in chosen if name not in available]
    if unknown or not chosen:
        what = f"no layer {unknown[0][:80]!r} in the file" if unknown else "no layer chosen"
        raise UnreadableFile(f"{what}; its layers are: {', '.join(available)}")
    return [name for name in available if name in chosen]


def _snapshot_layer_problems(
    *, mode: str, chosen: list[str], available: list[str]
) -> dict[str, str]:
    """A snapshot retires the dataset's places missing from the file, and places do not
    record their layer: with some layers left out, their places would all be retired."""
    if mode != ImportMode.SNAPSHOT or not chosen or len(chosen) >= len(available):
        return {}
    return {
        "layers": "a snapshot needs every layer of the file: the places of the layers left out "
        "would be retired; choose upsert or append to import some layers"
    }


def layers_columns(*, layers: list[list[str]]) -> list[str]:
    """Every column of the given layers, once, in the order they first appear: a column some
    layer lacks is read as empty on that layer's rows."""
    return list(dict.fromkeys(column for columns in layers for column in columns))


def _layer_key_problems(mapping: ColumnMapping, *, layers: dict[str, list[str]]) -> dict[str, str]:
    """A key column must be in every imported layer: rows of a layer without it would all be
    rejected for a missing key."""
    if len(layers) < 2:
        return {}
    try:
        needed = [name for name in mapping.key_fields() if name not in NON_COLUMN_FIELDS]
    except ValueError:
        return {}  # mapping_problems names it
    for layer, columns in layers.items():
        if missing := [name for name in needed if name not in columns]:
            return {
                "key": f"layer {layer[:80]!r} has no column {', '.join(missing)} of the key "
                "template; leave the layer out or give a template its columns fill"
            }
    return {}


def dataset_create_for_import(*, name: str) -> Dataset:
    """A new dataset named ``name`` for a file being imported, its slug made from the name
    and unique (``-2``, ``-3`` … when taken; the database's unique slug settles a race)."""
    base = slugify(name)[:90] or "dataset"
    for n in range(1, 1000):
        slug = base if n == 1 else f"{base}-{n}"
        if Dataset.objects.filter(slug=slug).exists():
            continue
        try:
            with transaction.atomic():
                return Dataset.objects.create(name=name, slug=slug)
        except IntegrityError:  # taken between the check and the insert
            continue
    raise ValueError(f"no free slug for a dataset named {name!r}")


def _check_crs(layers: list[Any]) -> None:
    """Every layer's CRS must be known to GDAL and to PostGIS, before the job is queued."""
    srids = {srid_from_crs(layer.crs) for layer in layers}
    with connection.cursor() as cursor:
        cursor.execute("SELECT srid FROM spatial_ref_sys WHERE srid = ANY(%s)", [sorted(srids)])
        known = {row[0] for row in cursor.fetchall()}
    if srids - known:
        raise UnreadableFile(f"coordinate system EPSG:{min(srids - known)} is not supported")


def import_job_mapping_set(
    *, job: ImportJob, mapping: dict[str, Any], mode: str, layers: list[str] | None = None
) -> ImportJob:
    """Replace the job's column mapping, mode and (``layers``, when given) the layers to
    import, after checking them against the file.

    Raises ``MappingInvalid`` naming each field's problem (unknown columns by name). A
    change after a dry run makes that dry run stale: the job goes back to ``inspected``.
    """
    fields = ColumnMapping(key="").as_dict()
    chosen = ColumnMapping(
        **{name: (mapping.get(name) or None) for name in fields if name != "key"},
        key=str(mapping.get("key") or "").strip(),
    )
    file_layers = job.inspection.get("layers") or job.options.get("layers", [])
    # A file of one layer has nothing to choose (and its layer is named after the file, which
    # the stored copy renamed).
    several = len(file_layers) > 1
    layer_names: list[str] = []
    if several:
        try:
            layer_names = layers_choose(
                available=[layer["name"] for layer in file_layers],
                chosen=job.options.get("chosen_layers") if layers is None else layers,
            )
        except UnreadableFile as exc:
            raise MappingInvalid({"layers": str(exc)}) from None
    picked = {
        layer["name"]: layer.get("columns", [])
        for layer in file_layers
        if layer["name"] in layer_names
    }
    # The chosen layers' columns; a job inspected before layers had their own, the file's.
    columns = layers_columns(layers=list(picked.values())) or job.inspection.get("columns", [])
    problems = mapping_problems(
        chosen,
        columns=columns,
        has_geometry=job.inspection.get("has_geometry", job.format != "csv"),
    )
    problems = problems or _layer_key_problems(chosen, layers=picked)
    problems |= _snapshot_layer_problems(
        mode=mode, chosen=layer_names, available=[layer["name"] for layer in file_layers]
    )
    if mode not in ImportMode.values:
        problems["mode"] = f"unknown mode {mode!r}"
    if problems:
        raise MappingInvalid(problems)
    with transaction.atomic():
        locked = _locked(job)
        if locked.state not in MAPPING_EDITABLE:
            raise ImportJobStateError(
                f"job #{job.pk} is {locked.get_state_display().lower()}; the mapping can be "
                "changed after inspection and before the job is applied"
            )
        if (
            locked.options.get("mapping") == chosen.as_dict()
            and locked.mode == mode
            and (not several or locked.options.get("chosen_layers") == layer_names)
        ):
            return locked
        locked.options = {
            **locked.options,
            "mapping": chosen.as_dict(),
            **({"chosen_layers": layer_names} if several else {}),
        }
        if several and layers is not None and "features" in file_layers[0]:
            counts = [layer["features"] for layer in file_layers if layer["name"] in layer_names]
            locked.rows_total = None if None in counts else (sum(counts) or None)
        locked.mode = mode
        if locked.state == ImportState.DRY_RUN_READY:
            locked.state = ImportState.INSPECTED
            _reset_counts(locked)
            locked.report = {}
        locked.save()
    return locked


def import_job_dry_run_queue(*, job: ImportJob, user: Any = None) -> ImportJob:
    """Queue a dry run (counts and samples, nothing changed) of an inspected job; a ``user``
    given must be an importer of the job's dataset."""
    if user is not None:
        access.require(user, Action.IMPORT, job.dataset_id)
    if job.state not in MAPPING_EDITABLE:  # checked again under the lock
        raise ImportJobStateError(_refusal(job, "dry-run"))
    problems = import_job_mapping_problems(job=job)
    if problems:
        raise MappingInvalid(problems)
    return _queue(job=job, dry_run=True, allowed=MAPPING_EDITABLE)


def import_job_apply_queue(*, job: ImportJob, user: Any = None) -> ImportJob:
    """Queue the apply of a job whose dry run is ready; the dry run's report is kept.

    The apply computes everything again, batch by batch: places may have changed since the
    dry run, and the final counts are the ones that count. A ``user`` given must be an
    importer of the job's dataset.
    """
    if user is not None:
        access.require(user, Action.IMPORT, job.dataset_id)
    return _queue(job=job, dry_run=False, allowed=(ImportState.DRY_RUN_READY,))


def import_job_cancel(*, job: ImportJob) -> ImportJob:
    """Cancel a job. One that is not running ends ``cancelled`` at once; a running one is
    asked to stop (``cancel_requested_at``): the worker finishes the batch it is applying,
    starts no other and ends the job ``cancelled`` with the counts of what committed.
    The stored file and any report are kept for audit."""
    with transaction.atomic():
        locked = _locked(job)
        if locked.state == ImportState.RUNNING:
            if locked.cancel_requested_at is None:
                locked.cancel_requested_at = Now()
                locked.save(update_fields=["cancel_requested_at"])
        elif locked.state in NOT_STARTED_STATES:
            locked.state = ImportState.CANCELLED
            locked.finished_at = Now()
            locked.save(update_fields=["state", "finished_at"])
        else:
            raise ImportJobStateError(_refusal(locked, "cancel"))
    locked.refresh_from_db()
    return locked


def import_job_resume(*, job: ImportJob, enqueue: bool = True, user: Any = None) -> ImportJob:
    """Queue a job that stopped part-way (failed while running, or cancelled while running)
    to go on from its checkpoint: the batches that committed are not applied again, its
    counts keep adding up, and a dry run is simply run again. The file is staged again if
    its staging rows are gone. ``enqueue=False`` leaves the run to the caller (a command's
    ``--sync``). A ``user`` given must be an importer of the job's dataset."""
    if user is not None:
        access.require(user, Action.IMPORT, job.dataset_id)
    with transaction.atomic():
        locked = _locked(job)
        if not import_job_resumable(job=locked):
            raise ImportJobStateError(_refusal(locked, "resume"))
        locked.state = ImportState.QUEUED
        locked.attempts = 0
        locked.error = ""
        locked.cancel_requested_at = None
        locked.finished_at = None
        # A fresh heartbeat: the beat task must not take the job for a lost one at once.
        locked.heartbeat_at = Now()
        locked.save()
        if enqueue:
            transaction.on_commit(partial(_enqueue, locked.pk))
    return locked


def _queue(*, job: ImportJob, dry_run: bool, allowed: Iterable[str]) -> ImportJob:
    with transaction.atomic():
        locked = _locked(job)
        if locked.state not in allowed:
            raise ImportJobStateError(_refusal(locked, "dry-run" if dry_run else "apply"))
        if not dry_run:
            locked.preview = {
                "counts": {
                    "rows_read": locked.rows_read,
                    "added": locked.added,
                    "updated": locked.updated,
                    "unchanged": locked.unchanged,
                    "retired": locked.retired,
                    "rejected": locked.rejected,
                },
                "report": locked.report,
            }
        _reset_counts(locked)
        locked.report = {}
        locked.dry_run = dry_run
        locked.state = ImportState.QUEUED
        # A fresh run gets the service's full number of attempts.
        locked.attempts = 0
        locked.error = ""
        locked.started_at = locked.finished_at = None
        locked.heartbeat_at = Now()
        locked.cancel_requested_at = None
        # The apply after a dry run starts from nothing: the dry run applied no batch.
        locked.checkpoint = {}
        locked.save()
        transaction.on_commit(partial(_enqueue, locked.pk))
    return locked


def _enqueue(job_id: int) -> None:
    """Send the task; a broker that cannot be reached fails the job rather than leaving it
    queued forever with nobody to run it."""
    try:
        tasks.import_job_run.delay(job_id)
    except BrokerError as exc:
        logger.error("import job %s could not be queued: %s", job_id, exc)
        ImportJob.objects.filter(pk=job_id, state=ImportState.QUEUED).update(
            state=ImportState.FAILED,
            error=f"the task queue could not be reached ({exc}); try again later",
            finished_at=Now(),
        )


def _locked(job: ImportJob) -> ImportJob:
    return ImportJob.objects.select_for_update().get(pk=job.pk)


def _reset_counts(job: ImportJob) -> None:
    job.rows_read = job.added = job.updated = job.unchanged = job.retired = job.rejected = 0


def _refusal(job: ImportJob, action: str) -> str:
    state = job.get_state_display().lower()
    resumable = import_job_resumable(job=job)
    why = {
        ImportState.UPLOADED: "inspect it first",
        ImportState.INSPECTED: "run a dry run first; apply follows a dry run",
        ImportState.QUEUED: "it is already queued",
        ImportState.RUNNING: (
            "it is stopping after the batch it is applying"
            if job.cancel_requested_at
            else "it is running; cancel it to stop it after the batch it is applying"
        ),
        ImportState.DONE: "it has been applied; import the file again for another run",
        ImportState.FAILED: (
            "resume it to go on from its checkpoint"
            if resumable
            else "it failed before it ran; fix the problem and upload the file again"
        ),
        ImportState.CANCELLED: (
            "resume it to go on from its checkpoint"
            if resumable
            else "it was cancelled before it ran; upload the file again to import it"
        ),
        ImportState.DRY_RUN_READY: "its dry run is ready; apply it or run it again",
    }[ImportState(job.state)]
    return f"cannot {action} job #{job.pk}: it is {state}; {why}"
