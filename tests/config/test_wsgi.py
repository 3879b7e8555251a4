"""The WSGI entry point prepares a worker before its first request."""

from __future__ import annotations

import pytest

from tests.subprocesses import python_output


@pytest.mark.slow  # a new Python process with Django
def test_a_web_worker_imports_every_view_before_its_first_request() -> None:
    """The URLconf and the views it names (the OGC API's CQL2 parser among them) are
    imported when gunicorn loads the application, so no request pays for it."""
    code = (
        "import sys; import config.wsgi; "
        "print('places.ogc.urls' in sys.modules, 'pygeofilter' in sys.modules)"
    )
    assert python_output(code).splitlines()[-1] == "True True"
