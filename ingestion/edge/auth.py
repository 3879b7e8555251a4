"""Edge nodes authenticate with their key: ``Authorization: Bearer edge_<prefix>_<secret>``.

Each view names the scope it needs (``edge_scope``; None: any key of the node). A key that is
missing, malformed, unknown, wrong, revoked or expired, or whose node is disabled, gets 401
with ``WWW-Authenticate: Bearer`` and ``{"detail", "code"}`` naming the problem; a valid key
without the scope gets 403 ``scope_missing``. The checks themselves (constant-time compare,
expiry, revocation) are the key service's (``ingestion.edge.services.keys``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from ingestion.edge.models import EdgeNode, EdgeNodeKey
from ingestion.edge.services.keys import EdgeAuthError, edge_key_authenticate

REALM = "edge"


@dataclass(frozen=True)
class EdgeNodeUser:
    """``request.user`` of an edge request: the node, never a person (no permissions, not
    staff). ``is_authenticated`` so DRF's machinery treats the request as signed in."""

    node: EdgeNode
    key: EdgeNodeKey
    is_authenticated: bool = True
    is_anonymous: bool = False
    is_staff: bool = False
    is_superuser: bool = False

    @property
    def pk(self) -> int:
        return self.node.pk

    def get_username(self) -> str:
        # What logging and error reporting show for the request.
        return f"edge node {self.node.name}"


class EdgeKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[EdgeNodeUser, EdgeNodeKey]:
        view = request.parser_context.get("view") if request.parser_context else None
        scope = getattr(view, "edge_scope", None)
        raw = request.META.get("HTTP_AUTHORIZATION")
        try:
            key = edge_key_authenticate(raw=raw, scope=scope)
        except EdgeAuthError as exc:
            body = {"detail": exc.message, "code": exc.code}
            if exc.code == "scope_missing":
                raise PermissionDenied(body) from None
            raise AuthenticationFailed(body) from None
        return EdgeNodeUser(node=key.node, key=key), key

    def authenticate_header(self, request: Request) -> str:
        return f'Bearer realm="{REALM}"'


class IsEdgeNode(BasePermission):
    """Only requests authenticated by an edge key (the authentication already refused the
    others; this keeps a view safe if another authentication class is ever added)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, EdgeNodeUser)


class EdgeKeyScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme of edge keys (Swagger UI's "Authorize" takes one)."""

    target_class = EdgeKeyAuthentication
    name = "edgeKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "edge_<prefix>_<secret>",
            "description": "An edge node's key, shown once when it was created.",
        }
