"""Point GeoDjango at the GDAL that ships inside the pyogrio wheel.

Debian 12's GDAL is 3.6; GeoDjango warns (gis.W001) that GDAL < 3.9 cannot stop a spatial
reference definition from reading files. pyogrio's wheel bundles GDAL 3.12 together with its
own PROJ database, and the importers already load that library, so one GDAL serves both.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path


def pyogrio_gdal() -> tuple[str | None, dict[str, str]]:
    """Return the bundled libgdal path and the data-directory variables it needs."""
    try:
        import pyogrio
    except ImportError:  # pragma: no cover - pyogrio is a pinned requirement
        return None, {}
    package = Path(pyogrio.__file__).resolve().parent
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
