"""Query parameters of the serving endpoints, validated into typed values.

Every bad value is an HTTP 400 that names its parameter. The places list, the viewport and
the places tiles share ``PlaceFiltersQuery``, which turns into one ``PlaceQuery``: one
meaning of every filter on every read path.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.http import HttpRequest, QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import empty

from places.geo import BBox, BBoxError, parse_bbox
from places.models import Dataset, Region, RegionLevel, Religion
from places.serving import tiles, viewport
from places.serving.features import FORMATS, CursorError, cursor_decode
from places.serving.fields import PROPERTIES
from places.serving.query import ANY_STATUS, DEFAULT_STATUS, STATUS_CHOICES, PlaceQuery


@functools.cache
def _shareable_fields(query_class: type[serializers.Serializer]) -> frozenset[str]:
    """The declared fields of ``query_class`` whose constructor arguments new fields may
    share: not one holding a field (a child, which its parent binds to itself) or a mutable
    default (which a field would hand out, one object to every request). Decided once per
    class."""
    shareable = set()
    for name, field in query_class._declared_fields.items():
        spec: Any = field
        values = [*spec._args, *spec._kwargs.values()]
        if any(isinstance(value, serializers.Field) for value in values):
            continue
        if isinstance(spec._kwargs.get("default"), list | dict | set):
            continue
        shareable.add(name)
    return frozenset(shareable)


class QueryParams(serializers.Serializer):
    """Query parameters: one given with no value (``level=``) is refused, naming it, unless
    its field allows a blank; DRF would otherwise take it as left out and quietly apply the
    default, which is not what the client wrote."""

    def get_fields(self) -> dict[str, serializers.Field]:
        # DRF deep-copies each declared field (its choices, querysets, messages) for every
        # new serializer, a third of a cached viewport answer's time in Python (0.4 ms of
        # 2.0, issue 14). A field made afresh from its own constructor arguments is the same
        # field, as long as those arguments are never changed by a field: true of choices,
        # querysets (cloned by get_queryset), messages and validators (copied into the
        # field's own), not of a child field (bound to its parent) or a mutable default,
        # which still get DRF's deep copy.
        shareable = _shareable_fields(type(self))
        fields: dict[str, serializers.Field] = {}
        for name, field in self._declared_fields.items():
            spec: Any = field
            if name in shareable:
                fields[name] = spec.__class__(*spec._args, **spec._kwargs)
            else:
                fields[name] = copy.deepcopy(field)
        return fields

    def run_validation(self, data: Any = empty) -> Any:
        if hasattr(data, "get"):
            blank = {
                name: ["must not be empty; leave the parameter out for its default"]
                for name, field in self.fields.items()
                if data.get(name) == "" and not getattr(field, "allow_blank", False)
            }
            if blank:
                raise serializers.ValidationError(blank)
        return super().run_validation(data)


@extend_schema_field({"type": "array", "items": {"type": "string", "minLength": 1}})
class DatasetsField(serializers.Field):
    """One dataset's slug or several: ``dataset=a,b``, the parameter repeated
    (``dataset=a&dataset=b``) or both, validated into the datasets' ids.

    The ids come back sorted and each once (``PlaceQuery`` keeps them so), so the order a
    client names datasets in changes neither the answer nor its cache key. Every slug must
    name a dataset: a typo is a 400 naming it rather than an empty map.
    """

    default_error_messages = {
        "empty": "an empty slug in the list; name each dataset once, e.g. dataset=a,b",
        "unknown": "no dataset {slugs}",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help_text",
            "Dataset slugs: one, several separated by commas (`osm-gb,wikidata`), or the "
            "parameter repeated. Places of any of them; all datasets when left out.",
        )
        super().__init__(**kwargs)

    def get_value(self, dictionary: Any) -> Any:
        # A query string may repeat the parameter; DRF's Field would keep only the last one.
        if hasattr(dictionary, "getlist") and self.field_name in dictionary:
            return ",".join(dictionary.getlist(self.field_name))
        return super().get_value(dictionary)

    def to_internal_value(self, data: Any) -> tuple[int, ...]:
        if isinstance(data, list | tuple):
            data = ",".join(str(item) for item in data)
        slugs = [slug.strip() for slug in str(data).split(",")]
        if not all(slugs):
            self.fail("empty")
        found = dict(Dataset.objects.filter(slug__in=set(slugs)).values_list("slug", "id"))
        unknown = sorted(set(slugs) - set(found))
        if unknown:
            self.fail("unknown", slugs=", ".join(unknown))
        return tuple(sorted(set(found.values())))

    def to_representation(self, value: Any) -> Any:
        return value


class PlaceFiltersQuery(QueryParams):
    """Filters shared by places/, viewport/ and the places tiles: one meaning everywhere."""

    religion = serializers.ChoiceField(choices=Religion.choices, required=False)
    denomination = serializers.RegexField(
        r"^[a-z0-9_]{1,64}$",
        required=False,
        help_text="One normalised denomination, e.g. `anglican` or `roman_catholic`.",
        error_messages={"invalid": "must be a normalised denomination such as roman_catholic"},
    )
    dataset = DatasetsField(required=False)
    country = serializers.SlugRelatedField(
        slug_field="code",
        queryset=Region.objects.filter(level=RegionLevel.COUNTRY).only("id", "code"),
        required=False,
        help_text="Country code (Natural Earth ADM0_A3, e.g. GBR).",
    )
    region = serializers.PrimaryKeyRelatedField(
        queryset=Region.objects.only("id"),
        required=False,
        help_text="Region id (the most detailed region a place lies in).",
    )
    status = serializers.ChoiceField(
        choices=STATUS_CHOICES,
        default=DEFAULT_STATUS,
        help_text=(
            f"`{DEFAULT_STATUS}` places unless this names another status (`retired`, "
            f"`merged`), or `{ANY_STATUS}` for all of them. The same default holds for the "
            "places list, the viewport and the tiles."
        ),
    )
    updated_since = serializers.DateTimeField(
        required=False,
        help_text="Only places changed at or after this ISO 8601 time (for incremental sync).",
    )
    q = serializers.CharField(
        required=False,
        max_length=200,
        help_text="Substring of the name, case and accents ignored ('sao' finds 'São').",
    )

    def place_query(self, *, bbox: BBox | None = None) -> PlaceQuery:
        data = self.validated_data
        return PlaceQuery(
            bbox=bbox,
            religion=data.get("religion"),
            denomination=data.get("denomination"),
            dataset_ids=data.get("dataset"),
            country_id=data["country"].pk if data.get("country") else None,
            region_id=data["region"].pk if data.get("region") else None,
            status=None if data["status"] == ANY_STATUS else data["status"],
            updated_since=data.get("updated_since"),
            q=data.get("q") or None,
        )


BBOX_HELP = (
    "minLon,minLat,maxLon,maxLat (WGS84). minLon > maxLon crosses the antimeridian "
    "(`170,-48,-175,-34`: New Zealand with the Chatham Islands)."
)


class BBoxField(serializers.CharField):
    """A box checked by ``places.geo.parse_bbox`` (four finite numbers, order, range,
    antimeridian) before any query; the one bbox parameter of the list and the viewport.
    Where a blank value is allowed it means no box (None)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", BBOX_HELP)
        super().__init__(**kwargs)

    def run_validation(self, data: Any = empty) -> BBox | None:
        value = super().run_validation(data)
        return None if value == "" else value

    # A CharField on the wire, a BBox once validated.
    def to_internal_value(self, data: Any) -> BBox:  # type: ignore[override]
        try:
            return parse_bbox(super().to_internal_value(data))
        except BBoxError as exc:
            raise serializers.ValidationError(f"Invalid bbox: {exc}.") from exc


