"""Liveness and readiness probes (routed by ``places.urls``).

``/health/live/`` answers as long as the process serves requests. ``/health/ready/`` checks
every dependency a request or task may need and names each one in its JSON body, so that an
operator sees at once which one failed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from kombu import Connection

logger = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 2


def _check_database(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_cache() -> None:
    # A key per probe: pods probing at once must not read each other's value.
    token = uuid.uuid4().hex
    key = f"health:ready:{token}"
    cache.set(key, token, timeout=10)
    if cache.get(key) != token:
        raise RuntimeError("cache did not return the value just written")
    cache.delete(key)


def _check_broker() -> None:
    url = settings.CELERY_BROKER_URL
    if not url:
        raise RuntimeError("CELERY_BROKER_URL is not set")
    with Connection(
        url,
        connect_timeout=CHECK_TIMEOUT_SECONDS,
        transport_options={"socket_timeout": CHECK_TIMEOUT_SECONDS},
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)


def _check_migrations() -> None:
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if plan:
        pending = ", ".join(f"{m.app_label}.{m.name}" for m, _ in plan[:5])
        raise RuntimeError(f"{len(plan)} unapplied migration(s): {pending}")


def readiness_checks() -> dict[str, Callable[[], None]]:
    checks: dict[str, Callable[[], None]] = {"database": lambda: _check_database("default")}
    if settings.REPLICA_DATABASE_URL:
        checks["replica"] = lambda: _check_database("replica")
    checks["cache"] = _check_cache
    checks["broker"] = _check_broker
    checks["migrations"] = _check_migrations
    return checks


def run_readiness_checks() -> tuple[bool, dict[str, dict[str, object]]]:
    results: dict[str, dict[str, object]] = {}
    healthy = True
    for name, check in readiness_checks().items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # any failure of a dependency makes us not ready
            healthy = False
            results[name] = {"status": "fail", "error": f"{type(exc).__name__}: {exc}"[:300]}
            logger.warning("readiness check %s failed: %s", name, exc)
        else:
            results[name] = {"status": "ok"}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return healthy, results


def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def ready(request: HttpRequest) -> JsonResponse:
    healthy, results = run_readiness_checks()
    body = {"status": "ok" if healthy else "fail", "checks": results}
    response = JsonResponse(body, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response
