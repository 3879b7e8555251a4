"""What a page needs to draw the map's basemap: MAP_STYLE_URL, or our offline files.

The map page, the place page and the admin's location widget share it, so that they all
draw the same basemap.
"""

from __future__ import annotations

from django.conf import settings
from django.templatetags.static import static

# Source id -> the file bin/build-basemap writes into static/places/basemap/.
OFFLINE_FILES = {
    "land": "ne_50m_land.geojson",
    "borders": "ne_50m_borders.geojson",
    "water": "ne_50m_water.geojson",
    "towns": "ne_50m_places.geojson",
}


def basemap_config() -> dict[str, object]:
    """``styleUrl`` (empty: draw the offline basemap) and the offline files' URLs."""
    return {
        "styleUrl": settings.MAP_STYLE_URL,
        "basemap": {
            source: static(f"places/basemap/{name}") for source, name in OFFLINE_FILES.items()
        },
    }
