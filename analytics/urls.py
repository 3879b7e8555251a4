from django.urls import path

from analytics import apis

app_name = "analytics"
urlpatterns = [path("stats/regions/", apis.RegionStatsApi.as_view(), name="region-stats")]
