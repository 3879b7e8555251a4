from django.urls import path

from analytics import apis, download_apis

app_name = "analytics"
urlpatterns = [path("stats/regions/", apis.RegionStatsApi.as_view(), name="region-stats")]
urlpatterns += [
    path("downloads/places/", download_apis.PlaceDownloadApi.as_view(), name="place-download"),
    path("downloads/<int:pk>/", download_apis.DownloadJobApi.as_view(), name="download-job"),
    path("downloads/<int:pk>/file/", download_apis.DownloadFileApi.as_view(), name="download-file"),
]
