"""The WSGI entry point prepares a worker before its first request."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.conf import settings


@pytest.mark.slow  # a new Python process with Django
def test_a_web_worker_imports_every_view_before_its_first_request() -> None:
    """The URLconf and the views it names (the OGC API's CQL2 parser among them) are
    imported when gunicorn loads the application, so no request pays for it."""
    code = (
        "import sys; import config.wsgi; from places.version_watch import WATCH; WATCH.stop(); "
        "print('places.ogc.urls' in sys.modules, 'pygeofilter' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=settings.BASE_DIR,
    ).stdout.strip()
    assert out.splitlines()[-1] == "True True"
