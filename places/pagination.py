"""Keyset (cursor) pagination that returns a GeoJSON FeatureCollection.

Keyset pages cost the same at page 1 and page 10,000 and never run COUNT(*), so they stay
fast on millions of rows; the client follows ``next`` until it is null.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response


class GeoJsonCursorPagination(CursorPagination):
    ordering = "id"
    page_size_query_param = "limit"

    def __init__(self) -> None:
        self.page_size = settings.PLACES_API_PAGE_SIZE
        self.max_page_size = settings.PLACES_API_MAX_PAGE_SIZE

    def get_page_size(self, request: Any) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            raise ValidationError({"limit": [f"must be an integer, got {raw[:20]!r}"]}) from None
        if not 1 <= size <= self.max_page_size:
            raise ValidationError({"limit": [f"must be between 1 and {self.max_page_size}"]})
        return size

    def decode_cursor(self, request: Any) -> Any:
        """DRF's cursor, refused with HTTP 400 unless its position is an integer id."""
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                int(cursor.position)
            except (TypeError, ValueError):
                raise ValidationError({"cursor": ["is not a cursor this API handed out"]}) from None
        return cursor

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "type": "FeatureCollection",
                "next": self.get_next_link(),
                "previous": self.get_previous_link(),
                "numberReturned": len(data["features"]),
                "features": data["features"],
            }
        )

    def get_paginated_response_schema(self, schema: dict) -> dict:
        return {
            "type": "object",
            "required": ["type", "features"],
            "properties": {
                "type": {"type": "string", "enum": ["FeatureCollection"]},
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "numberReturned": {"type": "integer"},
                "features": schema.get("properties", {}).get("features", schema),
            },
        }
