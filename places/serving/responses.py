"""Public, cacheable byte responses shared by the places list, the viewport and the tiles.

A response's cache key and ETag contain the data version of what it shows, which every
commit that changes those places moves: a cached body is never older than the last write
PostgreSQL has told this web process about (``places.version_watch``: milliseconds), and a
client revalidating with ``If-None-Match`` gets 304 until something really changed. Bodies
are gzipped once, when built, and kept compressed in Redis, the small ones also in the
process (``places.serving.local_cache``).

What is stored is bounded, because every distinct query string names its own entry: a body
whose gzipped size exceeds ``CACHE_MAX_BODY_BYTES`` is stored only when the request is
*canonical*, that is when everyone who wants that content asks for it by the same URL (a tile,
a statistics level). A big body for a free-form query (any box, filter and page size a client
chooses) is built, sent and forgotten, so a stream of unique query strings cannot buy a
megabytes-large entry each; small bodies are stored whatever the query. The cache's Redis
evicts least recently used keys beyond its memory limit (see ``config.settings.base``).

A body too big to hold in a worker (the places list's big pages) is streamed instead
(``streamed_bytes_response``): gzipped piece by piece as it is sent, and stored at its end
only if it stayed under ``CACHE_MAX_BODY_BYTES``. Its ETag comes from its key as for any
other body, so a client's copy is still revalidated before anything is read.
"""

from __future__ import annotations

import gzip
import hashlib
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse, StreamingHttpResponse
from django.utils.http import parse_etags
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from places import metrics, selectors, version_watch
from places.geo import BBox
from places.serving.local_cache import LOCAL_BODIES, bodies_cache

# While one request builds a body, others asking for the same key wait for it rather than
# run the same heavy query (a cache stampede after each import). The lock expires on its own
# if its holder dies; a waiter that gives up builds the body itself.
BUILD_LOCK_SECONDS = 30
BUILD_WAIT_SECONDS = 10.0
BUILD_POLL_SECONDS = 0.02

# Measured on the 1M generated places (issue 14): gzip level 6 took 109 ms for the 100K view's
# 1.7 MB binary body and 208 ms for its 3 MB JSON, level 1 22 and 54 ms, for 0.3% more bytes
# (binary) and 10% more (JSON); for the densest zoom-10 tile (198 KB of MVT) 7.7 ms against
# 2.0 ms for 8% more, a third of that tile's whole answer. Above this size the first
# visitor's wait wins; below it level 6 costs a millisecond or two once per data version.
# A view's binary body takes level 1 at any size (``gzip_level``: float columns barely shrink).
BIG_BODY_BYTES = 64 * 1024
# zlib's window bits for a gzip container (header and trailer) around the deflate stream.
GZIP_WBITS = 16 + zlib.MAX_WBITS

Built = bytes | tuple[bytes, dict[str, str]]


# Mixins and bases below carry comments, not docstrings: drf-spectacular would show a
# docstring as the description of every operation that inherits it.


class QueryParamsGuard:
    # Refuse query parameters holding NUL characters: PostgreSQL cannot store or compare them.

    # Decoded as UTF-8 (Django's DEFAULT_CHARSET, kept), a value holds a NUL only where the
    # raw query string has %00 or a NUL byte: such a query string skips the scan of every
    # value (4.5 % of a worker's time on a cached map answer, issue 14). Django decodes the
    # query string in the charset a request's Content-Type names, even on a GET, and in
    # UTF-7 "+AAA-" is a NUL: a request that names a charset is scanned.

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        raw = request._request.META.get("QUERY_STRING", "")
        if "%00" in raw or "\x00" in raw or request._request.encoding is not None:
            bad = sorted(
                {k for k, values in request.query_params.lists() for v in values if "\x00" in v}
            )
            if bad:
                raise ValidationError({name: ["must not contain NUL characters"] for name in bad})
        super().initial(request, *args, **kwargs)  # type: ignore[misc]


class PublicBytesView(APIView):
    # Public, cacheable byte responses: no session or user lookup, which would add
    # ``Vary: Cookie`` and keep CDNs from caching them.

    authentication_classes: list = []
    permission_classes = [AllowAny]
    # They answer GET and HEAD alone and read no body: DRF would make its three parsers for
    # every request all the same.
    parser_classes: list = []


