from django.urls import path

from analytics import apis, download_apis

app_name = "analytics"
urlpatterns = [path("stats/regions/", apis.RegionStatsApi.as_view(), name="region-stats")]
urlpatterns += [
    path("downloads/places/", download_apis.PlaceDownloadApi.as_view(), name="place-download"),
    path("downloads/<int:pk>/", download_apis.DownloadJobApi.as_view(), name="download-job"),
    path("downloads/<int:pk>/file/", download_apis.DownloadFileApi.as_view(), name="download-file"),
]
urlpatterns += [
    path("stats/summaries/", apis.RegionSummaryListApi.as_view(), name="summary-list"),
    path("stats/summaries/<int:region_id>/", apis.RegionSummaryApi.as_view(), name="summary"),
    path(
        "stats/summaries/<int:region_id>/series/",
        apis.RegionSeriesApi.as_view(),
        name="region-series",
    ),
    path("stats/compare/", apis.RegionCompareApi.as_view(), name="compare"),
    path("stats/rankings/", apis.RegionRankingApi.as_view(), name="rankings"),
    path(
        "stats/sensors/<int:sensor_id>/series/",
        apis.SensorSeriesApi.as_view(),
        name="sensor-series",
    ),
]
