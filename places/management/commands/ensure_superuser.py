"""Create the development superuser if it does not exist (never changes an existing one)."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a superuser from DJANGO_SUPERUSER_USERNAME/PASSWORD/EMAIL (default admin/admin)."

    def handle(self, *args: Any, **options: Any) -> None:
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME", "admin")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "admin")
        email = os.environ.get("DJANGO_SUPERUSER_EMAIL", "admin@example.org")
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            self.stdout.write(f"superuser {username!r} exists (password unchanged)")
            return
        user_model.objects.create_superuser(username=username, email=email, password=password)
        # Only the development default is echoed; a password given in the environment is not.
        shown = password if "DJANGO_SUPERUSER_PASSWORD" not in os.environ else "(from environment)"
        self.stdout.write(f"created superuser {username!r} with password {shown}")
