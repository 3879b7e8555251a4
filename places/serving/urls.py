"""Routes of the public read API, the viewport and the vector tiles.

The ``api/v1/`` routes keep the ``places`` namespace (``places:place-list``); the viewport and
tile routes are named without one, as they always were.
"""

from django.urls import include, path, re_path

from places.serving import apis, tile_apis, viewport_apis

# Anything word-like is routed, so that a bad coordinate is a 400 naming it, not a 404.
TILE = r"(?P<z>-?\w+)/(?P<x>-?\w+)/(?P<y>-?\w+)\.pbf"

api_patterns = [
    path("places/", apis.PlaceListApi.as_view(), name="place-list"),
    path("places/<int:pk>/", apis.PlaceDetailApi.as_view(), name="place-detail"),
    path("regions/", apis.RegionListApi.as_view(), name="region-list"),
    path("regions/<int:pk>/", apis.RegionDetailApi.as_view(), name="region-detail"),
    path("datasets/", apis.DatasetListApi.as_view(), name="dataset-list"),
    path("datasets/<slug:slug>/", apis.DatasetDetailApi.as_view(), name="dataset-detail"),
]

urlpatterns = [
    path("api/v1/", include((api_patterns, "places"))),
    path("api/v1/viewport/", viewport_apis.ViewportApi.as_view(), name="viewport"),
    re_path(rf"^tiles/places/{TILE}$", tile_apis.PlaceTileApi.as_view(), name="place-tile"),
    re_path(rf"^tiles/regions/{TILE}$", tile_apis.RegionTileApi.as_view(), name="region-tile"),
    path("tiles/places.json", tile_apis.PlaceTileJsonApi.as_view(), name="place-tilejson"),
    path("tiles/regions.json", tile_apis.RegionTileJsonApi.as_view(), name="region-tilejson"),
]
