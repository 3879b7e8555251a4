"""Layers' coordinate systems as EPSG codes, through GeoDjango's GDAL (no file is opened).

Apart from the geo reader so that the web processes, which check a job's layers, need not
load pyogrio (see ``ingestion.readers.drivers``).
"""

from __future__ import annotations

import re
from ctypes import POINTER, byref, c_char_p, c_int, c_void_p
from typing import Any

from ingestion.readers.base import UnreadableFile


def srid_from_crs(crs: str | None) -> int:
    """EPSG code of a layer's CRS; WGS84 when the file states none (GeoJSON's rule)."""
    if not crs:
        return 4326
    if m := re.fullmatch(r"EPSG:(\d{1,9})", crs.strip(), re.IGNORECASE | re.ASCII):
        return int(m[1])
    from django.contrib.gis.gdal import GDALException, SpatialReference, SRSException

    try:
        srs = SpatialReference(crs)
    except (GDALException, SRSException, ValueError, TypeError):
        srs = None
    srid = None
    if srs is not None:
        try:
            srs.identify_epsg()
            srid = srs.srid
        except (GDALException, SRSException):
            srid = None
        if srid is None:
            srid = _closest_epsg(srs)
    if srid is None:
        raise UnreadableFile(f"cannot identify the coordinate system {crs[:80]!r}")
    return int(srid)


def _closest_epsg(srs: Any) -> int | None:
    """The EPSG code GDAL's matcher is sure of (confidence ≥ 90), for a definition without id.

    ``identify_epsg`` only recognises a few families; a PROJJSON or WKT of British National
    Grid that lost its ``id`` needs GDAL's full matcher (``OSRFindMatches``), which Django
    does not wrap. The functions are looked up afresh (``lgdal[name]``) so that Django's own
    prototypes of the same symbols keep their types.
    """
    from django.contrib.gis.gdal.libgdal import lgdal
    from django.contrib.gis.gdal.prototypes import srs as capi

    find = lgdal["OSRFindMatches"]
    find.argtypes = [c_void_p, POINTER(c_char_p), POINTER(c_int), POINTER(POINTER(c_int))]
    find.restype = POINTER(c_void_p)
    free_matches = lgdal["OSRFreeSRSArray"]
    free_matches.argtypes, free_matches.restype = [POINTER(c_void_p)], None
    free = lgdal["VSIFree"]  # what the CPLFree macro calls
    free.argtypes, free.restype = [c_void_p], None
    count = c_int(0)
    confidence = POINTER(c_int)()
    matches = find(srs.ptr, None, byref(count), byref(confidence))
    try:
        for i in range(count.value):
            if confidence[i] >= 90 and capi.get_auth_name(matches[i], None) == "EPSG":
                code = capi.get_auth_code(matches[i], None)
                if code and code.isascii() and code.isdigit():
                    return int(code)
        return None
    finally:
        if matches:
            free_matches(matches)
        if confidence:
            free(confidence)
