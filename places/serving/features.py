"""Pages of places as GeoJSON, GeoJSONSeq, NDJSON or CSV, built as text inside PostgreSQL.

Serialising feature by feature in Python costs about 0.4 ms per place; PostgreSQL writes the
same text in a few microseconds, and one query returns a whole page as one string. Pages
are keyset pages in id order: the cursor is the last id of the previous page, so page
10,000 costs what page 1 costs.

``numberMatched`` is exact up to ``EXACT_COUNT_LIMIT`` (a count that stops there) and the
planner's estimate above it, flagged as such: a full ``COUNT(*)`` over a continent would cost
more than the page itself.

``place_list_page`` returns the page as the client gets it: the GeoJSON envelope
(``numberMatched``, ``numberReturned``, ``truncated``, ``next``) is written here, beside the
SQL that writes the features, and the view only adds HTTP headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection

from places import selectors
from places.serving.fields import FIELDS, csv_header
from places.serving.query import PlaceQuery

EXACT_COUNT_LIMIT = 10_000
FORMATS = ("geojson", "geojsonseq", "ndjson", "csv")
MEDIA_TYPES = {
    "geojson": "application/geo+json",
    "geojsonseq": "application/geo+json-seq",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}
# Coordinates to 7 decimals: about 1 cm, finer than any source we load.
DECIMALS = 7


def _summary(alias: str) -> str:
    return (
        f"CASE WHEN {alias}.id IS NULL THEN NULL ELSE json_build_object("
        f"'id', {alias}.id, 'name', {alias}.name, 'level', {alias}.level, "
        f"'code', {alias}.code, 'code_system', {alias}.code_system) END"
    )


# Regions are few and repeat on every place: their JSON is built once per query (a hash
# join on a few hundred rows), not once per place.
REGION_SUMMARIES = f"SELECT r.id, {_summary('r')} AS j FROM places_region r"  # nosec B608 # a constant
JOINS = {
    "d": "JOIN places_dataset d ON d.id = p.dataset_id",
    "c": "LEFT JOIN region_summary cs ON cs.id = p.country_id",
    "r": "LEFT JOIN region_summary rs ON rs.id = p.region_id",
}
# CSV flattens regions to plain columns, read from the table itself.
CSV_JOINS = {
    "d": JOINS["d"],
    "c": "LEFT JOIN places_region c ON c.id = p.country_id",
    "r": "LEFT JOIN places_region r ON r.id = p.region_id",
}


class CursorError(ValueError):
    """A cursor this API did not hand out."""


def cursor_encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def cursor_decode(token: str) -> int:
    """The id a page starts after; ``CursorError`` when the token was not made here."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise CursorError("is not a cursor this API handed out") from None
    match = re.fullmatch(r"after:(0|[1-9][0-9]{0,18})", text)
    if not match:
        raise CursorError("is not a cursor this API handed out")
    return int(match.group(1))


@dataclass(frozen=True)
class Page:
    body: str  # the features, already joined for the format
    returned: int
    last_id: int | None
    more: bool  # another page follows: the result was truncated at ``limit``


def _feature_sql(properties: list[str]) -> str:
    pairs = ", ".join(f"'{name}', {FIELDS[name].json}" for name in properties)
    props = f"json_build_object({pairs})::text" if properties else "'{}'"
    # Text concatenation: the geometry is written once as text and never re-parsed.
    return (
        """'{"type":"Feature","id":' || p.id || ',"geometry":' || """
        f"ST_AsGeoJSON(p.location, {DECIMALS}) || "
        f"""',"properties":' || {props} || '}}'"""
    )


def _csv_sql(properties: list[str]) -> str:
    """One CSV line per place: the columns of ``fields.csv_header``, in that order."""
    columns = [
        "p.id::text",
        f"round(ST_X(p.location)::numeric, {DECIMALS})::text",
        f"round(ST_Y(p.location)::numeric, {DECIMALS})::text",
    ]
    for name in properties:
        columns += [expression for _, expression in FIELDS[name].csv]
    return " || ',' || ".join(columns)