class BytesNegotiation:
    # These views choose their own bytes (by path, `format` or Accept), so DRF's content
    # negotiation must not answer a vendor Accept type with 406 or `?format=` with 404;
    # errors are rendered by DRF's negotiation, forced (JSON unless a browser asks for HTML).

    # Only a DRF Response (an error, a JSON document) needs a renderer, and DRF's
    # finalize_response negotiates one (with force) for any Response whose request has none:
    # initial()'s negotiation is left to it. Done for every answer, it was 3 % of a worker's
    # time on cached map answers (a `format=bin` DRF knows no renderer for is a 404 raised
    # and caught), for bodies no renderer touches (issue 14). With DEBUG on, DRF reads the
    # renderer of a request whose view raised: it is negotiated then too.

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        if not force:
            return None, None
        return super().perform_content_negotiation(request, force=True)  # type: ignore[misc]

    def raise_uncaught_exception(self, exc: Exception) -> NoReturn:
        request = self.request  # type: ignore[attr-defined]
        if getattr(request, "accepted_renderer", None) is None:
            request.accepted_renderer, request.accepted_media_type = (
                self.perform_content_negotiation(request, force=True)
            )
        super().raise_uncaught_exception(exc)  # type: ignore[misc]
        raise exc  # not reached: DRF's raises it


def accepts_gzip(header: str) -> bool:
    """Whether Accept-Encoding allows gzip (``gzip;q=0`` forbids it)."""
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in {"gzip", "*"}:
            q = params.strip().removeprefix("q=")
            try:
                return float(q) > 0 if params.strip().startswith("q=") else True
            except ValueError:
                return False
    return False


