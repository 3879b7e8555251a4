"""The edge protocol v1, mounted at ``/api/v1/edge/`` by ``config.urls``."""

from django.urls import path

from ingestion.edge import apis

app_name = "edge"

urlpatterns = [
    path("observations/", apis.ObservationBatchApi.as_view(), name="observations"),
    path("changes/", apis.ChangesApi.as_view(), name="changes"),
    path("heartbeat/", apis.HeartbeatApi.as_view(), name="heartbeat"),
]
