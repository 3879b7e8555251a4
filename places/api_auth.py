"""Users authenticate to the API's write endpoints with ``Authorization: Token <key>``.

Keys are made by ``manage.py api_token_create`` and checked by ``places.services.tokens``.
A header with an unknown or revoked key is a 401, never an anonymous request: a client with
a bad key should hear so rather than be served as nobody.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from places.services.tokens import api_token_user

KEYWORD = "Token"


class ApiTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, None] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].decode(errors="replace") != KEYWORD:
            return None  # another scheme (or none): the next authentication class decides
        if len(parts) != 2:
            raise AuthenticationFailed("Authorization: give 'Token <key>'.")
        user = api_token_user(key=parts[1].decode(errors="replace"))
        if user is None:
            raise AuthenticationFailed("Authorization: unknown or revoked token.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return KEYWORD


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme of users' tokens."""

    target_class = ApiTokenAuthentication
    name = "userToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "'Token <key>', a key made by manage.py api_token_create.",
        }