def etag_matches(*, if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag``, so the client's copy is current.

    The weak comparison of RFC 9110 (13.1.2), as GET requires: ``W/"x"`` and ``"x"`` match.
    ``*`` matches any current representation; a list matches when any member does.
    """
    tags = parse_etags(if_none_match)
    if tags == ["*"]:
        return True
    return etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in tags}


def zoom_ttl(zoom: int) -> int:
    """Seconds a tile or view at ``zoom`` stays in the cache: low zooms change little per
    edit and cost most to build. (Every key holds the data version, so this bounds memory,
    not staleness.)"""
    return 24 * 3600 if zoom < 6 else 3600 if zoom < 10 else 600


def places_version(dataset_ids: Sequence[int] | None, *, bbox: BBox | None = None) -> str:
    """Data version of what a places request shows: some datasets or all of them (None), in
    the request's box when it has one (so edits elsewhere leave its cache alone)."""
    return selectors.data_version(
        dataset_ids=list(dataset_ids) if dataset_ids is not None else None, bbox=bbox
    )


def _stored(value: Any) -> tuple[bytes, dict[str, str]] | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value, {}
    compressed, headers = value
    return compressed, dict(headers)


def cached_build(
    *,
    cache_key: str,
    ttl: int,
    build: Callable[[], Built],
    canonical: bool = False,
    endpoint: str = "",
    gzip_level: int | None = None,
) -> tuple[bytes, dict]:
    """The gzipped body (and headers) under ``cache_key``, built at most once at a time.

    A built body is stored unless it is bigger than ``CACHE_MAX_BODY_BYTES`` (gzipped) and
    the request is not ``canonical``; requests for the same key then build it one after
    another, never side by side. An ``endpoint`` given counts the answer as a hit or a miss
    under that name (``places.metrics``); a body another request built while this one
    waited is a hit. ``gzip_level`` overrides the level chosen by size (``BIG_BODY_BYTES``)
    for bodies that level 6 cannot shrink more than level 1 does.
    """
    # The process's copy only while it hears PostgreSQL: that is how a "clear" reaches it.
    local = version_watch.WATCH.trusted()
    found = LOCAL_BODIES.get(cache_key) if local else None
    if found is not None:
        _count(endpoint, "hit")
        return found
    epoch = LOCAL_BODIES.epoch
    lock_key = f"{cache_key}:building"
    stored, seconds_left, locked = bodies_cache().get_or_lock(
        cache_key, lock_key=lock_key, lock_seconds=BUILD_LOCK_SECONDS
    )
    found = _stored(stored)
    if found is not None:
        if local:
            LOCAL_BODIES.put(cache_key, *found, ttl=seconds_left or ttl, epoch=epoch)
        _count(endpoint, "hit")
        return found
    if not locked:
        deadline = time.monotonic() + BUILD_WAIT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(BUILD_POLL_SECONDS)
            found = _stored(cache.get(cache_key))
            if found is not None:
                _count(endpoint, "hit")
                return found
            if cache.add(lock_key, 1, timeout=BUILD_LOCK_SECONDS):
                break  # the builder gave up or died: this request builds
    _count(endpoint, "miss")
    unlocked = False
    try:
        built = build()
        raw, headers = built if isinstance(built, tuple) else (built, {})
        # Big bodies take the fast level so the first request does not wait on gzip.
        level = gzip_level if gzip_level is not None else 6 if len(raw) < BIG_BODY_BYTES else 1
        compressed = gzip.compress(raw, compresslevel=level) if raw else b""
        if canonical or len(compressed) <= settings.CACHE_MAX_BODY_BYTES:
            bodies_cache().set_and_unlock(
                cache_key, (compressed, headers), timeout=ttl, lock_key=lock_key
            )
            unlocked = True
            if local:
                LOCAL_BODIES.put(cache_key, compressed, headers, ttl=ttl, epoch=epoch)
    finally:
        if not unlocked:
            cache.delete(lock_key)
    return compressed, headers


def _count(endpoint: str, result: str) -> None:
    if endpoint:
        metrics.cache_request_observe(endpoint=endpoint, result=result)


def _endpoint(request: Request) -> str:
    """The URL pattern's name the metrics count a cacheable answer under."""
    match = getattr(request, "resolver_match", None)
    return (match.url_name if match else None) or "unnamed"


def _validators(request: Request, *, key: str, vary: str) -> tuple[str, dict[str, str]]:
    """The cache key of the body named by ``key`` and the headers every answer for it carries
    (ETag, Cache-Control, Vary)."""
    digest = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:24]
    # Weak: the gzip and identity bodies are the same content under one validator.
    etag = f'W/"{digest}"'
    # A URL that names the data version (from TileJSON) can never change: cache it for a
    # year. Anything else must be revalidated (ETag), so a CDN never serves it stale.
    versioned = _names_version(request)
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=31536000, immutable" if versioned else "no-cache",
        "Vary": vary,
    }
    return f"bytes:{digest}", headers


def _names_version(request: Request) -> bool:
    """Whether the URL names a data version (``v``). A query string without a "v" (nor its
    escape) cannot, and is not parsed for it: a cached view is validated from its query
    string as it arrived (``params.request_filters_validated``), without Django's QueryDict."""
    raw = request._request.META.get("QUERY_STRING", "")
    if "v" not in raw and "%76" not in raw and request._request.encoding is None:
        return False
    return request.query_params.get("v") not in (None, "")


def _not_modified(request: Request, headers: dict[str, str]) -> bool:
    header = request.headers.get("If-None-Match", "")
    return bool(header) and etag_matches(if_none_match=header, etag=headers["ETag"])


def _stored_response(
    request: Request, *, compressed: bytes, headers: dict[str, str], content_type: str
) -> HttpResponse:
    if compressed and accepts_gzip(request.headers.get("Accept-Encoding", "")):
        headers["Content-Encoding"] = "gzip"
        body = compressed
    else:
        body = gzip.decompress(compressed) if compressed else b""
    return HttpResponse(body, content_type=content_type, headers=headers)


def cached_bytes_response(
    request: Request,
    *,
    key: str,
    ttl: int,
    build: Callable[[], Built],
    content_type: str,
    vary: str = "Accept-Encoding",
    canonical: bool = False,
    gzip_level: int | None = None,
) -> HttpResponse:
    """Answer from the ETag, the Redis cache or ``build``, compressing once per version.

    ``key`` must contain the data version of everything the body shows. ``build`` returns
    the body, or the body and headers that belong to it (a Link to the next page).
    ``canonical`` says that every client asking for this content uses this one URL, so a
    big body is worth storing (see the module docstring); leave it off for free-form queries.
    ``gzip_level`` as for ``cached_build``.
    """
    cache_key, headers = _validators(request, key=key, vary=vary)
    endpoint = _endpoint(request)
    if _not_modified(request, headers):
        _count(endpoint, "not_modified")
        return HttpResponse(status=304, headers=headers)
    compressed, extra = cached_build(
        cache_key=cache_key,
        ttl=ttl,
        build=build,
        canonical=canonical,
        endpoint=endpoint,
        gzip_level=gzip_level,
    )
    return _stored_response(
        request, compressed=compressed, headers=headers | extra, content_type=content_type
    )


