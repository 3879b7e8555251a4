"""Geometries written as text in a table's column: WKT, EWKT or hex (E)WKB, as WKB.

Parsed by GEOS (GeoDjango's own library, so nothing beyond what the app needs already) in the
staging thread: PostgreSQL raises on text it cannot parse, which would fail the whole file,
whereas here a value that does not parse rejects its row alone. The WKB then takes the geo
files' path in SQL (reprojection check, repair, footprint and point on surface).
"""

from __future__ import annotations

import logging
import re
import threading

from django.contrib.gis.geos import GEOSException, GEOSGeometry, WKBWriter

from ingestion.readers import wkb_problem

# Columns hold longitude/latitude; an EWKT or EWKB that names another system is refused
# per row rather than taken for WGS84.
WGS84 = 4326
_PREVIEW = 60


class _GeosMessages(logging.Filter):
    """GEOS reports why a text does not parse only through the ``django.contrib.gis`` log,
    at error level. While a thread parses column values, its messages are kept (as the
    rejection's detail) instead of logged: a file of bad values is not an error of the app."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        kept: list[str] | None = getattr(self.local, "kept", None)
        if kept is None:
            return True
        kept.append(record.getMessage().removeprefix("GEOS_ERROR: ").strip())
        return False


_MESSAGES = _GeosMessages()
logging.getLogger("django.contrib.gis").addFilter(_MESSAGES)


def geometry_wkb(values: list[str]) -> tuple[list[bytes | None], list[tuple[str, str] | None]]:
    """Each non-empty value as 2D WKB (heights and measures dropped), or why its row is
    rejected as ``(reason, detail)``; empty values give neither."""
    writer = WKBWriter()
    writer.outdim = 2
    wkb: list[bytes | None] = [None] * len(values)
    problems: list[tuple[str, str] | None] = [None] * len(values)
    _MESSAGES.local.kept = []
    try:
        for i, value in enumerate(values):
            if not value:
                continue
            _MESSAGES.local.kept.clear()
            try:
                geometry = GEOSGeometry(_EWKT_MEASURES.sub(r"\1 M", value))
            except (GEOSException, ValueError, TypeError) as exc:
                why = _MESSAGES.local.kept[-1] if _MESSAGES.local.kept else str(exc)
                problems[i] = (
                    "invalid_geometry",
                    f"not WKT, EWKT or hex WKB ({why[:120]}): {_preview(value)}",
                )
                continue
            if geometry.empty:
                # ``POINT EMPTY`` holds no position (and has no WKB): the row reads as one
                # whose geometry cell is empty, so its lon/lat, if any, place it.
                continue
            if geometry.srid not in (None, WGS84):
                problems[i] = (
                    "bad_coordinates",
                    f"geometry is in EPSG:{geometry.srid}; geometry columns must be WGS84 "
                    "longitude/latitude (EPSG:4326)",
                )
                continue
            data = bytes(writer.write(geometry))
            if problem := wkb_problem(data):
                problems[i] = ("invalid_geometry", f"geometry is not usable: {problem}")
                continue
            wkb[i] = data
    finally:
        _MESSAGES.local.kept = None
    return wkb, problems


# PostGIS's EWKT writes a measured type as one word (``POINTM(1 2 3)``, what ST_AsEWKT
# gives), which GEOS does not read; ISO WKT spells it ``POINT M (1 2 3)``, which it does.
_EWKT_MEASURES = re.compile(
    r"\b(POINT|LINESTRING|POLYGON|MULTIPOINT|MULTILINESTRING|MULTIPOLYGON|GEOMETRYCOLLECTION)M"
    r"(?=\s*(?:\(|EMPTY\b))",
    re.IGNORECASE | re.ASCII,
)


def _preview(value: str) -> str:
    return repr(value if len(value) <= _PREVIEW else value[:_PREVIEW] + "…")


# A WKT type followed by Z, M or ZM, or a first coordinate of three or four numbers.
_WKT_DIMENSIONS = re.compile(
    r"^\s*(?:SRID=-?\d+;)?\s*[A-Z]+\s*(?:ZM?|M)\b|^[^(]*\(+\s*(?:[-+\w.]+\s+){2}[-+\w.]+\s*[,)]",
    re.IGNORECASE | re.ASCII,
)
_HEX = re.compile(r"[0-9A-Fa-f]{10,}")
_LAYER_DIMENSIONS = re.compile(r"\b(?:ZM?|M|25D|3D)\b", re.IGNORECASE | re.ASCII)


def has_heights_or_measures(value: str | bytes | None) -> bool:
    """Whether a geometry (WKB, hex WKB or WKT) or a layer's geometry type (``Point Z``)
    has heights or measures, which the import drops."""
    if not value:
        return False
    if isinstance(value, str):
        text = value.strip().rstrip("…")  # a sample's value may be cut short
        if not _HEX.fullmatch(text):
            return bool(_WKT_DIMENSIONS.search(text) or _LAYER_DIMENSIONS.search(text))
        value = bytes.fromhex(text[:10])  # the header is all that is read
    if len(value) < 5 or value[0] not in (0, 1):
        return False
    code = int.from_bytes(value[1:5], "little" if value[0] == 1 else "big")
    # EWKB flags, or ISO codes 1001-3007 (Z, M, ZM).
    return bool(code & 0xC0000000) or (code & 0x0FFFFFFF) // 1000 in (1, 2, 3)
