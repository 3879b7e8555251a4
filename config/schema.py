"""The OpenAPI schema's view of authentication."""

from __future__ import annotations

from typing import Any

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
