"""GDAL can open uploads with the allow-listed drivers only: every other driver is gone from
the process, so a file that names or points at other files has nothing to open it with."""

from __future__ import annotations

import json
from pathlib import Path

import pyogrio
import pyogrio.errors
import pytest
from django.contrib.gis.gdal import Driver
from django.core.exceptions import ImproperlyConfigured

from ingestion.readers import ALLOWED_DRIVERS, UnreadableFile, drivers
from ingestion.readers.geo import GeoReader
from tests.subprocesses import python_output

FEATURE = {
    "type": "Feature",
    "properties": {"name": "St Mary"},
    "geometry": {"type": "Point", "coordinates": [-0.1, 51.5]},
}


def _geojson(path: Path) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [FEATURE]}))
    return path


def test_only_the_allowed_drivers_are_registered() -> None:
    assert set(pyogrio.list_drivers()) == ALLOWED_DRIVERS
    # GeoDjango loads the same library, so it sees the same (short) list.
    assert Driver.driver_count() == len(ALLOWED_DRIVERS)


def test_a_vrt_pointing_at_another_file_cannot_be_opened(tmp_path: Path) -> None:
    secret = _geojson(tmp_path / "elsewhere.geojson")
    assert pyogrio.read_info(secret)["features"] == 1  # the allowed driver still reads it
    vrt = tmp_path / "upload.vrt"
    vrt.write_text(
        f'<OGRVRTDataSource><OGRVRTLayer name="elsewhere">'
        f"<SrcDataSource>{secret}</SrcDataSource></OGRVRTLayer></OGRVRTDataSource>"
    )
    with pytest.raises(pyogrio.errors.DataSourceError, match="not recognized"):
        pyogrio.read_info(vrt)
    with pytest.raises(UnreadableFile, match="GDAL cannot read the file"):
        GeoReader(vrt, "geojson").layers()


@pytest.mark.parametrize(
    ("name", "content"),
    [
        # Formats GDAL reads out of the box, none of them wanted for uploads.
        ("points.csv", 'WKT,name\n"POINT (1 2)",a\n'),
        (
            "doc.kml",
            '<?xml version="1.0"?><kml xmlns="http://www.opengis.net/kml/2.2"><Placemark>'
            "<Point><coordinates>1,2</coordinates></Point></Placemark></kml>",
        ),
        (
            "gml.gml",
            '<?xml version="1.0"?><gml:FeatureCollection xmlns:gml="http://www.opengis.net/gml"/>',
        ),
    ],
)
def test_formats_outside_the_list_are_unknown_to_gdal(
    tmp_path: Path, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(pyogrio.errors.DataSourceError):
        pyogrio.read_info(path)


@pytest.mark.slow  # a new Python process with Django
def test_a_new_process_starts_with_the_short_list() -> None:
    """Django's app loading locks GDAL down in every process (web, worker, shell), before
    any code of ours imports the readers; the web's code never loads pyogrio (its import
    would register every driver again, and costs a worker 22 MiB, more with geopandas) nor
    pandas (57 MiB, installed for the tests), and the reader that does locks GDAL down again
    at once."""
    out = python_output(
        "import sys, django; django.setup(); import config.urls; "
        "from django.contrib.gis.gdal import Driver; "
        "print('pyogrio' in sys.modules or 'pandas' in sys.modules); "
        "print(','.join(sorted(Driver(i).name for i in range(Driver.driver_count())))); "
        "from ingestion.readers.geo import GeoReader; import pyogrio; "
        "print(','.join(sorted(pyogrio.list_drivers())))"
    )
    loaded, django_drivers, pyogrio_drivers = out.splitlines()[-3:]
    assert loaded == "False"
    assert django_drivers.split(",") == sorted(ALLOWED_DRIVERS)
    assert pyogrio_drivers.split(",") == sorted(ALLOWED_DRIVERS)


@pytest.mark.slow  # a new Python process with Django
def test_importing_pyogrio_elsewhere_would_undo_the_lock() -> None:
    """Why pyogrio is imported by ingestion.readers.geo alone (ruff's banned-api rule): its
    import registers every driver again, the ones deregistered at start-up included."""
    out = python_output(
        "import django; django.setup(); import pyogrio; print(len(pyogrio.list_drivers()))"
    )
    assert int(out.splitlines()[-1]) > len(ALLOWED_DRIVERS)


def test_lock_down_refuses_to_start_without_every_allowed_driver(monkeypatch) -> None:
    """With an allowed driver missing the lock is not what it claims (and with none left,
    GeoDjango would register them all again): start-up fails instead."""
    monkeypatch.setattr(drivers, "ALLOWED_DRIVERS", {*ALLOWED_DRIVERS, "NoSuchDriver"})
    with pytest.raises(ImproperlyConfigured, match="NoSuchDriver"):
        drivers.lock_down()
    assert set(pyogrio.list_drivers()) == ALLOWED_DRIVERS
