"""Liveness and readiness probes and the Prometheus metrics (routed by ``places.urls``).

``/health/live/`` answers as long as the process serves requests, touching nothing else.
``/health/ready/`` checks every dependency a request or task may need and names each one in
its JSON body, so that an operator sees at once which one failed; a process runs the checks
at most once per ``READY_CACHE_SECONDS``, however many probes arrive. Both answer GET and
HEAD only. The analytics replica is reported beside the checks (its state and lag) and never
fails them. ``/metrics`` answers only requests that come, through every hop, from
``METRICS_ALLOWED_NETWORKS`` (Prometheus inside the cluster), and is a 404 to anyone else.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST

from places.metrics import metrics_exposition

logger = logging.getLogger(__name__)
CHECK_TIMEOUT_SECONDS = 2
# Probes (several kubelets, load balancers, anyone who finds the URL) reuse one result for
# this long: a flood of calls costs one round of checks per process, not one per call.
READY_CACHE_SECONDS = 2.0

Results = dict[str, dict[str, object]]


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
    checks["cache"] = _check_cache
    checks["broker"] = _check_broker
    checks["migrations"] = _check_migrations
    return checks


def replica_report() -> dict[str, object]:
    """The analytics replica's state and lag ("absent", "down", "streaming", ...), reported
    beside the checks but never one of them: analytics fall back or wait (analytics.replica),
    the map does not need it, so a replica that is down must not take the site out."""
    from analytics.replica import replica_status

    started = time.perf_counter()
    try:
        report = replica_status().as_json()
    except Exception as exc:  # whatever went wrong, readiness still answers
        report = {"state": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    report["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return report


def run_readiness_checks() -> tuple[bool, Results]:
    results: Results = {}
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


class CachedReadiness:
    """The last round of readiness checks, reused for ``seconds``.

    Kept in the process, not in Redis, because Redis is one of the things being checked.
    One thread runs the checks while the others wait for its result, so concurrent probes
    never run them side by side.
    """

    def __init__(self, *, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._last: tuple[float, bool, Results, dict[str, object]] | None = None

    def get(self) -> tuple[bool, Results, dict[str, object]]:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.seconds:
                return self._last[1], self._last[2], self._last[3]
            healthy, results = run_readiness_checks()
            replica = replica_report()
            self._last = (time.monotonic(), healthy, results, replica)
            return healthy, results, replica

    def forget(self) -> None:
        with self._lock:
            self._last = None


READINESS = CachedReadiness(seconds=READY_CACHE_SECONDS)


@require_safe
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_safe
def ready(request: HttpRequest) -> JsonResponse:
    healthy, results, replica = READINESS.get()
    body = {"status": "ok" if healthy else "fail", "checks": results, "replica": replica}
    response = JsonResponse(body, status=200 if healthy else 503)
    response["Cache-Control"] = "no-store"
    return response


def _forwarded_for(header: str) -> Iterator[str]:
    """The ``for=`` nodes of an RFC 7239 ``Forwarded`` header, unquoted."""
    for element in header.split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.strip().lower() == "for":
                yield value.strip().strip('"')


def _address(node: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a header node (``10.0.0.1``, ``10.0.0.1:80``, ``[::1]:80``), or None
    for anything else (``unknown``, an obfuscated name, junk)."""
    node = node.strip()
    if node.startswith("["):
        node = node[1 : node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        address = ipaddress.ip_address(node)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def metrics_client_allowed(request: HttpRequest) -> bool:
    """Whether every hop of the request (the peer and every address a proxy says it
    forwarded for) lies in ``METRICS_ALLOWED_NETWORKS``.

    A request from the internet through an ingress or a proxy on a private address carries
    the client's public address in ``X-Forwarded-For`` (or ``Forwarded``), which a proxy
    appends to and a client cannot remove, so it is refused; Prometheus scraping the pod
    directly has a private peer address and no such header. A proxy in front must therefore
    send ``X-Forwarded-For`` (nginx's ``$proxy_add_x_forwarded_for``, every ingress does).
    """
    forwarded = [n for n in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if n.strip()]
    forwarded += _forwarded_for(request.META.get("HTTP_FORWARDED", ""))
    networks = settings.METRICS_ALLOWED_NETWORKS
    for node in [request.META.get("REMOTE_ADDR", ""), *forwarded]:
        address = _address(node)
        if address is None or not any(address in network for network in networks):
            return False
    return True


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Every process's metrics (``places.metrics``), for allowed networks only (404 to anyone
    else, so the public site does not even show that it exists)."""
    if not metrics_client_allowed(request):
        raise Http404
    return HttpResponse(metrics_exposition(), content_type=CONTENT_TYPE_LATEST)
