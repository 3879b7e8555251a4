"""Checks that run before any parser sees an upload: archives, compression bombs, WKB bytes."""

from __future__ import annotations

import struct
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

from ingestion.readers.base import (
    EXPANSION_RATIO_FLOOR,
    MAX_EXPANDED_BYTES,
    MAX_EXPANSION_RATIO,
    UnreadableFile,
)

GZIP_MAGIC = b"\x1f\x8b"
SHAPEFILE_MEMBERS = {".shp", ".shx", ".dbf", ".prj", ".cpg", ".qpj", ".sbn", ".sbx", ".xml", ".txt"}
TEXT_MEMBERS = {"README", "LICENSE", "LICENCE", "COPYING"}
# The Finder's zip puts resource forks beside each file; they are no layer and no threat.
MACOS_FORKS = "__MACOSX/"
_READ_CHUNK = 1 << 20
_INFLATE_CHUNK = 1 << 22


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def check_zip(path: Path) -> list[str]:
    """Refuse zips that could escape, explode or smuggle in other formats.

    Returns the ``.shp`` members in the zip's order, wherever they sit (people zip the folder a
    shapefile is in as often as its files): each is a layer.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnreadableFile(f"not a readable zip file: {exc}") from None
    with archive:
        total = 0
        shp: list[str] = []
        for info in archive.infolist():
            name = info.filename
            if name.startswith(("/", "\\")) or ".." in Path(name).parts or ":" in name:
                raise UnreadableFile(f"zip member has an unsafe path: {name!r}")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnreadableFile(f"zip member is a symbolic link: {name!r}")
            if info.is_dir():
                continue
            forks = name.startswith(MACOS_FORKS)
            suffix = Path(name).suffix.lower()
            # Geofabrik ships a README; plain text beside the layers is harmless.
            if (
                not forks
                and suffix not in SHAPEFILE_MEMBERS
                and Path(name).name.upper() not in TEXT_MEMBERS
            ):
                raise UnreadableFile(f"zip member {name!r} is not part of a shapefile")
            if suffix == ".shp" and not forks:
                shp.append(name)
            total += info.file_size
            if info.compress_size and info.file_size / info.compress_size > MAX_EXPANSION_RATIO:
                raise UnreadableFile(
                    f"zip member {name!r} expands more than {MAX_EXPANSION_RATIO}×"
                )
        if total > MAX_EXPANDED_BYTES:
            raise UnreadableFile(
                f"zip expands to {total:,} bytes; the limit is {MAX_EXPANDED_BYTES:,} bytes"
            )
        if not shp:
            raise UnreadableFile("zip holds no .shp file")
    return shp


def check_gzip(path: Path) -> int:
    """Decompress the whole stream once, counting, and refuse a bomb; returns the full size.

    The header's size field is not trusted (it is the size modulo 4 GiB, and a file can hold
    several gzip members), so the stream is inflated in bounded steps and the check stops as
    soon as a limit is passed: a bomb costs a few milliseconds, not its expanded size.
    Results are remembered per file version, since inspect and apply open the same file.
    """
    stat = path.stat()
    return _check_gzip(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _check_gzip(path: str, size: int, mtime_ns: int) -> int:
    expanded = 0
    consumed = 0
    inflater = zlib.decompressobj(wbits=31)
    members = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                data = chunk
                while data:
                    if inflater.eof:
                        # Another gzip member may follow; padding zeros after the last are fine.
                        if not data.strip(b"\x00"):
                            break
                        inflater = zlib.decompressobj(wbits=31)
                    out = inflater.decompress(data, _INFLATE_CHUNK)
                    expanded += len(out)
                    left = len(inflater.unconsumed_tail) or len(inflater.unused_data)
                    consumed += len(data) - left
                    data = inflater.unconsumed_tail or inflater.unused_data
                    members += inflater.eof
                    _check_expansion(expanded, consumed)
            expanded += len(inflater.flush())
    except (zlib.error, OSError) as exc:
        raise UnreadableFile(f"the gzip data is damaged: {exc}") from None
    _check_expansion(expanded, consumed)
    if not inflater.eof and not members:
        raise UnreadableFile("the gzip data ends early (the file is cut short)")
    return expanded


def _check_expansion(expanded: int, consumed: int) -> None:
    if expanded > MAX_EXPANDED_BYTES:
        raise UnreadableFile(
            f"the gzip file expands beyond the limit of {MAX_EXPANDED_BYTES:,} bytes"
        )
    if expanded > EXPANSION_RATIO_FLOOR and expanded > MAX_EXPANSION_RATIO * max(consumed, 1):
        raise UnreadableFile(
            f"the gzip file expands more than {MAX_EXPANSION_RATIO}× (a compression bomb?)"
        )


# WKB geometry type codes PostGIS accepts from a file: points, lines, polygons, their
# multi-versions and collections (curves and surfaces are refused with the row).
_WKB_POINT, _WKB_LINE, _WKB_POLYGON = 1, 2, 3
_WKB_COLLECTIONS = {4, 5, 6, 7}
_MAX_WKB_DEPTH = 32
_POINT_2D = {b"\x01\x01\x00\x00\x00", b"\x00\x00\x00\x00\x01"}


def reject_bad_wkb(wkb: list[bytes | None], rejects: dict[int, tuple[str, str]]) -> None:
    """Drop geometries PostGIS would refuse with an error, noting their rows as invalid."""
    for i, value in enumerate(wkb):
        if value is not None and (problem := wkb_problem(value)):
            rejects.setdefault(i, ("invalid_geometry", f"geometry is not usable WKB: {problem}"))
            wkb[i] = None


def wkb_problem(data: bytes) -> str | None:
    """Why ``data`` is not WKB that PostGIS will parse, or None when it is.

    Checks the structure only (byte order, type codes, counts, lengths, closed rings of four
    points or more, lines of two points or more), which is what PostGIS refuses with an error
    that would otherwise abort the whole import; geometry validity is checked later in SQL.
    """
    if len(data) == 21 and data[:5] in _POINT_2D:  # the common case, in a fraction of the time
        return None
    try:
        end = _wkb_walk(memoryview(data), 0, 0)
    except (ValueError, struct.error) as exc:
        return str(exc) or "truncated"
    if end != len(data):
        return f"{len(data) - end} bytes after the end of the geometry"
    return None


def _wkb_walk(buf: memoryview, pos: int, depth: int) -> int:
    if depth > _MAX_WKB_DEPTH:
        raise ValueError("collections nested too deeply")
    if pos + 5 > len(buf):
        raise ValueError("truncated")
    order = buf[pos]
    if order not in (0, 1):
        raise ValueError(f"byte order flag {order} is neither 0 nor 1")
    u32 = "<I" if order == 1 else ">I"
    (code,) = struct.unpack_from(u32, buf, pos + 1)
    pos += 5
    dims = 2
    if code & 0x20000000:  # EWKB carries an SRID
        pos += 4
    dims += bool(code & 0x80000000) + bool(code & 0x40000000)  # EWKB Z and M flags
    code &= 0x0FFFFFFF
    iso, base = divmod(code, 1000)
    if iso > 3:
        raise ValueError(f"unknown geometry type {code}")
    dims += iso in (1, 3)
    dims += iso in (2, 3)
    point = 8 * dims
    if base == _WKB_POINT:
        return _need(buf, pos, point)
    if base == _WKB_LINE:
        n, pos = _count(buf, pos, u32, point)
        if n == 1:
            raise ValueError("a line needs at least 2 points")
        return _need(buf, pos, n * point)
    if base == _WKB_POLYGON:
        rings, pos = _count(buf, pos, u32, 4)
        for _ in range(rings):
            n, pos = _count(buf, pos, u32, point)
            if 0 < n < 4:
                raise ValueError("a polygon ring needs at least 4 points")
            end = _need(buf, pos, n * point)
            if n and buf[pos : pos + 16] != buf[end - point : end - point + 16]:
                raise ValueError("a polygon ring is not closed")
            pos = end
        return pos
    if base in _WKB_COLLECTIONS:
        parts, pos = _count(buf, pos, u32, 5)
        for _ in range(parts):
            pos = _wkb_walk(buf, pos, depth + 1)
        return pos
    raise ValueError(f"geometry type {code} is not supported")


def _count(buf: memoryview, pos: int, u32: str, item_bytes: int) -> tuple[int, int]:
    """A count, checked against the bytes left so that a forged count cannot loop for long."""
    (n,) = struct.unpack_from(u32, buf, pos)
    pos += 4
    if n * item_bytes > len(buf) - pos:
        raise ValueError(f"count {n} is larger than the data")
    return n, pos


def _need(buf: memoryview, pos: int, size: int) -> int:
    if pos + size > len(buf):
        raise ValueError("truncated")
    return pos + size
