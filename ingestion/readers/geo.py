"""Geo files through pyogrio (GDAL 3.12 from its wheel): Shapefile, GeoJSON, GeoJSONSeq, GPKG."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from itertools import islice
from pathlib import Path

import pyarrow as pa

from config.gdal import skip_vrt
from ingestion.readers.base import (
    BATCH_ROWS,
    MAX_CELL_BYTES,
    Batch,
    Layer,
    UnreadableFile,
    as_text,
    cap_arrow_cells,
    cell_preview,
    check_columns,
    first_line,
    too_large_detail,
)
from ingestion.readers.drivers import ALLOWED_DRIVERS, GDAL_FORMATS, lock_down
from ingestion.readers.feature_ids import feature_id_column, feature_ids
from ingestion.readers.safety import check_gzip, check_zip, is_gzip, reject_bad_wkb

# GDAL_SKIP must be in the environment before GDAL registers its drivers.
skip_vrt()

# The one module that imports pyogrio (ruff's banned-api rule): see ingestion.readers.drivers.
import pyogrio  # noqa: E402, TID251
import pyogrio.errors  # noqa: E402, TID251
from pyogrio.raw import open_arrow  # noqa: E402, TID251

# pyogrio's import registered every GDAL driver again: only the allowed ones stay, before
# anything can open a file with it (IngestionConfig.ready did the same at start-up).
lock_down()
__all__ = ["ALLOWED_DRIVERS", "GDAL_ERRORS", "GDAL_FORMATS", "GeoReader"]
# What GDAL raises for input it cannot read; anything else is a bug worth a traceback.
GDAL_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.FeatureError,
    pyogrio.errors.CRSError,
    pa.ArrowException,
    OSError,
)


class GeoReader:
    """Shapefile (zipped), GeoJSON and GeoJSONSeq (plain or gzip) and GeoPackage.

    A GeoJSON file's Feature ids come out as the column ``id`` (``fid`` or ``@id`` when a
    property is called ``id``) exactly as the file writes them, integers included, which GDAL
    keeps only as FIDs (see ``ingestion.readers.feature_ids``).
    """

    has_geometry = True

    def __init__(self, path: Path, fmt: str) -> None:
        if fmt not in GDAL_FORMATS:
            raise UnreadableFile(f"format {fmt} is not a GDAL vector format")
        self.path = path
        self.format = fmt
        source = str(path)
        # A zip's shapefiles by layer name: the member's path without ``.shp``, so that two
        # folders may each hold a ``points.shp``. GDAL opens only the folder it is given, so
        # each is opened by its own path inside the zip.
        self.shapefiles: dict[str, str] = {}
        if fmt in {"geojson", "geojsonseq"} and is_gzip(path):
            check_gzip(path)
            source = f"/vsigzip/{path}"
        elif fmt == "shapefile":
            source = f"/vsizip/{path}"
            self.shapefiles = {member[:-4]: member for member in check_zip(path)}
        # The prefix makes GDAL use this driver and no other, whatever the file's name says.
        self.source = f"GeoJSONSeq:{source}" if fmt == "geojsonseq" else source
        # GeoJSON has one layer; None until its fields are known.
        self._id_column: tuple[str | None] | None = None

    def feature_id_column(self, fields: list[str] | None = None) -> str | None:
        """The column added for the Feature ids GDAL does not expose (GeoJSON only), or None.

        Decided once per reader from GDAL's ``fields`` (read here when not given) and the
        file's first features, so the layer's columns and every batch agree.
        """
        if self.format != "geojson":
            return None
        if self._id_column is None:
            if fields is None:
                fields = [str(f) for f in pyogrio.read_info(self.source)["fields"]]
            self._id_column = (feature_id_column(self.path, self.format, fields),)
        return self._id_column[0]

    def feature_ids(self) -> Generator[str | None, None, None]:
        """The Feature ids in feature order, for the column ``feature_id_column`` names."""
        return feature_ids(self.path)

    def layer_source(self, layer: str) -> tuple[str, str | int]:
        """What GDAL opens for a layer: the data source and the layer within it."""
        if self.format != "shapefile":
            return self.source, layer
        if layer not in self.shapefiles:
            raise UnreadableFile(f"the zip holds no shapefile {layer[:80]!r}")
        # A shapefile holds one layer, whatever its name.
        return f"{self.source}/{self.shapefiles[layer]}", 0

    def first_records(self, layer: str, count: int) -> tuple[list[str], str, list[dict]]:
        """A layer's fields, geometry column and first ``count`` features as dicts (WKB
        geometries), in one read of the first batch; for the admin's sample of a file."""
        source, within = self.layer_source(layer)
        try:
            with open_arrow(source, layer=within, batch_size=count, use_pyarrow=True) as (
                meta,
                arrow,
            ):
                geometry = meta.get("geometry_name") or "wkb_geometry"
                names = [str(f) for f in meta["fields"]]
                first = next(iter(arrow), None)
        except GDAL_ERRORS as exc:
            raise UnreadableFile(f"GDAL cannot read the file: {first_line(exc)}") from None
        return names, geometry, (first.to_pylist()[:count] if first is not None else [])

    def _listed(self) -> list[tuple[str, str | None]]:
        if self.format != "shapefile":
            return [(str(name), kind) for name, kind in pyogrio.list_layers(self.source)]
        return [(name, None) for name in self.shapefiles]

    def layers(self) -> list[Layer]:
        try:
            layers = []
            for name, listed_type in self._listed():
                info = pyogrio.read_info(*self.layer_source(name))
                geometry_type = listed_type or info["geometry_type"]
                if info["driver"] not in ALLOWED_DRIVERS:
                    raise UnreadableFile(f"format {info['driver']} is not accepted")
                columns = [str(c) for c in info["fields"]]
                id_column = self.feature_id_column(columns)
                if id_column and id_column not in columns:
                    columns.append(id_column)
                check_columns(columns, what=f"layer {str(name)[:80]!r}")
                layers.append(
                    Layer(
                        name=name,
                        geometry_type=geometry_type,
                        features=int(info["features"]) if info["features"] >= 0 else None,
                        crs=info["crs"],
                        columns=columns,
                    )
                )
        except UnicodeError:
            raise UnreadableFile("the file's field names are not valid UTF-8") from None
        except GDAL_ERRORS as exc:
            raise UnreadableFile(f"GDAL cannot read the file: {first_line(exc)}") from None
        if layers and all(layer.features == 0 for layer in layers):
            raise UnreadableFile("the file holds no features")
        return layers

    def batches(self, layer: str) -> Generator[Batch, None, None]:
        ids: Generator[str | None, None, None] | None = None
        try:
            source, within = self.layer_source(layer)
            with open_arrow(source, layer=within, batch_size=BATCH_ROWS, use_pyarrow=True) as (
                meta,
                reader,
            ):
                # pyogrio names the WKB column after the layer's geometry column (GeoPackage:
                # usually "geom"), or "wkb_geometry" when the format has no name for it.
                geometry = meta.get("geometry_name") or "wkb_geometry"
                names = [str(f) for f in meta["fields"]]
                id_column = self.feature_id_column(names)
                if id_column:
                    ids = self.feature_ids()
                for record_batch in reader:
                    rejects: dict[int, tuple[str, str]] = {}
                    capped = cap_arrow_cells(record_batch, names, rejects)
                    columns: dict[str, pa.Array | list[str | None]] = {
                        n: as_text(capped[n], name=n, rejects=rejects) for n in names
                    }
                    if ids is not None and id_column:
                        columns[id_column] = _next_ids(
                            ids, record_batch.num_rows, name=id_column, rejects=rejects
                        )
                    wkb = None
                    if geometry in record_batch.schema.names:
                        # GDAL passes on what the file says: unclosed rings, one-point lines.
                        wkb = record_batch.column(geometry).to_pylist()
                        reject_bad_wkb(wkb, rejects)
                    yield Batch.of(
                        columns=columns, wkb=wkb, num_rows=record_batch.num_rows, rejects=rejects
                    )
                if ids is not None and next(ids, _END) is not _END:
                    raise UnreadableFile(_IDS_UNMATCHED)
        except UnicodeError:
            raise UnreadableFile("the file's field names or values are not valid UTF-8") from None
        except GDAL_ERRORS as exc:
            raise UnreadableFile(f"GDAL cannot read the file: {first_line(exc)}") from None
        finally:
            if ids is not None:
                ids.close()


_END = object()
_IDS_UNMATCHED = (
    "the file's Feature ids cannot be matched to the features GDAL reads: their counts differ"
)


def _next_ids(
    ids: Iterator[str | None], count: int, *, name: str, rejects: dict[int, tuple[str, str]]
) -> list[str | None]:
    """The next ``count`` Feature ids, an over-long one cut and its row noted in ``rejects``."""
    values = list(islice(ids, count))
    if len(values) < count:
        raise UnreadableFile(_IDS_UNMATCHED)
    for i, value in enumerate(values):
        if value is not None and len(value) > MAX_CELL_BYTES // 4:
            size = len(value.encode("utf-8"))
            if size > MAX_CELL_BYTES:
                rejects.setdefault(i, ("cell_too_large", too_large_detail(name, size)))
                values[i] = cell_preview(value)
    return values