class PlaceListQuery(PlaceFiltersQuery):
    bbox = BBoxField(required=False, allow_blank=True)
    # The `fields` query parameter: DRF's metaclass moves declared fields off the class, so
    # Serializer.fields is not shadowed.
    fields = serializers.CharField(  # type: ignore[assignment]
        required=False,
        help_text=(
            "Comma-separated properties to return (default: all): "
            + ", ".join(f"`{name}`" for name in PROPERTIES)
            + "."
        ),
    )
    limit = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=settings.PLACES_API_MAX_PAGE_SIZE,
        help_text=(
            f"Features per page (default {settings.PLACES_API_PAGE_SIZE}, maximum "
            f"{settings.PLACES_API_ANON_MAX_PAGE_SIZE} without signing in, "
            f"{settings.PLACES_API_MAX_PAGE_SIZE} signed in)."
        ),
    )
    cursor = serializers.CharField(
        required=False, help_text="Opaque; take it from `next` (or the Link header)."
    )
    format = serializers.ChoiceField(
        # parquet: the whole selection as one GeoParquet file (analytics.download_apis).
        choices=[*FORMATS, "parquet"],
        required=False,
        help_text=(
            "geojson (default), geojsonseq (RFC 8142), ndjson (one Feature per line) or csv "
            "(id, lon, lat, then the properties). The Accept header works too. parquet: the "
            "whole selection as one GeoParquet file, without limit, cursor or fields (see "
            "/api/v1/downloads/places/)."
        ),
    )

    def validate_fields(self, value: str) -> list[str]:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(names) - set(PROPERTIES))
        if unknown:
            raise serializers.ValidationError(
                f"unknown properties {', '.join(unknown)}; choose from {', '.join(PROPERTIES)}"
            )
        # Keep the documented order and drop repeats.
        return [name for name in PROPERTIES if name in names]

    def validate_limit(self, value: int) -> int:
        """Above the anonymous maximum only for a signed-in client: context ``signed_in`` is a
        callable, asked only then, so that small pages never look at the session."""
        cap = settings.PLACES_API_ANON_MAX_PAGE_SIZE
        signed_in = self.context.get("signed_in")
        if value > cap and not (signed_in and signed_in()):
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {cap}, or sign in for up to "
                f"{settings.PLACES_API_MAX_PAGE_SIZE}."
            )
        return value

    def validate_cursor(self, value: str) -> int:
        try:
            return cursor_decode(value)
        except CursorError as exc:
            raise serializers.ValidationError(str(exc)) from None


