"""The OpenAPI schema's view of authentication and of the error answers every operation shares."""

from __future__ import annotations

from typing import Any, Literal

from drf_spectacular.openapi import AutoSchema


class PlacesAutoSchema(AutoSchema):
    """Operations that anyone may call list no security requirement.

    drf-spectacular lists the session and token schemes on them as optional alternatives
    (``{}`` among them), and Swagger UI then draws a lock on every public operation, which
    reads as "log in first". Operations that need a login keep their requirements.
    """

    def get_auth(self) -> list[dict[str, Any]]:
        auths = super().get_auth()  # also registers the schemes as components
        return [] if {} in auths else auths

    def _get_response_bodies(
        self, direction: Literal["request", "response"] = "response"
    ) -> dict[str, Any]:
        """Every operation documents its 404 and, when it takes parameters, its 400.

        Views refuse invalid parameters with 400 (``{"parameter": ["message", ...]}`` or
        ``{"detail": "message"}``) and unknown ids or ``format`` values with 404
        (``{"detail": "message"}``); writing that once here keeps each view's schema to its
        successful answers.
        """
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        if self._get_parameters():
            responses.setdefault("400", _error("The parameters are invalid.", FIELD_ERRORS))
        not_found = _error("Not found.", DETAIL)
        # A path parameter that does not fit the route (a word for a number) is refused by
        # Django's URL resolver, before any view, with its HTML page.
        not_found["content"]["text/html"] = {"schema": {"type": "string"}}
        responses.setdefault("404", not_found)
        return responses


DETAIL = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
FIELD_ERRORS = {
    "type": "object",
    "description": '{"detail": "..."} or {"parameter": ["message", ...]}',
    "additionalProperties": {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
    },
}


def _error(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
