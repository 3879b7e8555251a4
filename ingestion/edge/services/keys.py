"""Edge nodes and their API keys: create, revoke, authenticate.

A key reads ``edge_<prefix>_<secret>``: the prefix (8 of ``[a-z0-9]``, unique, not secret)
finds the row, the SHA-256 of the whole key proves it. The secret is 32 random bytes, so a
fast hash is enough (nothing to brute-force); only the hash is stored and the key text is
handed out once, by ``edge_key_create``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.contrib.gis.geos import Point
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ingestion.edge.models import EdgeNode, EdgeNodeKey, KeyScope, NodeStatus
from ingestion.edge.services.nodes import edge_node_seen
from places.models import Region

KEY_PATTERN = re.compile(r"edge_(?P<prefix>[a-z0-9]{8})_(?P<secret>[A-Za-z0-9_-]{43})")
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
PREFIX_LENGTH = 8
ALL_SCOPES: tuple[str, ...] = tuple(KeyScope.values)
# A key's last use is written at most this often: a busy node would otherwise write its key
# row on every request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class EdgeAuthError(Exception):
    """A request's key is refused. ``code`` is the protocol's machine-readable reason;
    ``scope_missing`` means 403, every other code 401."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EdgeNodeNameTaken(ValueError):
    """Another node already has this name."""


@dataclass(frozen=True)
class CreatedKey:
    key: EdgeNodeKey
    secret: str  # the whole key text, shown once and never stored


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def edge_node_create(
    *,
    name: str,
    region: Region,
    owner: User | None = None,
    location: Point | None = None,
) -> EdgeNode:
    """Register a node serving ``region``. Names are unique: a taken one raises
    ``EdgeNodeNameTaken`` (the unique constraint decides, so two racing creators cannot both
    succeed)."""
    name = name.strip()
    if not name:
        raise ValueError("A node needs a name.")
    if location is not None and location.srid not in (None, 4326):
        moved = location.transform(4326, clone=True)
        location = Point(moved.x, moved.y, srid=4326)  # type: ignore[attr-defined]
    try:
        with transaction.atomic():
            return EdgeNode.objects.create(name=name, region=region, owner=owner, location=location)
    except IntegrityError as exc:
        if EdgeNode.objects.filter(name=name).exists():
            raise EdgeNodeNameTaken(f"A node named {name!r} already exists.") from exc
        raise


def edge_key_create(
    *,
    node: EdgeNode,
    scopes: Sequence[str] = ALL_SCOPES,
    name: str = "",
    expires_at: dt.datetime | None = None,
    created_by: User | None = None,
) -> CreatedKey:
    """Make a new key for ``node``. The returned ``secret`` is the only copy of the key text;
    the row keeps its prefix and hash. Scopes must be known and at least one."""
    chosen = list(dict.fromkeys(scopes))
    unknown = [scope for scope in chosen if scope not in ALL_SCOPES]
    if unknown or not chosen:
        raise ValueError(
            f"Scopes must be some of {', '.join(ALL_SCOPES)}; got {', '.join(chosen) or 'none'}."
        )
    if expires_at is not None and timezone.is_naive(expires_at):
        raise ValueError("expires_at must carry a time zone.")
    # A prefix collision (36^8 prefixes) is unlikely but decided by the unique constraint.
    for _attempt in range(5):
        prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
        raw = f"edge_{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with transaction.atomic():
                key = EdgeNodeKey.objects.create(
                    node=node,
                    name=name,
                    prefix=prefix,
                    key_hash=key_hash(raw),
                    scopes=chosen,
                    expires_at=expires_at,
                    created_by=created_by,
                )
        except IntegrityError:
            if EdgeNodeKey.objects.filter(prefix=prefix).exists():
                continue
            raise
        return CreatedKey(key=key, secret=raw)
    raise RuntimeError("Could not find a free key prefix.")  # pragma: no cover


def edge_key_revoke(*, key: EdgeNodeKey) -> EdgeNodeKey:
    """Refuse the key from now on. Revoking twice keeps the first time."""
    now = timezone.now()
    EdgeNodeKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    key.refresh_from_db(fields=["revoked_at"])
    return key


def edge_key_authenticate(*, raw: str | None, scope: str | None) -> EdgeNodeKey:
    """The key for ``raw`` (the key text, or a whole ``Bearer <key>`` header value), with its
    node loaded, if it may act with ``scope`` (None: with any scope it holds); else
    ``EdgeAuthError`` naming the problem.

    The hash comparison takes constant time. Revocation, expiry and the node's status are
    only reported once the key is proven, so an unknown key learns nothing about real ones.
    The key's last use, and the node's contact (``edge_node_seen``), are written at most once
    a minute.
    """
    scheme, _, rest = (raw or "").strip().partition(" ")
    text = rest.strip() if scheme.lower() == "bearer" else (raw or "").strip()
    if not text:
        raise EdgeAuthError("key_missing", "No key was given: send 'Authorization: Bearer <key>'.")
    match = KEY_PATTERN.fullmatch(text)
    if match is None:
        raise EdgeAuthError(
            "key_malformed",
            "The key is malformed: expected edge_<8 letters or digits>_<43 characters>.",
        )
    key = EdgeNodeKey.objects.select_related("node").filter(prefix=match["prefix"]).first()
    # Hash either way, so an unknown prefix takes as long as a wrong secret.
    given = key_hash(text)
    if key is None or not hmac.compare_digest(given, key.key_hash):
        raise EdgeAuthError("key_unknown", "The key is not known: it is wrong or was deleted.")
    now = timezone.now()
    if key.revoked_at is not None:
        raise EdgeAuthError("key_revoked", f"The key has been revoked (at {_iso(key.revoked_at)}).")
    if key.expires_at is not None and key.expires_at <= now:
        raise EdgeAuthError("key_expired", f"The key expired at {_iso(key.expires_at)}.")
    if key.node.status == NodeStatus.DISABLED:
        raise EdgeAuthError(
            "node_disabled", f"The node {key.node.name!r} is disabled; its keys are refused."
        )
    if (scope not in key.scopes) if scope is not None else not key.scopes:
        raise EdgeAuthError(
            "scope_missing",
            f"The key lacks the scope {scope!r} (it has: {', '.join(key.scopes) or 'none'})."
            if scope is not None
            else "The key has no scope at all.",
        )
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests of one node write the row once a minute.
        written = (
            EdgeNodeKey.objects.filter(pk=key.pk)
            .filter(Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - LAST_USED_RESOLUTION))
            .update(last_used_at=now)
        )
        key.last_used_at = now
        if written:
            # Any request is contact: a node that only pulls places is not silent.
            edge_node_seen(node=key.node, now=now)
    return key


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