class RegionTileQuery(QueryParams):
    level = serializers.ChoiceField(choices=RegionLevel.choices, default=RegionLevel.DISTRICT)


class ViewportQuery(PlaceFiltersQuery):
    """The places filters plus the view."""

    bbox = BBoxField()
    zoom = serializers.IntegerField(
        min_value=0,
        max_value=tiles.MAX_ZOOM,
        help_text=(
            "The map's zoom (Web Mercator, 256-px tiles): it sets the cluster grid and "
            "whether points come back (see the operation's description)."
        ),
    )
    format = serializers.ChoiceField(choices=["json", "bin"], required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not viewport.box_fits_zoom(attrs["bbox"], attrs["zoom"]):
            raise serializers.ValidationError(
                {
                    "bbox": [
                        f"too large for zoom {attrs['zoom']}: a view spans at most "
                        f"{viewport.MAX_TILES_ACROSS} tiles; lower the zoom or the box"
                    ]
                }
            )
        return attrs


# Query strings remembered per process: a map pans over the same few hundred views and
# tiles. An entry holds the parameters the query class declares (others are ignored) and
# their values, a few hundred bytes to a few KB.
VALIDATED_MEMO_SIZE = 2048


@dataclass(frozen=True)
class Validated:
    """A query's validated values (read-only) and the ``PlaceQuery`` they make, with the
    query's bbox when it has one."""

    data: Mapping[str, Any]
    filters: PlaceQuery


@functools.cache
def database_params(query_class: type[PlaceFiltersQuery]) -> frozenset[str]:
    """The parameters whose validation reads the database (a dataset slug, a country code,
    a region id), whose answer can change; every other one is validated from the query
    string and the settings alone."""
    return frozenset(
        name
        for name, field in query_class._declared_fields.items()
        if isinstance(field, serializers.RelatedField | DatasetsField)
    )


def filters_validated(query_class: type[PlaceFiltersQuery], query_params: QueryDict) -> Validated:
    """``query_class`` (the places filters, or the viewport's) run over the request's
    parameters: a 400 naming each bad one.

    A query naming none of its ``database_params`` is validated once per process and
    remembered: the same parameters always give the same answer, and DRF's validation was a
    fifth of a gunicorn worker's Python time on cached map answers (issue 14). Refusals are
    never remembered; the order of the parameters and those the class does not declare
    (a tile URL's `v`) do not matter.
    """
    # Other query classes read the request (context) while they validate.
    if query_class not in (PlaceFiltersQuery, ViewportQuery):
        raise TypeError(f"{query_class.__name__} cannot be validated without its request")
    items = _declared_items(query_class, query_params)
    found = _remembered(query_class, items)
    return found if found is not None else _validated(query_class, items)


def request_filters_validated(
    query_class: type[PlaceFiltersQuery], request: HttpRequest
) -> Validated:
    """``filters_validated`` of a request's own query string, remembered by that string as it
    arrived: a cached map answer (the same URL again) is then validated without building
    Django's QueryDict of it, a tenth of such an answer's own Python time (issue 14).

    Only a query string that ``filters_validated`` would remember is (a plain view, or one
    naming no ``database_params``); refusals never are. Its bytes are read as Django reads
    them (UTF-8, else Latin-1); a request whose Content-Type names a charset is decoded in
    that charset, so its query string means something else: it takes the ordinary path.
    Parameters the class does not declare (a cache-buster) make entries of their own: the
    memo's size bounds them.
    """
    if request.encoding is None:
        remembered = _BY_QUERY_STRING.get(query_class)
        if remembered is not None:
            found = remembered(request.META.get("QUERY_STRING", ""))
            if found is not None:
                return found
    return filters_validated(query_class, request.GET)


def _by_query_string(query_class: type[PlaceFiltersQuery], query_string: str) -> Validated | None:
    # WSGI hands the query string over as Latin-1 text of its bytes, and Django's GET parses
    # those bytes: so does this.
    params = QueryDict(query_string.encode("iso-8859-1"))
    return _remembered(query_class, _declared_items(query_class, params))


def _remembered(query_class: type[PlaceFiltersQuery], items: Items) -> Validated | None:
    """What the memos answer for ``items`` (validating them the first time); None where a
    table must be read (``database_params``), which no memo may answer."""
    if query_class is ViewportQuery:
        # Remembered apart: a pan's boxes, seldom asked for twice, would push the tiles' and
        # filters' parameters out of the other memo. Remembered at all, because a cached
        # answer reuses the query's cache key, worked out once per PlaceQuery.
        plain = _viewport_plain_remembered(items)
        if plain is not None:
            return plain
    if database_params(query_class).isdisjoint(name for name, _ in items):
        return _validated_remembered(query_class, items)
    return None


Items = tuple[tuple[str, tuple[str, ...]], ...]


def _declared_items(query_class: type[PlaceFiltersQuery], params: QueryDict) -> Items:
    """The parameters ``query_class`` declares, with their values, in one order."""
    declared = query_class._declared_fields
    return tuple(
        sorted((name, tuple(values)) for name, values in params.lists() if name in declared)
    )


# The viewport's formats, as ``ViewportQuery`` declares them.
_VIEWPORT_FORMATS = frozenset(ViewportQuery._declared_fields["format"].choices)  # type: ignore[attr-defined]


def _viewport_plain(items: Items) -> Validated | None:
    """The viewport's commonest query, a box and a zoom (and a format) and nothing else,
    validated as ``ViewportQuery`` validates it, without DRF; None for any other query and
    for any value not in its plainest spelling, which DRF then validates or refuses.

    Every map pan asks for a box no one asked for before, so the memo cannot answer it: DRF's
    validation of those three parameters took 0.2 ms (a twentieth of an uncached 1K view's
    CPU, issue 14). The rules are the same functions (``parse_bbox``, ``box_fits_zoom``,
    ``tiles.MAX_ZOOM``); only DRF's reading of the strings is done here, for the spellings
    it reads the same way (tests/places/test_validated_params.py compares the two).
    """
    given = dict(items)
    if "bbox" not in given or "zoom" not in given or not given.keys() <= {"bbox", "zoom", "format"}:
        return None
    if any(len(values) != 1 for values in given.values()):
        return None
    (text,), (zoom_text,) = given["bbox"], given["zoom"]
    fmt = given["format"][0] if "format" in given else None
    if fmt is not None and fmt not in _VIEWPORT_FORMATS:
        return None
    # ASCII digits only: DRF also reads " 7", "7.0" and other digits, and refuses
    # out-of-range zooms with its own messages.
    if not (zoom_text.isascii() and zoom_text.isdigit() and len(zoom_text) <= 3):
        return None
    zoom = int(zoom_text)
    if zoom > tiles.MAX_ZOOM or not text or text != text.strip():
        return None
    try:
        bbox = parse_bbox(text)
    except BBoxError:
        return None
    if not viewport.box_fits_zoom(bbox, zoom):
        return None
    data: dict[str, Any] = {"status": DEFAULT_STATUS, "bbox": bbox, "zoom": zoom}
    if fmt is not None:
        data["format"] = fmt
    return Validated(data=MappingProxyType(data), filters=PlaceQuery(bbox=bbox))


def _validated(query_class: type[PlaceFiltersQuery], items: Items) -> Validated:
    """``query_class`` run by DRF over ``items``: a 400 naming each bad parameter."""
    params = QueryDict(mutable=True)
    for name, values in items:
        params.setlist(name, list(values))
    query = query_class(data=params)
    query.is_valid(raise_exception=True)
    data = dict(query.validated_data)
    return Validated(data=MappingProxyType(data), filters=query.place_query(bbox=data.get("bbox")))


_validated_remembered = functools.lru_cache(maxsize=VALIDATED_MEMO_SIZE)(_validated)
# Its answer (None included: not a plain query) depends on the query string alone.
_viewport_plain_remembered = functools.lru_cache(maxsize=VALIDATED_MEMO_SIZE)(_viewport_plain)
# One memo per query class, as above: a pan's views would push the tiles' entries out.
_BY_QUERY_STRING = {
    query_class: functools.lru_cache(maxsize=VALIDATED_MEMO_SIZE)(
        functools.partial(_by_query_string, query_class)
    )
    for query_class in (PlaceFiltersQuery, ViewportQuery)
}
