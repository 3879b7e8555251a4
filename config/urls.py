"""URL routes: site, admin, API (v1), OpenAPI schema, health and metrics."""

from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import health
from places import tile_apis
from places.views import home, map_view


class _FaviconRedirect(RedirectView):
    # Temporary: the target's hashed name changes with the icon.
    permanent = False

    def get_redirect_url(self, *args: object, **kwargs: object) -> str:
        # At request time: the hashed name is known once collectstatic has run.
        return static("places/favicon.svg")


TILE = r"(?P<z>-?\w+)/(?P<x>-?\w+)/(?P<y>-?\w+)\.pbf"

urlpatterns = [
    path("", home, name="home"),
    path("map/", map_view, name="map"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("places.urls")),
    path("api/v1/", include("analytics.urls")),
    path("api/v1/viewport/", tile_apis.ViewportApi.as_view(), name="viewport"),
    re_path(rf"^tiles/places/{TILE}$", tile_apis.PlaceTileApi.as_view(), name="place-tile"),
    re_path(rf"^tiles/regions/{TILE}$", tile_apis.RegionTileApi.as_view(), name="region-tile"),
    path("tiles/places.json", tile_apis.PlaceTileJsonApi.as_view(), name="place-tilejson"),
    path("tiles/regions.json", tile_apis.RegionTileJsonApi.as_view(), name="region-tilejson"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's, for one).
    path(
        "favicon.ico",
        _FaviconRedirect.as_view(),
        name="favicon",
    ),
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ready, name="health-ready"),
    path("", include("django_prometheus.urls")),
]
