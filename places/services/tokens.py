"""Users' API tokens: made here, shown once, kept only as their SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.utils import timezone

from places.models_curation import ApiToken

PREFIX = "plc_"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_create(*, user: Any, name: str = "") -> tuple[ApiToken, str]:
    """A new token of ``user``; returns the row and the key, which is not stored and cannot
    be shown again."""
    key = PREFIX + secrets.token_urlsafe(32)
    return ApiToken.objects.create(user=user, key_sha256=_digest(key), name=name), key


def api_token_user(*, key: str) -> Any | None:
    """The active user a key belongs to; None for an unknown, revoked or malformed key, or a
    user who is no longer active. A lookup by digest: the key itself is never compared."""
    if not key.startswith(PREFIX):
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_sha256=_digest(key), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.user.is_active:
        return None
    return token.user


def api_token_revoke(*, token: ApiToken) -> None:
    """Revoke a token (kept, so what it did stays attributable)."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
