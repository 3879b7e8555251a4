"""Routes of the site's own pages, the health probes and the metrics (the API is in
``places.serving``)."""

from django.urls import path

from places import apis, health, views

urlpatterns = [
    path("", views.home, name="home"),
    path("map/", views.map_view, name="map"),
    path("places/<int:place_id>/", views.place_detail, name="place-detail"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's, for one).
    # The review queue's API (proposals); reviewing is done in the admin.
    path("api/v1/proposals/", apis.ProposalListApi.as_view(), name="proposal-list"),
    # Any id is routed, so that one that is not a number is the API's JSON 404, not a page.
    path("api/v1/proposals/<str:pk>/", apis.ProposalDetailApi.as_view(), name="proposal-detail"),
    path("favicon.ico", views.FaviconRedirect.as_view(), name="favicon"),
    path("health/live/", health.live, name="health-live"),
    path("health/ready/", health.ready, name="health-ready"),
    # django-prometheus's view behind the network check (its own URLconf is not included).
    path("metrics", health.metrics, name="prometheus-django-metrics"),
]
