"""Per-node rate limit of the edge API: ``EDGE_RATE`` (e.g. ``"120/m"``) per node, whatever
key or address it uses, counted in Redis like the rest of the API (``places.throttling``),
with the same ``RateLimit-*`` headers and 429 + ``Retry-After``. An empty rate switches it
off."""

from __future__ import annotations

from django.conf import settings
from rest_framework.request import Request

from ingestion.edge.auth import EdgeNodeUser
from places.throttling import RedisRateThrottle

SCOPE = "edge"


class EdgeNodeThrottle(RedisRateThrottle):
    def client(self, request: Request) -> tuple[str, str]:
        user = getattr(request, "user", None)
        if isinstance(user, EdgeNodeUser):
            return SCOPE, f"node:{user.node.pk}"
        # Unreachable behind EdgeKeyAuthentication; counted by address if it ever happens.
        return SCOPE, f"ip:{self.get_ident(request) or 'unknown'}"

    def rate(self, scope: str) -> str | None:
        return settings.EDGE_RATE or None
