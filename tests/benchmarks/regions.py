"""The bundled boundaries every benchmark database starts with (Django must be set up)."""

from __future__ import annotations

from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "ingestion" / "sample_data"


def load_sample_regions(*, districts: bool = True) -> None:
    """Natural Earth countries and, unless told otherwise, the ONS districts: the targets
    of the importer's point in polygon, as ``make run`` loads them."""
    from ingestion.services.regions import PRESETS, region_load
    from places.services import dataset_get_or_create

    region_load(
        path=SAMPLE / "ne_50m_admin_0_countries.geojson.gz",
        source=PRESETS["ne-countries"],
        dataset=dataset_get_or_create(slug="natural-earth"),
    )
    if districts:
        region_load(
            path=SAMPLE / "ons_lad_2024_uk_generalised.geojson.gz",
            source=PRESETS["ons-lad"],
            dataset=dataset_get_or_create(slug="ons-lad-2024"),
        )
