"""The site's own pages (HTML) and the favicon redirect."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.generic import RedirectView

from places import selectors
from places.basemap import basemap_config
from places.models import Place, PlaceStatus, Religion
from places.serving.query import STATUS_CHOICES


def home(request: HttpRequest) -> HttpResponse:
    context = {
        "datasets": selectors.dataset_list(),
        "place_estimate": selectors.table_row_estimate(model=Place),
    }
    return render(request, "home.html", context)


def map_view(request: HttpRequest) -> HttpResponse:
    """The WebGL map over our own vector tiles (the page's behaviour is in places/map.js)."""
    datasets = list(selectors.dataset_list())
    config = {
        "religions": dict(Religion.choices),
        "datasets": {
            d.slug: {
                "id": d.pk,
                "name": d.name or d.slug,
                "licence": d.licence,
                "attribution": d.attribution,
                "source_url": d.source_url,
            }
            for d in datasets
        },
        "isStaff": request.user.is_staff,
        **basemap_config(),
    }
    context = {
        "religions": Religion.choices,
        "datasets": selectors.dataset_list_with_places(),
        "denominations": selectors.place_denominations(),
        "statuses": STATUS_CHOICES,
        "map_config": config,
    }
    return render(request, "map.html", context)


def place_detail(request: HttpRequest, place_id: int) -> HttpResponse:
    """A place's public page: facts, source and licence, a small map, nearby places and the
    public change history. A merged place sends its visitors to the place it went into."""
    place = selectors.place_public_get(place_id=place_id)
    if place is None:
        raise Http404("No such place.")
    if place.status == PlaceStatus.MERGED and place.merged_into_id:
        return redirect("place-detail", place_id=place.merged_into_id, permanent=True)
    context = {
        "place": place,
        "religion_label": Religion(place.religion).label if place.religion else "",
        "denominations": [d.replace("_", " ").capitalize() for d in place.denominations or []],
        "nearby": selectors.place_nearby_list(place=place),
        "history": selectors.place_public_history(place=place),
        "map_config": {
            "lon": place.location.x,
            "lat": place.location.y,
            "id": place.pk,
            **basemap_config(),
        },
    }
    return render(request, "place_detail.html", context)


class FaviconRedirect(RedirectView):
    # Temporary: the target's hashed name changes with the icon.
    permanent = False

    def get_redirect_url(self, *args: object, **kwargs: object) -> str:
        # At request time: the hashed name is known once collectstatic has run.
        return static("places/favicon.svg")
