"""The GDAL drivers uploads may be opened with, and GDAL locked down to them in every process.

Importing pyogrio costs a process 22 MiB beyond GDAL and pyarrow, which GeoDjango and the
importer's modules load anyway, and, where the test requirements installed them, geopandas
and shapely on top. Only processes that open a geo file pay it: pyogrio is imported by
``ingestion.readers.geo`` and nowhere else (ruff's banned-api rule keeps it so), and that
module locks GDAL down again right after the import, which registers every driver. Every
process still starts locked down, whether or not it ever reads a file:
``IngestionConfig.ready`` calls ``lock_down`` first thing, on pyogrio's GDAL library, which
GeoDjango loads too (``config.gdal``), and on the one GeoDjango loaded if another.
"""

from __future__ import annotations

ALLOWED_DRIVERS = {"ESRI Shapefile", "GeoJSON", "GeoJSONSeq", "GPKG"}
# The upload formats (``ingestion.readers.FORMATS``) that GDAL opens, through ``GeoReader``.
GDAL_FORMATS = {"geojson", "geojsonseq", "shapefile", "gpkg"}


def lock_down() -> list[str]:
    """Leave GDAL with ``ALLOWED_DRIVERS`` only, in this process, in pyogrio's library and in
    the one GeoDjango loaded (another file when ``GDAL_LIBRARY_PATH`` names one, or when it
    found a system GDAL itself); returns what remains.

    Raises ``ImproperlyConfigured`` unless exactly the allowed drivers remain in each, or when
    there is no GDAL to lock: with none left, GeoDjango would register every driver again the
    first time it is asked for one.
    """
    from django.contrib.gis.gdal.libgdal import lgdal
    from django.core.exceptions import ImproperlyConfigured

    from config.gdal import allow_only_drivers, pyogrio_gdal

    libraries = sorted({name for name in (pyogrio_gdal()[0], lgdal._name) if name})
    if not libraries:
        raise ImproperlyConfigured("no GDAL library found to lock its drivers down")
    remaining: list[str] = []
    for library in libraries:
        remaining = allow_only_drivers(ALLOWED_DRIVERS, library=library)
        if set(remaining) != ALLOWED_DRIVERS:
            raise ImproperlyConfigured(
                f"GDAL ({library}) kept the drivers {remaining}, not {sorted(ALLOWED_DRIVERS)}"
            )
    return remaining
