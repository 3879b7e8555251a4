"""Point GeoDjango at the GDAL that ships inside the pyogrio wheel.

Debian 12's GDAL is 3.6; GeoDjango warns (gis.W001) that GDAL < 3.9 cannot stop a spatial
reference definition from reading files. pyogrio's wheel bundles GDAL 3.12 together with its
own PROJ database, and the importers already load that library, so one GDAL serves both.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path


def pyogrio_gdal() -> tuple[str | None, dict[str, str]]:
    """Return the bundled libgdal path and the data-directory variables it needs.

    The package is located, not imported: importing pyogrio registers GDAL's drivers, and
    ``GDAL_SKIP`` only counts if it is set before that.
    """
    spec = importlib.util.find_spec("pyogrio")
    if spec is None or spec.origin is None:  # pragma: no cover - pyogrio is pinned
        return None, {}
    package = Path(spec.origin).resolve().parent
    libs = sorted(glob.glob(str(package.parent / "pyogrio.libs" / "libgdal-*.so*")))
    data = {
        "PROJ_DATA": str(package / "proj_data"),
        "GDAL_DATA": str(package / "gdal_data"),
    }
    return (libs[0] if libs else None), data


def skip_vrt() -> None:
    """Never let GDAL follow an uploaded file to other files (VRT and friends).

    Added to any ``GDAL_SKIP`` already set rather than replaced by it, and called before
    GDAL registers its drivers.
    """
    skipped = os.environ.get("GDAL_SKIP", "").replace(",", " ").split()
    if "OGR_VRT" not in skipped:
        os.environ["GDAL_SKIP"] = " ".join([*skipped, "OGR_VRT"])


def configure() -> str | None:
    """Set GDAL/PROJ environment defaults and return the library path (or None)."""
    library, data = pyogrio_gdal()
    for key, value in data.items():
        os.environ.setdefault(key, value)
    skip_vrt()
    return os.environ.get("GDAL_LIBRARY_PATH") or library


def allow_only_drivers(allowed: Iterable[str], *, library: str) -> list[str]:
    """Deregister every GDAL driver (vector and raster) whose name is not in ``allowed``.

    ``GDAL_SKIP`` can only name drivers to drop, and GDAL has dozens that read other files
    or URLs (VRT, WFS, HTTP, MEM's data pointers, ...), more with each release. pyogrio does
    not pass GDAL an allowed-driver list when it opens a file, so the list is enforced here,
    on the driver manager of ``library``, the file of a GDAL the process loaded
    (``ingestion.readers.drivers.lock_down`` passes pyogrio's and GeoDjango's). Every
    driver is registered first (``GDALAllRegister``, which also runs when pyogrio is
    imported and brings back deregistered ones), so that the result does not depend on what
    ran before. Idempotent; returns the drivers that remain.
    """
    # The same file as the one already loaded, so the same library (dlopen shares it).
    lib = ctypes.CDLL(library)
    lib.GDALGetDriverCount.restype = ctypes.c_int
    lib.GDALGetDriver.argtypes = [ctypes.c_int]
    lib.GDALGetDriver.restype = ctypes.c_void_p
    lib.GDALGetDescription.argtypes = [ctypes.c_void_p]
    lib.GDALGetDescription.restype = ctypes.c_char_p
    lib.GDALDeregisterDriver.argtypes = [ctypes.c_void_p]
    lib.GDALDeregisterDriver.restype = None
    lib.GDALAllRegister.restype = None
    lib.GDALAllRegister()
    keep = set(allowed)
    remaining = []
    # Backwards: deregistering shifts the indices of the drivers after it.
    for index in reversed(range(lib.GDALGetDriverCount())):
        driver = lib.GDALGetDriver(index)
        name = (lib.GDALGetDescription(driver) or b"").decode()
        if name in keep:
            remaining.append(name)
        else:
            # Deregistered, not destroyed: nothing can open a file with it any more, and a
            # handle some library still holds stays valid.
            lib.GDALDeregisterDriver(driver)
    return sorted(remaining)


def geos_library() -> str | None:
    """Debian's GEOS C library; GeoDjango's own lookup needs the -dev symlink otherwise."""
    if os.environ.get("GEOS_LIBRARY_PATH"):
        return os.environ["GEOS_LIBRARY_PATH"]
    for pattern in (
        "/usr/lib/*/libgeos_c.so.1",
        "/usr/lib/libgeos_c.so.1",
        "/usr/local/lib/libgeos_c.so*",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None
