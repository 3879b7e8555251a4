"""Small regions drawn for tests, in the open South Atlantic where no real region lies.

    -30      -29      -28               -26               -22   lon
-40  +--------+--------+-----------------+-----------------+
     |  TA1 (admin1)   |                 |                 |
-42  +--------+--------+   TC1 (country) |  TC2 (country)  |
     |  TD1   |  TD2   |                 |                 |
-44  +--------+--------+-----------------+-----------------+
lat

Districts TD1 and TD2 share the border at -29; TC1 and TC2 share the one at -26.
"""

from __future__ import annotations

import json
from pathlib import Path

from ingestion.services.regions import RegionLoadResult, RegionSource, region_load
from places.services import dataset_get_or_create

COUNTRIES = RegionSource(
    level="country", code_field="code", name_field="name", code_system="test-country"
)
ADMIN1 = RegionSource(level="admin1", code_field="code", name_field="name", code_system="test-a1")
DISTRICTS = RegionSource(
    level="district", code_field="code", name_field="name", code_system="test-district"
)

Box = tuple[float, float, float, float]

COUNTRY_BOXES: dict[str, tuple[str, Box]] = {
    "TC1": ("Westland", (-30, -44, -26, -40)),
    "TC2": ("Eastland", (-26, -44, -22, -40)),
}
ADMIN1_BOXES: dict[str, tuple[str, Box]] = {"TA1": ("North March", (-30, -44, -28, -40))}
DISTRICT_BOXES: dict[str, tuple[str, Box]] = {
    "TD1": ("West Vale", (-30, -44, -29, -42)),
    "TD2": ("East Vale", (-29, -44, -28, -42)),
}


def square(box: Box) -> dict:
    x0, y0, x1, y1 = box
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def boundary_file(path: Path, regions: dict[str, tuple[str, Box]]) -> Path:
    """A GeoJSON boundary file with one square feature per region (properties code, name)."""
    features = [
        {"type": "Feature", "properties": {"code": code, "name": name}, "geometry": square(box)}
        for code, (name, box) in regions.items()
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def load(
    tmp_path: Path, source: RegionSource, regions: dict[str, tuple[str, Box]]
) -> RegionLoadResult:
    """Load the regions through the boundary loader, as ``manage.py load_regions`` does."""
    path = boundary_file(tmp_path / f"{source.code_system}.geojson", regions)
    dataset = dataset_get_or_create(slug=f"{source.code_system}-boundaries")
    return region_load(path=path, source=source, dataset=dataset)


def load_all(tmp_path: Path) -> None:
    """Countries, then the first-level region, then the districts (parents need countries)."""
    load(tmp_path, COUNTRIES, COUNTRY_BOXES)
    load(tmp_path, ADMIN1, ADMIN1_BOXES)
    load(tmp_path, DISTRICTS, DISTRICT_BOXES)
