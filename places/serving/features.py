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

Pages of more than ``STREAM_ABOVE`` features are streamed (``place_list_stream``): a page of
100,000 features is 58 MB of JSON, which held as one string (and its copies: psycopg's
result, the encoded bytes, gzip's input) took a gunicorn worker to 600 MiB. A streamed page
first reads its ids in order (so ``numberReturned``, ``truncated`` and ``next``, which lead
the body and the headers, are known), then has PostgreSQL write ``CHUNK_FEATURES`` features
of text at a time, fetched by id and handed over as bytes. All of it in one read-only
snapshot, so the count, the ids and the features agree, however long the client takes to
read.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction
from psycopg.abc import Buffer
from psycopg.adapt import Loader

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
# Per format, the text before the first record, between two records, and after the last
# (none of it when there are no records). GeoJSONSeq: every record starts with RS (RFC 8142).
RECORD_JOINS = {
    "geojson": ("", ",", ""),
    "geojsonseq": ("\x1e", "\n\x1e", "\n"),
    "ndjson": ("", "\n", "\n"),
    "csv": ("", "\n", "\n"),
}
# A page of more features than this is streamed (see the module docstring). At 580 bytes of
# JSON a feature, 5,000 features are about 3 MB: pages up to that are built whole, with one
# statement, and cached like any answer.
STREAM_ABOVE = 5_000
# Features PostgreSQL writes per statement of a streamed page: about 1.2 MB of bytes in the
# worker at a time, 50 statements for 100,000 features. Measured on 100,000 features: 5,000
# a statement took the worker's peak 6 MB higher for a few per cent less time.
CHUNK_FEATURES = 2_000


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


def _record_sql(properties: list[str], fmt: str) -> tuple[str, str]:
    """The SQL of one record in ``fmt`` and the joins its properties need."""
    row = _csv_sql(properties) if fmt == "csv" else _feature_sql(properties)
    aliases = {join for name in properties if (join := FIELDS[name].join)}
    joins = " ".join((CSV_JOINS if fmt == "csv" else JOINS)[a] for a in sorted(aliases))
    return row, joins


def _joined(records: str | None, fmt: str) -> str:
    """Records PostgreSQL joined with the format's separator, with its first and last text."""
    first, _, last = RECORD_JOINS[fmt]
    return first + records + last if records else ""


def feature_page(
    *, query: PlaceQuery, properties: list[str], fmt: str, after: int, limit: int
) -> Page:
    """One keyset page of places matching ``query``, with ids greater than ``after``."""
    where, params = query.where()
    row, joins = _record_sql(properties, fmt)
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
               string_agg(line, %(separator)s ORDER BY id)
        FROM page
    """  # nosec B608 # columns and joins from FIELDS, WHERE from PlaceQuery; values bound
    args = {
        **params,
        "after": after,
        "limit": limit,
        "limit_plus_one": limit + 1,
        "separator": RECORD_JOINS[fmt][1],
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        found, returned, last_id, records = cursor.fetchone()
    return Page(body=_joined(records, fmt), returned=returned, last_id=last_id, more=found > limit)


def page_ids(*, query: PlaceQuery, after: int, limit: int) -> tuple[list[int], bool]:
    """The ids of the keyset page after ``after``, in order, and whether more follow."""
    where, params = query.where()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT p.id FROM places_place p WHERE {where} AND p.id > %(after)s "
            "ORDER BY p.id LIMIT %(limit_plus_one)s",  # nosec B608 # WHERE from PlaceQuery
            {**params, "after": after, "limit_plus_one": limit + 1},
        )
        ids = [row[0] for row in cursor.fetchall()]
    return ids[:limit], len(ids) > limit


class _TextAsBytes(Loader):
    # Text as the server sends it, in the connection's encoding (UTF-8): a chunk of records
    # is on its way to the client as bytes, and a str of it would cost up to four bytes a
    # character (one CJK or emoji name in the chunk is enough), then an encoded copy.

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def feature_records(*, ids: list[int], properties: list[str], fmt: str) -> bytes:
    """The records of the places ``ids`` (ascending) in ``fmt``, joined by its separator
    but without its first and last text: written by PostgreSQL as one string, handed over
    as its UTF-8 bytes."""
    row, joins = _record_sql(properties, fmt)
    sql = f"""
        WITH region_summary AS MATERIALIZED ({REGION_SUMMARIES})
        SELECT string_agg({row}, %(separator)s ORDER BY p.id)
        FROM places_place p {joins}
        WHERE p.id = ANY(%(ids)s)
    """  # nosec B608 # columns and joins from FIELDS; values bound
    with connection.cursor() as cursor:
        cursor.cursor.adapters.register_loader("text", _TextAsBytes)
        cursor.execute(sql, {"ids": ids, "separator": RECORD_JOINS[fmt][1]})
        return cursor.fetchone()[0] or b""


@contextmanager
def read_snapshot() -> Iterator[None]:
    """A read-only transaction in which every statement sees the same data (REPEATABLE
    READ). Inside a transaction already open (a test's), that one is used as it is."""
    opened = not connection.in_atomic_block
    with transaction.atomic():
        if opened:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def number_matched(*, query: PlaceQuery) -> tuple[int, bool]:
    """How many places match, and whether that is exact (see the module docstring)."""
    where, params = query.where()
    return number_matched_where(where=where, params=params)


def number_matched_where(*, where: str, params: dict[str, Any]) -> tuple[int, bool]:
    """``number_matched`` for a condition on ``p`` built by the caller (``PlaceQuery``'s,
    with more terms: the OGC API's filters)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM places_place p WHERE {where} "
            f"LIMIT {EXACT_COUNT_LIMIT + 1}) AS capped",  # nosec B608 # WHERE built from bound parameters
            params,
        )
        counted = cursor.fetchone()[0]
    if counted <= EXACT_COUNT_LIMIT:
        return counted, True
    estimate = selectors.query_row_estimate(
        sql=f"SELECT 1 FROM places_place p WHERE {where}",  # nosec B608 # values are bound
        params=params,
    )
    # The count already proved more than the limit; never report fewer.
    return max(estimate, EXACT_COUNT_LIMIT + 1), False


@dataclass(frozen=True)
class ListSummary:
    """What a page of the places list says about itself: the GeoJSON envelope carries it,
    the other formats carry it in headers."""

    matched: int
    exact: bool
    more: bool
    next_url: str | None


@dataclass(frozen=True)
class PlaceList(ListSummary):
    """One page of the places list as the client receives it, whole."""

    body: bytes


@dataclass(frozen=True)
class PlaceListStream(ListSummary):
    """One page of the places list as the client receives it, in pieces: ``pieces`` reads
    the features from the page's snapshot, which ``close`` ends (whether or not they were
    all read). Call ``close`` exactly once."""

    pieces: Iterator[bytes]
    _snapshot: ExitStack = field(repr=False)

    def close(self) -> None:
        try:
            close_pieces = getattr(self.pieces, "close", None)
            if close_pieces is not None:
                close_pieces()
        finally:
            self._snapshot.close()


def _envelope(
    *,
    properties: list[str],
    fmt: str,
    matched: int,
    exact: bool,
    returned: int,
    more: bool,
    next_url: str | None,
) -> tuple[str, str]:
    """The text before and after a page's records: a CSV's header line, a GeoJSON
    FeatureCollection's members (the features last); nothing for the record formats."""
    if fmt == "csv":
        return ",".join(csv_header(properties)) + "\n", ""
    if fmt != "geojson":
        return "", ""
    head = json.dumps(
        {
            "type": "FeatureCollection",
            "numberMatched": matched,
            "numberMatchedExact": exact,
            "numberReturned": returned,
            "truncated": more,
            "next": next_url,
        },
        separators=(",", ":"),
    )
    # The features are already JSON text: spliced in, never parsed again.
    return head[:-1] + ',"features":[', "]}"


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
    head, tail = _envelope(
        properties=properties,
        fmt=fmt,
        matched=matched,
        exact=exact,
        returned=page.returned,
        more=page.more,
        next_url=next_url,
    )
    return PlaceList(
        body=(head + page.body + tail).encode(),
        matched=matched,
        exact=exact,
        more=page.more,
        next_url=next_url,
    )


def place_list_stream(
    *,
    query: PlaceQuery,
    properties: list[str],
    fmt: str,
    after: int,
    limit: int,
    page_url: Callable[[str], str],
) -> PlaceListStream:
    """The same page as ``place_list_page``, byte for byte, as pieces of at most
    ``CHUNK_FEATURES`` features: the worker never holds more than one of them.

    The page's ids and count are read before this returns (the summary leads the answer);
    the features are read as ``pieces`` is iterated, in the same snapshot, which stays open
    until ``close``.
    """
    snapshot = ExitStack()
    snapshot.enter_context(read_snapshot())
    try:
        ids, more = page_ids(query=query, after=after, limit=limit)
        matched, exact = number_matched(query=query)
    except BaseException:
        snapshot.close()
        raise
    next_url = page_url(cursor_encode(ids[-1])) if more and ids else None
    head, tail = _envelope(
        properties=properties,
        fmt=fmt,
        matched=matched,
        exact=exact,
        returned=len(ids),
        more=more,
        next_url=next_url,
    )

    def pieces() -> Iterator[bytes]:
        first, separator, last = RECORD_JOINS[fmt]
        yield (head + (first if ids else "")).encode()
        for start in range(0, len(ids), CHUNK_FEATURES):
            if start:
                yield separator.encode()  # a piece of its own: joining would copy the chunk
            yield feature_records(
                ids=ids[start : start + CHUNK_FEATURES], properties=properties, fmt=fmt
            )
        yield ((last if ids else "") + tail).encode()

    return PlaceListStream(
        matched=matched,
        exact=exact,
        more=more,
        next_url=next_url,
        pieces=pieces(),
        _snapshot=snapshot,
    )
