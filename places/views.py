"""The site's own pages (HTML)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from places import selectors
from places.models import Place, Religion


def home(request: HttpRequest) -> HttpResponse:
    context = {
        "datasets": selectors.dataset_list(),
        "place_estimate": selectors.table_row_estimate(model=Place),
    }
    return render(request, "home.html", context)


def map_view(request: HttpRequest) -> HttpResponse:
    """The WebGL map over our own vector tiles."""
    return render(request, "map.html", {"religions": Religion.choices})
