"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

application = get_wsgi_application()

# Every view is imported now, as the worker starts, not by its first request: the URLconf
# pulls in the OGC API's CQL2 parser (pygeofilter, lark, dateparser) among others, 300 ms
# that the first request of every worker paid (the slowest sample of a benchmark run).
from django.urls import get_resolver  # noqa: E402  (needs Django set up)

get_resolver().url_patterns  # noqa: B018  (the property imports the URLconf)

# Only web processes listen for data version changes, each its own (gunicorn loads this
# module in every worker, after the fork): cached answers then need no round trip to
# PostgreSQL. Celery workers and commands never load it, and read versions per use.
from places import version_watch  # noqa: E402  (needs Django set up)

version_watch.start()
