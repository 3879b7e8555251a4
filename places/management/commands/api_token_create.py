"""Make an API token for a user and print its key (shown this once only)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from places.services.tokens import api_token_create


class Command(BaseCommand):
    help = "Make an API token for a user (Authorization: Token <key>); the key is printed once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="What the token is for.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user {options['username']!r}")
        _, key = api_token_create(user=user, name=options["name"])
        self.stdout.write(key)
