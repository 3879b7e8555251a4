"""Downloads for researchers: a selection of places as GeoParquet or CSV.

==========  ==================================================================================
format      what the file holds
==========  ==================================================================================
parquet     GeoParquet 1.1.0: ``geometry`` (the place's point, WKB) with a ``bbox`` struct
            column declared as its covering, ``footprint`` (WKB MultiPolygon, null where
            none), the place fields typed, and in the key-value metadata ``geo`` plus
            ``places:datasets`` (licence and attribution of each dataset in the file)
csv         the places list's CSV columns (``id``, ``lon``, ``lat``, every field, cells made
            spreadsheet-safe by the one rule of ``places.csv_cells``), then ``footprint_wkt``
==========  ==================================================================================

A selection is the places list's filters (``places.serving.query.PlaceQuery``). Small ones
(at most ``DOWNLOADS_SYNC_MAX_PLACES``) are written in the request; bigger ones by a Celery
task (``download_job_build``) reading the replica, into a file under ``MEDIA_ROOT`` named by
the job. A job is named by the selection, the format and the data and region versions of
the selection (see ``analytics.models_downloads``): while they hold, everyone asking gets
the same file; a changed place names a new job, and ``downloads_clean`` removes the files of
versions that have passed.

The rows are written by PostgreSQL (``ST_AsBinary``, ``ST_AsText``, the CSV cells) and read
through a server-side cursor ``DOWNLOADS_CHUNK_ROWS`` at a time; each chunk becomes one
Parquet row group (or a run of CSV lines), so a worker holds one chunk whatever the size of
the selection. Everything the file says (the count, the extents, the datasets, the rows, the
versions checked) is read in one REPEATABLE READ snapshot, so they agree.

CRS: the ``geo`` metadata leaves ``crs`` out, which the specification defines as OGC:CRS84,
that is WGS 84 with longitude first. That is exactly what is stored (SRID 4326 in PostGIS,
x = longitude) and written. Writing EPSG:4326's PROJJSON instead would declare latitude
first, which readers that honour the axis order would then swap.

Modules: ``selectors`` (a selection: its versions, count, facts and read snapshot),
``files`` (the writers) and ``services`` (the jobs: request, build, progress, clean-up).
"""
