"""Query parameters of ``/ogc/``, validated into typed values.

Every bad value is ``OgcError``: HTTP 400 with the standard's exception body, naming the
parameter. Unknown parameters are refused too (the standard allows it, and a typo such as
``bbbox`` would otherwise return every feature).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.http import QueryDict

from places.geo import BBox, BBoxError, parse_bbox
from places.ogc import sensors
from places.ogc.collections import PLACES, REGION_PROPERTIES, SENSORS, Collection
from places.ogc.cql import Condition, FilterError, cql2_text_condition, equality_condition
from places.ogc.items import CursorError, ItemsQuery, Sort, cursor_decode
from places.serving.fields import PROPERTIES
from places.serving.query import ANY_STATUS, DEFAULT_STATUS

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
EPSG_4326 = "http://www.opengis.net/def/crs/EPSG/0/4326"
# bbox-crs values and whether the box is written latitude first (EPSG:4326's axis order).
BBOX_CRS = {CRS84: False, EPSG_4326: True}
FILTER_LANG = "cql2-text"
PLACE_LIMITS = (100, settings.PLACES_API_ANON_MAX_PAGE_SIZE)  # default, maximum
REGION_LIMITS = (10, 100)  # boundaries are large
FORMATS = ("json", "html")
ITEMS_PARAMS = {
    "f",
    "bbox",
    "bbox-crs",
    "datetime",
    "limit",
    "cursor",
    "filter",
    "filter-lang",
    "filter-crs",
    "properties",
    "sortby",
}


class OgcError(ValueError):
    """A request the API refuses: ``code`` and ``status`` as the standard names them."""

    def __init__(
        self,
        description: str,
        *,
        parameter: str | None = None,
        code: str = "InvalidParameterValue",
        status: int = 400,
    ) -> None:
        super().__init__(description)
        self.description = f"{parameter}: {description}" if parameter else description
        self.parameter = parameter
        self.code = code
        self.status = status


def one(params: QueryDict, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise OgcError("given more than once", parameter=name)
    if values and "\x00" in values[0]:
        raise OgcError("must not contain NUL characters", parameter=name)
    return values[0] if values else None


def output_format(params: QueryDict, accept: str) -> str:
    """``json`` or ``html``: ``f`` when given, else the Accept header (a browser asks for
    HTML before anything else)."""
    requested = one(params, "f")
    if requested is not None:
        if requested not in FORMATS:
            raise OgcError(f"must be one of {', '.join(FORMATS)}", parameter="f")
        return requested
    first = accept.split(",")[0].split(";")[0].strip().lower()
    return "html" if first in ("text/html", "application/xhtml+xml") else "json"


def refuse_unknown(params: QueryDict, known: set[str]) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise OgcError(
            f"unknown parameter; this operation takes {', '.join(sorted(known))}",
            parameter=unknown[0][:60],
        )


def parse_bbox_param(text: str, crs: str | None) -> BBox:
    if crs is not None and crs not in BBOX_CRS:
        raise OgcError(f"must be {CRS84} or {EPSG_4326}", parameter="bbox-crs")
    lat_first = BBOX_CRS.get(crs or CRS84, False)
    numbers = [part.strip() for part in text.split(",")]
    if len(numbers) == 6:  # a 3D box: the heights are not used
        numbers = [numbers[0], numbers[1], numbers[3], numbers[4]]
    if lat_first and len(numbers) == 4:
        numbers = [numbers[1], numbers[0], numbers[3], numbers[2]]
    try:
        return parse_bbox(",".join(numbers))
    except BBoxError as exc:
        raise OgcError(str(exc), parameter="bbox") from None


def _instant(text: str) -> date | None:
    if text in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("z", "Z")).date()
    except ValueError:
        raise OgcError(
            f"{text[:40]!r} is not an RFC 3339 date or date-time", parameter="datetime"
        ) from None


def parse_datetime(text: str) -> tuple[date | None, date | None]:
    """An instant or an interval (``start/end``, either open as ``..`` or empty), as the
    dates it spans."""
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        start, end = _instant(start_text), _instant(end_text)
        if start is not None and end is not None and start > end:
            raise OgcError("the interval ends before it starts", parameter="datetime")
        return start, end
    if text in ("", ".."):
        raise OgcError("an instant must be a date or date-time", parameter="datetime")
    day = _instant(text)
    return day, day


def _moment(text: str) -> tuple[datetime, datetime] | None:
    """The instants [first, after) an RFC 3339 date or date-time stands for: a whole day
    (UTC), or one moment (to the microsecond PostgreSQL keeps). A date-time without an
    offset is taken as UTC."""
    if text in ("", ".."):
        return None
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
            return day, day + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise OgcError(
            f"{text[:40]!r} is not an RFC 3339 date or date-time", parameter="datetime"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment, moment + timedelta(microseconds=1)


def parse_datetime_times(text: str) -> tuple[datetime | None, datetime | None]:
    """An instant or an interval as the half-open span of times [start, end) it covers
    (either open); an interval's ends are both inside it."""
    if "/" in text:
        start_text, _, end_text = text.partition("/")
        first, last = _moment(start_text), _moment(end_text)
        start = first[0] if first else None
        end = last[1] if last else None
        if start is not None and end is not None and start >= end:
            raise OgcError("the interval ends before it starts", parameter="datetime")
        return start, end
    found = _moment(text)
    if found is None:
        raise OgcError("an instant must be a date or date-time", parameter="datetime")
    return found


