"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

application = get_wsgi_application()

# Only web processes listen for data version changes, each its own (gunicorn loads this
# module in every worker, after the fork): cached answers then need no round trip to
# PostgreSQL. Celery workers and commands never load it, and read versions per use.
from places import version_watch  # noqa: E402  (needs Django set up)

version_watch.start()