@dataclass(frozen=True)
class Stream:
    """A body read piece by piece, its headers known before the first piece, and what ends
    the reading (a database snapshot) when the answer is over, sent or abandoned."""

    pieces: Iterator[bytes]
    headers: dict[str, str]
    close: Callable[[], None]


class _StreamBody:
    # The iterable handed to StreamingHttpResponse: the WSGI server calls close() when the
    # answer ends, sent in full or not (a client that went away), and even when it never
    # asked for a piece; the stream's own close() then always runs.

    def __init__(self, pieces: Iterator[bytes], stream: Stream) -> None:
        self._pieces = pieces
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces

    def close(self) -> None:
        try:
            getattr(self._pieces, "close", lambda: None)()
        finally:
            self._stream.close()


def _gzip_as_sent(stream: Stream, *, send_gzip: bool, cache_key: str, ttl: int) -> Iterator[bytes]:
    """The stream's pieces as sent (gzipped or not), gzipped alongside while the gzipped body
    stays within ``CACHE_MAX_BODY_BYTES``, and then stored: a small body is cached like any
    other, a big one is sent and forgotten, and never held whole."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, GZIP_WBITS)
    kept: list[bytes] | None = []
    kept_bytes = 0
    for piece in stream.pieces:
        if send_gzip or kept is not None:
            compressed = compressor.compress(piece)
            if kept is not None:
                kept.append(compressed)
                kept_bytes += len(compressed)
                if kept_bytes > settings.CACHE_MAX_BODY_BYTES:
                    kept = None
            piece = compressed if send_gzip else piece
        # An empty piece would end a chunked body early: gzip often holds small inputs back.
        if piece:
            yield piece
    if send_gzip or kept is not None:
        rest = compressor.flush()
        if send_gzip and rest:
            yield rest
        if kept is not None and kept_bytes + len(rest) <= settings.CACHE_MAX_BODY_BYTES:
            cache.set(cache_key, (b"".join([*kept, rest]), stream.headers), timeout=ttl)


def streamed_bytes_response(
    request: Request,
    *,
    key: str,
    ttl: int,
    open_stream: Callable[[], Stream],
    content_type: str,
    vary: str = "Accept-Encoding",
) -> HttpResponse | StreamingHttpResponse:
    """Answer from the ETag, the Redis cache, or a body streamed from ``open_stream``.

    For bodies too big to build whole in a worker. ``key`` must contain the data version of
    everything the body shows, as for ``cached_bytes_response``. A stored body is answered
    whole; otherwise the stream is sent as it is read and stored only if small (see the
    module docstring). No build lock: big bodies for free-form queries are not stored, so a
    second request could not wait for the first one's.
    """
    cache_key, headers = _validators(request, key=key, vary=vary)
    endpoint = _endpoint(request)
    if _not_modified(request, headers):
        _count(endpoint, "not_modified")
        return HttpResponse(status=304, headers=headers)
    found = _stored(cache.get(cache_key))
    if found is not None:
        _count(endpoint, "hit")
        compressed, extra = found
        return _stored_response(
            request, compressed=compressed, headers=headers | extra, content_type=content_type
        )
    _count(endpoint, "miss")
    stream = open_stream()
    try:
        send_gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        if send_gzip:
            headers["Content-Encoding"] = "gzip"
        pieces = _gzip_as_sent(stream, send_gzip=send_gzip, cache_key=cache_key, ttl=ttl)
        return StreamingHttpResponse(
            _StreamBody(pieces, stream),
            content_type=content_type,
            headers=headers | stream.headers,
        )
    except BaseException:
        stream.close()
        raise
