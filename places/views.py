"""The site's own pages (HTML) and the favicon redirect."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.views.generic import RedirectView

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


class FaviconRedirect(RedirectView):
    # Temporary: the target's hashed name changes with the icon.
    permanent = False

    def get_redirect_url(self, *args: object, **kwargs: object) -> str:
        # At request time: the hashed name is known once collectstatic has run.
        return static("places/favicon.svg")
