"""Admin building blocks shared by the apps: an offline map widget, cheap changelist counts."""

from __future__ import annotations

from functools import cached_property
from typing import Any, cast

from django.contrib.gis import admin
from django.contrib.gis.db.models import PointField
from django.contrib.gis.forms.widgets import BaseGeometryWidget, OpenLayersWidget
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.forms import Field
from django.http import HttpRequest

from places import selectors
from places.basemap import basemap_config

# Below this estimate an exact COUNT is cheap enough; above it the estimate is shown.
EXACT_COUNT_BELOW = 20_000


class EstimatedCountPaginator(Paginator):
    """Counts an unfiltered list with the planner's estimate when the table is large.

    ``COUNT(*)`` over a million places costs a full scan on every changelist page; the
    estimate from ``EXPLAIN`` costs a plan. Small tables still get their exact count.
    """

    @cached_property
    def count(self) -> int:
        # Changelists always paginate a queryset.
        qs = cast(QuerySet[Any], self.object_list)
        if qs.query.where:
            # Filtered lists are counted exactly: a high estimate would offer pages that
            # do not exist, and filters are what keeps the count small.
            return qs.count()
        sql, params = qs.query.sql_with_params()
        estimate = selectors.query_row_estimate(sql=sql, params=params, using=qs.db)
        if estimate < EXACT_COUNT_BELOW:
            return qs.count()
        return estimate


class OfflineMapWidget(OpenLayersWidget):
    """OpenLayers served from our static files with a vector basemap: no tile server needed.

    Its template starts the map with an inline script, which runs under the Content-Security-
    Policy only with the response's nonce: the admin passes it in as the ``csp_nonce`` attribute.
    """

    template_name = "places/widgets/offline_map.html"

    class Media:
        extend = False  # the parent's Media loads OpenLayers from a CDN
        css = {"all": ("vendor/ol/ol.css", "gis/css/ol3.css")}
        js = ("vendor/ol/ol.js", "gis/js/OLMapWidget.js")


class LocationMapWidget(BaseGeometryWidget):
    """A point on the map's own basemap (MapLibre over MAP_STYLE_URL or the offline Natural
    Earth files, as on /map/), with the places around it.

    A click on the map puts the point there, the marker can be dragged, and typed longitude
    and latitude fields (``id_longitude``, ``id_latitude``) move it; the map writes into
    them too, so what is typed and what is shown agree. The value is WKT in WGS84, rounded to
    6 decimals (about 0.1 m) in the browser, the same in the field and the typed boxes. Its
    script is a static file (no inline script: nothing needs the CSP nonce).
    """

    template_name = "places/widgets/location_map.html"
    geom_type = "POINT"
    map_srid = 4326

    class Media:
        css = {"all": ("vendor/maplibre/maplibre-gl.css", "places/location_widget.css")}
        js = (
            "vendor/maplibre/maplibre-gl.js",
            "places/basemap/style.js",
            "places/location_widget.js",
        )

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["config_id"] = f"{context['id']}_config"
        context["map_config"] = {
            "id": context["id"],
            "lonInput": "id_longitude",
            "latInput": "id_latitude",
            **basemap_config(),
        }
        return context


class FastChangeListMixin:
    """Changelists that stay fast on millions of rows."""

    paginator: type[Paginator] = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50


class ReadOnlyAdminMixin:
    """Rows that only the system writes (logs, derived data): view them, never edit them."""

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class IdSearchMixin:
    """A search term made only of digits finds rows by an indexed id column.

    Django's ``=field`` search compares ``UPPER(field::text)``, which no index can answer.
    """

    id_search_field = "pk"

    def get_search_results(self, request: Any, queryset: Any, search_term: str) -> Any:
        term = search_term.strip()
        if term.isdigit():
            return queryset.filter(**{self.id_search_field: int(term)}), False
        return super().get_search_results(request, queryset, search_term)  # type: ignore[misc]


class GeoAdmin(FastChangeListMixin, admin.GISModelAdmin):
    # The stubs type gis_widget as OSMWidget; Django accepts any OpenLayersWidget here.
    gis_widget = OfflineMapWidget  # type: ignore[assignment]
    gis_widget_kwargs = {"attrs": {"default_zoom": 5}}

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if isinstance(db_field, PointField):
            # Points on the map's own basemap; lines and areas keep OpenLayers' drawing tools.
            kwargs["widget"] = LocationMapWidget()
            return db_field.formfield(**kwargs)
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if isinstance(field, Field) and isinstance(field.widget, OfflineMapWidget):
            # Reading the nonce is what adds it to this response's script-src.
            field.widget.attrs["csp_nonce"] = str(getattr(request, "csp_nonce", ""))
        return field
