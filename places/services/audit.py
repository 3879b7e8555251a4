"""The security audit trail: one append-only row per security event.

``security_event`` is the one writer. It is called by the login signals (``places.apps``),
by role grants (``places.services.access``), by the import finish (imports applied), and is
the hook for merges and reverts. Rows are never changed: the table refuses UPDATE and DELETE
(migration ``places.0019``), and the admin shows them read-only to admins only.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from places.models_access import SecurityEvent, SecurityEventKind


def security_event(
    kind: SecurityEventKind | str,
    user: Any = None,
    *,
    request: HttpRequest | None = None,
    username: str = "",
    dataset: Any = None,
    **details: Any,
) -> SecurityEvent:
    """Append one event. ``user`` is who acted (a User, or None for the system or an unknown
    name); ``dataset`` a Dataset or its id; ``details`` any JSON values worth keeping (the
    role, the job, the changes reverted …). Written in the caller's transaction, so an event
    of work that rolls back goes with it."""
    known = user if getattr(user, "is_authenticated", False) else None
    return SecurityEvent.objects.create(
        kind=SecurityEventKind(kind),
        user=known,
        username=(username or (known.get_username() if known else ""))[:150],
        ip_address=_client_address(request),
        dataset_id=dataset if dataset is None or isinstance(dataset, int) else dataset.pk,
        details=details,
    )


def _client_address(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    # The address as the login lockout and the API throttle see it (NUM_PROXIES hops).
    from places.login_throttle import client_address

    return client_address(request) or None
