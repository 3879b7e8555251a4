"""An import job's stored file as a local path, wherever the file is stored.

Uploads are stored through Django's default storage: the local disk under ``MEDIA_ROOT``
(one machine, or a volume every pod mounts), or an S3-compatible bucket (``UPLOADS_S3_*``,
README "Configuration") so that web, which receives a file, and the ingestion workers, which
import it on other pods, share no filesystem. The readers need a local path: GDAL opens a
GeoPackage or a zipped Shapefile by name and seeks in it, and the safety checks
(``ingestion.readers.safety``) open the zip themselves. GDAL is never given a ``/vsis3/`` or
``/vsicurl/`` name: the bytes are fetched here, into a temporary file, and go through the
same format and safety checks as an upload on the local disk.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from django.core.files.storage import Storage

from ingestion.models import ImportJob
from ingestion.readers import UnreadableFile

logger = logging.getLogger(__name__)

# Read and hashed this many bytes at a time: the copy never holds more of the file.
DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024


def storage_local_path(*, storage: Storage, name: str) -> Path | None:
    """The file's path on this machine, or None when its storage keeps files elsewhere
    (Django's storages raise ``NotImplementedError`` from ``path()`` then)."""
    try:
        return Path(storage.path(name))
    except NotImplementedError:
        return None


@contextmanager
def import_job_local_file(*, job: ImportJob) -> Iterator[Path]:
    """The job's stored file as a local path for the length of the block.

    On the local disk that is the stored file itself. From a bucket, the file is streamed
    into a temporary folder of its own (under the system's temporary directory: /tmp, an
    ``emptyDir`` sized for it in the Helm chart), checked against the size and SHA-256
    recorded when it was uploaded, and removed when the block ends, however it ends.
    Raises ``UnreadableFile`` when the stored copy is missing or is not the uploaded file.
    """
    storage, name = job.file.storage, job.file.name
    if not name:
        raise UnreadableFile("the job has no stored file; upload it again")
    local = storage_local_path(storage=storage, name=name)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="places-import-") as folder:
        # The stored name ends as the upload did (``<sha>-name.shp.zip``): some GDAL
        # drivers look at the suffix, the format itself was decided by its bytes at upload.
        path = Path(folder) / Path(name).name
        size, digest = _download(storage=storage, name=name, target=path)
        if (size, digest) != (job.size_bytes, job.sha256):
            raise UnreadableFile(
                f"the stored copy of the file ({size} bytes) is not the file that was "
                f"uploaded ({job.size_bytes} bytes, SHA-256 {job.sha256[:16]}…); "
                "upload it again"
            )
        logger.info("import job %s: %s bytes fetched from storage", job.pk, size)
        yield path


def stored_file_stream(*, storage: Storage, name: str) -> IO[bytes]:
    """``name`` opened for reading as a stream. django-storages' S3File would first copy the
    whole object into a spooled temporary file of its own (a second copy of up to 2 GiB on
    disk) before the first byte; the body of its boto3 object is read as it arrives.
    Raises ``FileNotFoundError`` when there is no such file."""
    opened = storage.open(name, "rb")
    obj = getattr(opened, "obj", None)
    if obj is None:
        return opened
    opened.close()
    return obj.get()["Body"]


def _download(*, storage: Storage, name: str, target: Path) -> tuple[int, str]:
    """Stream ``name`` from ``storage`` into ``target``; its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    try:
        source = stored_file_stream(storage=storage, name=name)
    except FileNotFoundError:
        raise UnreadableFile(f"the stored file {name!r} is gone; upload it again") from None
    with source, open(target, "wb") as out:
        for chunk in iter(lambda: source.read(DOWNLOAD_CHUNK_BYTES), b""):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
