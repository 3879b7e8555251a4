"""Security headers Django has no setting for, and the secret-key rule production enforces."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed

# Django's own deploy check (security.W009) asks for the same: at least 50 characters, at least
# 5 different ones, and not the placeholder ``startproject`` writes.
SECRET_KEY_MIN_LENGTH = 50
SECRET_KEY_MIN_UNIQUE_CHARACTERS = 5
SECRET_KEY_INSECURE_PREFIX = "django-insecure"  # noqa: S105 # nosec B105 # a prefix we refuse, not a key


def secret_key_weakness(key: str) -> str | None:
    """Why ``key`` is too weak to sign sessions and tokens, or None when it is strong enough."""
    if key.startswith(SECRET_KEY_INSECURE_PREFIX):
        return f"it starts with {SECRET_KEY_INSECURE_PREFIX!r} (a generated development key)"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"it has {len(key)} characters, fewer than {SECRET_KEY_MIN_LENGTH}"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS:
        return (
            f"it has {len(set(key))} different characters, "
            f"fewer than {SECRET_KEY_MIN_UNIQUE_CHARACTERS}"
        )
    return None


def permissions_policy_header(policy: Mapping[str, list[str]]) -> str:
    """``{"camera": []}`` -> ``camera=()``; an empty list turns the feature off for every frame."""
    return ", ".join(f"{feature}=({' '.join(origins)})" for feature, origins in policy.items())


class PermissionsPolicyMiddleware:
    """Send ``Permissions-Policy`` from ``settings.PERMISSIONS_POLICY`` on every response.

    The header is built once, at start-up; a response that already carries one keeps it.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.header = permissions_policy_header(settings.PERMISSIONS_POLICY)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if self.header:
            response.headers.setdefault("Permissions-Policy", self.header)
        return response


class UndeclaredMethodMiddleware:
    """Answer 405, with the ``Allow`` header, to a method the view does not implement.

    DRF checks authentication, permissions and throttles before it looks for the method's
    handler, so an anonymous POST or TRACE to a read-only API view got 403 (or 401) instead
    of 405. Class-based views are asked which methods they implement; any other view (admin,
    function views) refuses ``TRACE``, which no view of ours answers.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], *args: Any
    ) -> HttpResponse | None:
        method = (request.method or "").lower()
        view_class = getattr(view_func, "view_class", None)
        if view_class is None:
            return HttpResponseNotAllowed(["GET", "HEAD"]) if method == "trace" else None
        view = view_class(**getattr(view_func, "view_initkwargs", {}))
        allowed = [m for m in view.http_method_names if hasattr(view, m)]
        if "get" in allowed and "head" not in allowed:
            allowed.append("head")  # View.setup() answers HEAD with GET
        if method in allowed:
            return None
        return HttpResponseNotAllowed([m.upper() for m in allowed])
