"""Settings of the benchmark's gunicorn: production as deployed, plus a URLconf that adds the
naive drf-gis baseline (``tests.benchmarks.urls``). Used only by ``make bench``."""

from config.settings.production import *  # noqa: F403

ROOT_URLCONF = "tests.benchmarks.urls"

# The benchmark measures the server, not the per-client limit (wrk is one client address).
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}  # noqa: F405
# The serving figures ask for the largest pages any client may (a signed-in one's), without a
# session: the anonymous maximum is raised to it.
PLACES_API_ANON_MAX_PAGE_SIZE = PLACES_API_MAX_PAGE_SIZE  # noqa: F405
