"""Failed logins are counted in Redis, per client address and per user name, and a client or
a user name with ``LOGIN_FAILURE_LIMIT`` failures inside ``LOGIN_FAILURE_WINDOW_SECONDS`` is
refused before any password is hashed until the window ends.

Every password check goes through ``ThrottledModelBackend`` (``AUTHENTICATION_BACKENDS``),
so the rule holds for the admin's login and for any login added later; the admin's form
checks first so that it can say why (``ThrottledAuthenticationForm``). Failures are counted
from Django's ``user_login_failed`` signal, whoever asked for the check. Each window is
fixed: it starts at the first failure and is not extended by later ones, so a refused user
can always try again when it ends. A successful login clears its user name's count (not its
address's: one's own account must not reset the count of guesses at others).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from rest_framework.throttling import BaseThrottle

KEY_PREFIX = "login-failures"


def _keys(*, request: HttpRequest | None, username: str | None) -> list[str]:
    keys = []
    if request is not None:
        # The client address as the API throttle sees it (NUM_PROXIES hops from the end of
        # X-Forwarded-For), so both agree on who the client is behind a proxy.
        keys.append(f"{KEY_PREFIX}:ip:{BaseThrottle().get_ident(request)}")  # type: ignore[arg-type]
    if username:
        # Hashed: a user name is free text, and keys must be short and safe.
        digest = hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:32]
        keys.append(f"{KEY_PREFIX}:user:{digest}")
    return keys


def login_throttle_wait(*, request: HttpRequest | None, username: str | None) -> int:
    """Seconds until this client and user name may try a password again; 0 when they may now.

    Costs one Redis round trip per key and no password hash.
    """
    limit = settings.LOGIN_FAILURE_LIMIT
    wait = 0
    for key in _keys(request=request, username=username):
        failures = cache.get(key) or 0
        if failures >= limit:
            ttl = cache.ttl(key)  # type: ignore[attr-defined]  # django-redis
            wait = max(wait, ttl if ttl and ttl > 0 else settings.LOGIN_FAILURE_WINDOW_SECONDS)
    return wait


def login_failure_record(*, request: HttpRequest | None, username: str | None) -> None:
    """Count one failed login against the client's address and the user name, atomically
    (Redis INCR), in a window that starts at the first failure."""
    for key in _keys(request=request, username=username):
        cache.add(key, 0, timeout=settings.LOGIN_FAILURE_WINDOW_SECONDS)
        try:
            cache.incr(key)
        except ValueError:  # the window ended between add and incr: this failure opens one
            cache.add(key, 1, timeout=settings.LOGIN_FAILURE_WINDOW_SECONDS)


def login_failures_clear(*, username: str) -> None:
    """Forget the failures of a user name (after that user logged in)."""
    for key in _keys(request=None, username=username):
        cache.delete(key)


def throttled_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return (
        "Too many failed logins for this user name or from this address. "
        f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
    )


class ThrottledModelBackend(ModelBackend):
    """Django's model backend, refusing without a password check while the client or the
    user name is throttled. ``PermissionDenied`` makes ``authenticate`` stop at once."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        name = username or kwargs.get(get_user_model().USERNAME_FIELD)
        if login_throttle_wait(request=request, username=name):
            raise PermissionDenied("login throttled")
        return super().authenticate(request, username=username, password=password, **kwargs)


class ThrottledAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form, saying so when the login is throttled."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": "%(message)s",
    }

    def clean(self) -> dict[str, Any]:
        wait = login_throttle_wait(request=self.request, username=self.cleaned_data.get("username"))
        if wait:
            raise ValidationError(
                self.error_messages["throttled"],
                code="throttled",
                params={"message": throttled_message(wait)},
            )
        return super().clean()


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **_: Any
) -> None:
    login_failure_record(request=request, username=credentials.get(get_user_model().USERNAME_FIELD))


def on_logged_in(sender: Any, request: Any, user: Any, **_: Any) -> None:
    login_failures_clear(username=user.get_username())
