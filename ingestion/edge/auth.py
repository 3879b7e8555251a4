"""Edge nodes authenticate with their key: ``Authorization: Bearer edge_<prefix>_<secret>``.

Each view names the scope it needs (``edge_scope``; None: any key of the node). A key that is
missing, malformed, unknown, wrong, revoked or expired, or whose node is disabled, gets 401
with ``WWW-Authenticate: Bearer`` and ``{"detail", "code"}`` naming the problem; a valid key
without the scope gets 403 ``scope_missing``. The checks themselves (constant-time compare,
expiry, revocation) are the key service's (``ingestion.edge.services.keys``).

The per-node rate limit (``throttling``) runs after authentication, so it cannot slow down
someone trying keys. Failed authentications are therefore counted per client address
(``EDGE_AUTH_FAILURE_RATE``, in the same Redis windows as the API's rate limits): past the
rate that address gets 429 with ``Retry-After`` for the rest of the window, before its key is
even looked up, whatever key it sends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from redis.exceptions import RedisError
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied, Throttled
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from ingestion.edge.models import EdgeNode, EdgeNodeKey
from ingestion.edge.services.keys import EdgeAuthError, edge_key_authenticate
from places.throttling import KEY_PREFIX, parse_rate, rate_limit_hit

logger = logging.getLogger(__name__)

REALM = "edge"
FAILURES_SCOPE = "edge-auth-failures"


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
        address = f"ip:{BaseThrottle().get_ident(request) or 'unknown'}"
        _refuse_if_failing(address)
        raw = request.META.get("HTTP_AUTHORIZATION")
        try:
            key = edge_key_authenticate(raw=raw, scope=scope)
        except EdgeAuthError as exc:
            body = {"detail": exc.message, "code": exc.code}
            if exc.code == "scope_missing":
                raise PermissionDenied(body) from None
            _count_failure(address)
            raise AuthenticationFailed(body) from None
        return EdgeNodeUser(node=key.node, key=key), key

    def authenticate_header(self, request: Request) -> str:
        return f'Bearer realm="{REALM}"'


def _failure_rate() -> tuple[int, int] | None:
    rate = settings.EDGE_AUTH_FAILURE_RATE
    return parse_rate(rate) if rate else None


def _too_many_failures(wait: int) -> Throttled:
    # DRF adds "Expected available in N seconds." and the Retry-After header.
    return Throttled(
        wait=wait, detail="Too many failed authentications from this address.", code="throttled"
    )


def _refuse_if_failing(address: str) -> None:
    """429 for an address whose failures passed the rate in the current window: a read of
    its counter, no key lookup."""
    rate = _failure_rate()
    if rate is None:
        return
    limit, _ = rate
    # The name places.throttling.rate_limit_hit counts under.
    name = cache.make_key(f"{KEY_PREFIX}:{FAILURES_SCOPE}:{address}")
    try:
        with get_redis_connection("default").pipeline(transaction=False) as pipe:
            pipe.get(name)
            pipe.ttl(name)
            count, ttl = pipe.execute()
    except RedisError as exc:
        logger.warning("edge authentication failures not checked, Redis unavailable: %s", exc)
        return
    if count is not None and int(count) > limit:
        raise _too_many_failures(max(int(ttl), 1))


def _count_failure(address: str) -> None:
    """Count a failed authentication; the one that passes the rate is already a 429."""
    rate = _failure_rate()
    if rate is None:
        return
    limit, period = rate
    try:
        state = rate_limit_hit(
            key=f"{FAILURES_SCOPE}:{address}", limit=limit, period_seconds=period
        )
    except RedisError as exc:
        logger.warning("edge authentication failure not counted, Redis unavailable: %s", exc)
        return
    if not state.allowed:
        raise _too_many_failures(state.reset_seconds)


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
