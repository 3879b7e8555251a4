"""The change feed over HTTP: the ``limit`` parameter, the 304 and the gzip of a page.

``ChangesApi`` stays a thin view: it hands the request's parameters and headers to
``changes_respond`` and turns ``ChangesQueryInvalid`` into a 400 naming the field. The page
itself is the selector's (``selectors.edge_changes_list``).

- ``limit``: 1 to ``selectors.MAX_LIMIT`` in ASCII digits (``str.isdigit`` also takes "²",
  which ``int`` refuses, and "١", which it reads as 1).
- ``ETag``: the answer's cursor for this node. 304 only when the page leaves the cursor where
  it was (no entries, nothing more) and ``If-None-Match`` names it: a page past other
  regions' changes is empty too, but its cursor moves on and the device must keep it.
- gzip when ``Accept-Encoding`` allows it and the body is worth it: a snapshot page of 5,000
  places is about a megabyte of JSON, a sixth of it gzipped.
"""

from __future__ import annotations

import gzip
import re

from django.http import HttpResponse
from rest_framework.renderers import JSONRenderer

from ingestion.edge import selectors
from ingestion.edge.models import EdgeNode
from places.serving.responses import accepts_gzip, etag_matches

LIMIT = re.compile(r"[0-9]{1,4}")
# Smaller answers go uncompressed: gzip would save little.
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 5


class ChangesQueryInvalid(ValueError):
    """A query parameter of the change feed is invalid (HTTP 400 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


def changes_limit_parse(raw: str | None) -> int:
    """The page size a ``limit`` parameter asks for (the default when absent)."""
    if raw is None:
        return selectors.DEFAULT_LIMIT
    if not LIMIT.fullmatch(raw) or not 1 <= int(raw) <= selectors.MAX_LIMIT:
        raise ChangesQueryInvalid(
            "limit", f"limit must be a whole number from 1 to {selectors.MAX_LIMIT}."
        )
    return int(raw)


def changes_respond(
    *,
    node: EdgeNode,
    cursor: str | None,
    raw_limit: str | None,
    if_none_match: str,
    accept_encoding: str,
) -> HttpResponse:
    """The answer to one change-feed request: a page (gzipped when allowed) or a 304.

    Raises ``ChangesQueryInvalid`` for a bad ``limit`` or ``cursor``.
    """
    limit = changes_limit_parse(raw_limit)
    try:
        page = selectors.edge_changes_list(node=node, cursor=cursor, limit=limit)
    except selectors.CursorInvalid as exc:
        raise ChangesQueryInvalid("cursor", str(exc)) from None
    etag = selectors.changes_etag(node=node, cursor=page.cursor)
    unmoved = page.cursor == cursor and not page.changes and not page.has_more
    if unmoved and etag_matches(if_none_match=if_none_match, etag=etag):
        not_modified = HttpResponse(status=304)
        not_modified["ETag"] = etag
        return not_modified
    body = JSONRenderer().render(page.body())
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if len(body) >= GZIP_MIN_BYTES and accepts_gzip(accept_encoding):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers["Content-Encoding"] = "gzip"
    return HttpResponse(body, content_type="application/json", headers=headers)
