from django.urls import path

from places import apis

app_name = "places"
urlpatterns = [
    path("places/", apis.PlaceListApi.as_view(), name="place-list"),
    path("places/<int:pk>/", apis.PlaceDetailApi.as_view(), name="place-detail"),
    path("regions/", apis.RegionListApi.as_view(), name="region-list"),
    path("regions/<int:pk>/", apis.RegionDetailApi.as_view(), name="region-detail"),
    path("datasets/", apis.DatasetListApi.as_view(), name="dataset-list"),
    path("datasets/<slug:slug>/", apis.DatasetDetailApi.as_view(), name="dataset-detail"),
]
