"""The GDAL drivers uploads may be opened with, and GDAL locked down to them in every process.

Importing pyogrio costs a process 130 MiB (GDAL's drivers, pyarrow) and, where the test
requirements installed them, 80 more (pandas, geopandas, shapely). Only processes that open
a geo file pay it: pyogrio is imported by ``ingestion.readers.geo`` and nowhere else (ruff's
banned-api rule keeps it so), and that module locks GDAL down again right after the import,
which registers every driver. Every process still starts locked down, whether or not it
ever reads a file: ``IngestionConfig.ready`` calls ``lock_down`` on the GDAL library that
GeoDjango has loaded, the same file as pyogrio's (``config.gdal``).
"""

from __future__ import annotations

ALLOWED_DRIVERS = {"ESRI Shapefile", "GeoJSON", "GeoJSONSeq", "GPKG"}
# The upload formats (``ingestion.readers.FORMATS``) that GDAL opens, through ``GeoReader``.
GDAL_FORMATS = {"geojson", "geojsonseq", "shapefile", "gpkg"}


def lock_down() -> list[str]:
    """Leave GDAL with ``ALLOWED_DRIVERS`` only, in this process; returns what remains."""
    from config.gdal import allow_only_drivers

    return allow_only_drivers(ALLOWED_DRIVERS)
