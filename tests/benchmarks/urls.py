"""The app's URLs plus the baseline the benchmark compares against, built only here.

``/bench/naive/?in_bbox=…`` is the obvious way to serve places as GeoJSON: drf-gis'
``GeoFeatureModelSerializer`` with ``InBBoxFilter``, one Python object per place, unpaginated.

``BENCH_VIEWPORT_MAX_TILES`` (set by the benchmark only for its 100K-point view) widens the
viewport API's limit on how many tiles a view may span: a box holding 100K places of
realistic density is wider than a zoom-10 screen, and the limit is a guard for clients, not
part of the work measured.
"""

from __future__ import annotations

import os

from django.urls import path
from rest_framework import generics
from rest_framework_gis.filters import InBBoxFilter
from rest_framework_gis.serializers import GeoFeatureModelSerializer

from config.urls import urlpatterns as app_urlpatterns
from places.models import Place
from places.serving import viewport

if os.environ.get("BENCH_VIEWPORT_MAX_TILES"):
    viewport.MAX_TILES_ACROSS = int(os.environ["BENCH_VIEWPORT_MAX_TILES"])


class NaiveSerializer(GeoFeatureModelSerializer):
    class Meta:
        model = Place
        geo_field = "location"
        fields = ["id", "name", "religion", "dataset"]


class NaivePlaceList(generics.ListAPIView):
    queryset = Place.objects.all()
    serializer_class = NaiveSerializer
    filter_backends = [InBBoxFilter]
    bbox_filter_field = "location"
    bbox_filter_include_overlapping = True
    pagination_class = None


urlpatterns = [path("bench/naive/", NaivePlaceList.as_view()), *app_urlpatterns]