def parse_sortby(text: str, collection: Collection) -> Sort:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if len(keys) != 1:
        raise OgcError("takes one property (then id breaks ties)", parameter="sortby")
    key = keys[0]
    descending = key.startswith("-")
    key = key.lstrip("+-")
    if key not in collection.sortables:
        raise OgcError(
            f"cannot sort by {key[:60]!r}; sortables: {', '.join(collection.sortables)}",
            parameter="sortby",
        )
    return Sort(key=key, descending=descending)


def collection_properties(collection: Collection) -> tuple[str, ...]:
    if collection.kind == SENSORS:
        return sensors.sensor_properties(collection.queryables)
    return PROPERTIES if collection.kind == PLACES else REGION_PROPERTIES


def parse_properties(text: str, collection: Collection) -> tuple[str, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    allowed = collection_properties(collection)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise OgcError(
            f"unknown properties {', '.join(unknown)[:200]}; choose from {', '.join(allowed)}",
            parameter="properties",
        )
    return tuple(name for name in allowed if name in names)


def _limit(text: str | None, collection: Collection) -> int:
    default, maximum = {PLACES: PLACE_LIMITS, SENSORS: sensors.LIMITS}.get(
        collection.kind, REGION_LIMITS
    )
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", text) or not 1 <= int(text) <= maximum:
        raise OgcError(f"must be an integer from 1 to {maximum}", parameter="limit")
    return int(text)


def property_filter_names(collection: Collection) -> list[str]:
    """Queryables that also work as ``name=value`` parameters (not the geometry)."""
    return [name for name, q in collection.queryables.items() if q.kind != "geometry"]


def items_query(
    params: QueryDict, *, collection: Collection
) -> tuple[ItemsQuery, tuple[str, int] | None]:
    """The items request and the cursor's position, or ``OgcError`` naming the parameter."""
    filters = property_filter_names(collection)
    refuse_unknown(params, ITEMS_PARAMS | set(filters))
    values: dict[str, Any] = {}
    text = one(params, "bbox")
    crs = one(params, "bbox-crs")
    if crs is not None and text is None:
        raise OgcError("needs bbox", parameter="bbox-crs")
    if text is not None:
        values["bbox"] = parse_bbox_param(text, crs)
    text = one(params, "datetime")
    if text is not None:
        if collection.kind == PLACES:
            values["dates"] = parse_datetime(text)
        elif collection.kind == SENSORS:
            values["times"] = parse_datetime_times(text)
        else:
            raise OgcError("this collection has no dates", parameter="datetime")
    pairs: list[tuple[str, str]] = []
    status: str | None = DEFAULT_STATUS
    for name in filters:
        value = one(params, name)
        if value is None:
            continue
        if name == "status" and collection.kind == PLACES and value == ANY_STATUS:
            status = None
            continue
        pairs.append((name, value))
    condition = Condition()
    try:
        condition = equality_condition(pairs, queryables=collection.queryables)
    except FilterError as exc:
        raise OgcError(str(exc), parameter=pairs[0][0] if len(pairs) == 1 else None) from None
    lang = one(params, "filter-lang")
    if lang is not None and lang != FILTER_LANG:
        raise OgcError(f"only {FILTER_LANG} is supported", parameter="filter-lang")
    filter_crs = one(params, "filter-crs")
    if filter_crs is not None and filter_crs != CRS84:
        raise OgcError(f"only {CRS84} is supported", parameter="filter-crs")
    text = one(params, "filter")
    if text is not None:
        try:
            cql = cql2_text_condition(text, queryables=collection.queryables)
        except FilterError as exc:
            raise OgcError(str(exc), parameter="filter") from None
        condition = Condition(
            sql=f"{condition.sql} AND {cql.sql}",
            params={**condition.params, **cql.params},
            names=condition.names | cql.names,
        )
    # A filter on status chooses the statuses itself.
    if "status" in condition.names:
        status = None
    values["status"] = status if collection.kind == PLACES else None
    text = one(params, "properties")
    values["properties"] = (
        parse_properties(text, collection)
        if text is not None
        else collection_properties(collection)
    )
    text = one(params, "sortby")
    sort = parse_sortby(text, collection) if text is not None else Sort()
    values["limit"] = _limit(one(params, "limit"), collection)
    after = None
    text = one(params, "cursor")
    if text is not None:
        try:
            after = cursor_decode(text, sort=sort)
        except CursorError as exc:
            raise OgcError(str(exc), parameter="cursor") from None
    query = ItemsQuery(collection=collection, condition=condition, sort=sort, **values)
    return query, after
