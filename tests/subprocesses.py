"""A new Python process with this project's settings, for what only a fresh process shows
(what start-up loads, what a module's import does to GDAL)."""

from __future__ import annotations

import subprocess
import sys

from django.conf import settings


def python_output(code: str) -> str:
    """What ``python -c code`` prints, run from the project's root with this environment
    (the test settings, their databases); a failure raises with its output."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=settings.BASE_DIR,
    ).stdout.strip()
