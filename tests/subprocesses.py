"""A new Python process of this project, for what only a fresh process shows (what start-up
loads, what a module's import does to GDAL)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings


def python_output(code: str) -> str:
    """What ``python -c code`` prints, run from the project's root with this environment.

    The child reads the settings as a process outside pytest does (the databases the
    environment names, not the test databases), so it must not need their contents; it does
    not listen for data versions (``DATA_VERSION_LISTEN_URL=off``). A failure fails the
    test with the child's standard error.
    """
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=settings.BASE_DIR,
        env={**os.environ, "DATA_VERSION_LISTEN_URL": "off"},
        check=False,
    )
    if done.returncode:
        pytest.fail(f"python -c {code!r} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout.strip()
