"""Login lockout: django-axes counts failed logins, and this module is what we tell it.

The rule (``config/settings/base.py``, the ``AXES_*`` block): ``LOGIN_FAILURE_LIMIT`` failed
logins per client address, or per user name, lock that address or that name out for
``LOGIN_FAILURE_WINDOW_SECONDS`` after the last failure. Counts live in Redis (axes' cache
handler), so they cost no database write and every web process shares them. Every password
check goes through ``AxesStandaloneBackend`` first, which refuses a locked-out client before any
password is hashed, and refuses a check made without a request (there is no way around the
count). A successful login does not clear the address's count: logging into one's own account
must not reset the count of guesses at others.

Here: the client's address as the API throttle sees it, the user name as counted (case and
surrounding spaces ignored), and the page a locked-out client gets (429, saying why and for
how long). Failures, lockouts and logins are also written to the security audit trail
(``places.services.audit``), from the signals connected in ``places.apps``.
"""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_client_cache_keys
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from rest_framework.throttling import BaseThrottle

from places.models_access import SecurityEventKind
from places.services.audit import security_event


def client_address(request: HttpRequest) -> str:
    """The client address as the API throttle sees it (NUM_PROXIES hops from the end of
    X-Forwarded-For), so both agree on who the client is behind a proxy."""
    return BaseThrottle().get_ident(request) or ""  # type: ignore[arg-type]


def username_of(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    """The user name a failure counts against: " Curator" and "curator" are one name."""
    name = (credentials or {}).get("username")
    if name is None and request is not None and request.method == "POST":
        name = request.POST.get("username")
    return (name or "").strip().casefold()


def lockout_wait(request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
    """Seconds until the longest of this client's lockouts ends (the address's or the name's)."""
    ttls = [cache.ttl(key) for key in get_client_cache_keys(request, credentials)]  # type: ignore[attr-defined]
    return max([t for t in ttls if t and t > 0], default=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def throttled_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return (
        "Too many failed logins for this user name or from this address. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: Any = None
) -> HttpResponse:
    """The admin's page for a locked-out client (axes' AXES_LOCKOUT_CALLABLE): 429."""
    context = {
        **admin.site.each_context(request),
        "title": "Login locked",
        "message": throttled_message(lockout_wait(request, credentials)),
    }
    # Rendered now: the middleware after axes' reads the content of what it returns.
    response = render(request, "admin/login_locked_out.html", context, status=429)
    response["Retry-After"] = str(lockout_wait(request, credentials))
    return response


class CheckedModelBackend(ModelBackend):
    """Django's model backend, after axes' in ``AUTHENTICATION_BACKENDS``. It marks the request
    when a password was really checked, so that the audit trail logs failed logins and not the
    attempts axes refused unchecked during a lockout."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if request is not None:
            request.places_password_checked = True  # type: ignore[attr-defined]
        return super().authenticate(request, username=username, password=password, **kwargs)


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **_: Any
) -> None:
    if request is not None and not getattr(request, "places_password_checked", False):
        # Refused unchecked while locked out: a flood of attempts must not become a flood of
        # rows (the lockout itself is logged).
        return
    security_event(
        SecurityEventKind.LOGIN_FAILED,
        None,
        request=request,
        username=username_of(request, credentials),
    )


def on_locked_out(sender: Any, request: Any = None, username: Any = None, **_: Any) -> None:
    if request is not None and not getattr(request, "places_password_checked", False):
        return  # axes says so again at each refused attempt; the lockout's start is logged
    security_event(
        SecurityEventKind.LOCKED_OUT, None, request=request, username=str(username or "")
    )


def on_logged_in(sender: Any, request: Any, user: Any, **_: Any) -> None:
    security_event(SecurityEventKind.LOGIN, user, request=request)