def feature_page(
    *, query: PlaceQuery, properties: list[str], fmt: str, after: int, limit: int
) -> Page:
    """One keyset page of places matching ``query``, with ids greater than ``after``."""
    where, params = query.where()
    if fmt == "csv":
        row = _csv_sql(properties)
        separator, suffix = "E'\\n'", "E'\\n'"
    else:
        row = _feature_sql(properties)
        separator, suffix = {
            "geojson": ("','", "''"),
            "geojsonseq": ("E'\\n\\x1e'", "E'\\n'"),
            "ndjson": ("E'\\n'", "E'\\n'"),
        }[fmt]
    aliases = {join for name in properties if (join := FIELDS[name].join)}
    joins = " ".join((CSV_JOINS if fmt == "csv" else JOINS)[a] for a in sorted(aliases))
    sql = f"""
        WITH region_summary AS MATERIALIZED ({REGION_SUMMARIES}),
        rows AS MATERIALIZED (
            SELECT p.id, {row} AS line
            FROM places_place p {joins}
            WHERE {where} AND p.id > %(after)s
            ORDER BY p.id
            LIMIT %(limit_plus_one)s
        ), page AS (
            SELECT id, line FROM rows ORDER BY id LIMIT %(limit)s
        )
        SELECT (SELECT count(*) FROM rows), count(*), max(id),
               coalesce(string_agg(line, {separator} ORDER BY id) || {suffix}, '')
        FROM page
    """  # nosec B608 # columns and joins from FIELDS, WHERE from PlaceQuery; values bound
    args = {**params, "after": after, "limit": limit, "limit_plus_one": limit + 1}
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        found, returned, last_id, body = cursor.fetchone()
    if fmt == "geojsonseq" and body:
        body = "\x1e" + body  # RFC 8142: every record starts with RS (the separator adds the rest)
    return Page(body=body, returned=returned, last_id=last_id, more=found > limit)


def number_matched(*, query: PlaceQuery) -> tuple[int, bool]:
    """How many places match, and whether that is exact (see the module docstring)."""
    where, params = query.where()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM places_place p WHERE {where} "
            f"LIMIT {EXACT_COUNT_LIMIT + 1}) AS capped",  # nosec B608 # WHERE from PlaceQuery.where(); values are bound
            params,
        )
        counted = cursor.fetchone()[0]
    if counted <= EXACT_COUNT_LIMIT:
        return counted, True
    estimate = selectors.query_row_estimate(
        sql=f"SELECT 1 FROM places_place p WHERE {where}",  # nosec B608 # from PlaceQuery.where()
        params=params,
    )
    # The count already proved more than the limit; never report fewer.
    return max(estimate, EXACT_COUNT_LIMIT + 1), False


@dataclass(frozen=True)
class PlaceList:
    """One page of the places list as the client receives it, with the figures that the
    GeoJSON envelope carries (the other formats carry them in headers)."""

    body: bytes
    matched: int
    exact: bool
    more: bool
    next_url: str | None


def place_list_page(
    *,
    query: PlaceQuery,
    properties: list[str],
    fmt: str,
    after: int,
    limit: int,
    page_url: Callable[[str], str],
) -> PlaceList:
    """The page after ``after`` in ``fmt``, whole: a GeoJSON FeatureCollection with
    ``numberMatched``, ``numberMatchedExact``, ``numberReturned``, ``truncated`` and ``next``;
    a CSV with its header line; or the GeoJSONSeq/NDJSON records as they are.

    ``page_url`` turns a cursor into the URL of the page it starts; ``next`` is null on the
    last page.
    """
    page = feature_page(query=query, properties=properties, fmt=fmt, after=after, limit=limit)
    matched, exact = number_matched(query=query)
    next_url = (
        page_url(cursor_encode(page.last_id)) if page.more and page.last_id is not None else None
    )
    if fmt == "csv":
        body = ",".join(csv_header(properties)) + "\n" + page.body
    elif fmt == "geojson":
        head = json.dumps(
            {
                "type": "FeatureCollection",
                "numberMatched": matched,
                "numberMatchedExact": exact,
                "numberReturned": page.returned,
                "truncated": page.more,
                "next": next_url,
            },
            separators=(",", ":"),
        )
        # The features are already JSON text: spliced in, never parsed again.
        body = head[:-1] + ',"features":[' + page.body + "]}"
    else:
        body = page.body
    return PlaceList(
        body=body.encode(), matched=matched, exact=exact, more=page.more, next_url=next_url
    )
