"""URL routes: each app's own URLconf, plus the project-wide admin and OpenAPI schema.

``/metrics`` is routed by ``places.urls``, behind a check of the client's network.
"""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

urlpatterns = [
    path("", include("places.urls")),
    path("", include("places.serving.urls")),
    path("api/v1/", include("analytics.urls")),
    path("api/v1/edge/", include("ingestion.edge.urls")),
    path("api/v1/sensors/latest/", include("ingestion.edge.sensor_map")),
    path("ogc/", include("places.ogc.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its start-up script as a file: the docs need no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
]
