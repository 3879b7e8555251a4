"""gunicorn's settings for every way Places is served: ``bin/run``, the image's default
command (``docker/Dockerfile``), Kubernetes (``k8s/40-web.yaml``) and the benchmark.

    gunicorn config.wsgi --config python:config.gunicorn

Command-line options override these (``bin/run`` binds gunicorn to loopback behind nginx).

Why these values:

- **gthread, 2 workers x 4 threads.** A sync worker is held by one request from start to
  end, slow client included: two connections sending half a request held both workers and
  ``/health/live/`` went unanswered. With threads, a heavy request (an uncached 1,000-feature
  page is tens of milliseconds of SQL, a signed-in 100,000-feature one seconds) leaves the
  worker's other threads free for the probe and small calls; the work is mostly in
  PostgreSQL and in C (gzip, psycopg), which releases the GIL. Threads do not protect against
  clients that send slowly: a thread reads its request to the end. That is the buffering
  proxy's job (nginx in ``bin/run``, the Ingress controller in Kubernetes), which hands
  gunicorn only complete requests.
- **Database connections**: each thread has its own (``CONN_MAX_AGE``), and each worker
  one more that listens for data version changes (``places.version_watch``), so a web
  process holds up to ``WEB_CONCURRENCY x (GUNICORN_THREADS + 1)`` connections (10 by
  default).
- **timeout 30 s**: a worker whose main loop stops (a C call that never returns) is killed
  and replaced after 30 s; the Kubernetes liveness probe allows 45 s (3 x 15 s).
- **no kept-alive connections; keepalive 5 s**: every answer closes its connection, since
  ``worker_connections = threads`` leaves a worker no room for idle ones (gunicorn says so as
  it starts: "No keepalived connections can be handled"). That is the price of a worker
  never taking a request it has no free thread for (below). Measured against 8 connections
  a worker (issue 14, wrk straight to gunicorn, two interleaved rounds): kept-alive
  connections gave 51 % more ``/health/live/`` answers a second, 31 % more cached 1K views
  and 16 % more uncached ones, but a worker then takes connections while its threads are
  busy, and a probe could wait behind heavy pages (``tests/test_web_tier.py``). The
  setting still counts: a connection that has sent nothing yet holds a thread for up to 5 s
  (gunicorn's data timeout), then waits this long on the poller, without a thread, before
  it is closed.
- **limits on the request line and headers**: the longest legitimate URL (a box, every
  filter, a cursor) is under 1 KB; 4,094 bytes for the line, 50 header fields of at most
  8,190 bytes refuse oversized requests with 400 before Django parses anything.
- **no max_requests**: recycling workers every 2,000 requests was tried and measured: each
  new worker's first requests (Django's lazy start-up) took 1.2 s, the load run's p99 for
  tiles. Workers live until restarted, so their memory must stay bounded: pages of more
  than 5,000 features are streamed 2,000 features at a time (``places.serving.features``),
  and a worker that answered a 100,000-feature page peaks about 15 MiB above its start
  (about 210 MiB in the bench's A/B, against 610 MiB when such pages were built whole).
  The proxy in front takes a streamed answer off gunicorn as fast as it is written
  (``config/nginx.conf``: buffered, spooled to disk past the buffers), so a client that
  reads slowly holds neither a thread nor the page's database snapshot.
- **metrics of every worker**: each worker counts its own requests, so ``/metrics``, answered
  by whichever worker takes it, must add up all of them: prometheus_client's multiprocess
  mode, in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory when it is not set),
  emptied when gunicorn starts (old files would add a previous run's counts) and told when
  a worker exits (its live gauges go, its counts stay). Set before any worker imports
  prometheus_client, which reads it once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

wsgi_app = "config.wsgi"
bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# A worker accepts a connection only while it has a free thread for it (idle kept-alive ones
# count): a request never waits inside a worker whose threads are all busy while the other
# has one free; it waits in the listen backlog for whichever thread frees first.
worker_connections = threads

timeout = 30
# Kubernetes allows 40 s from SIGTERM (terminationGracePeriodSeconds) including a 5 s preStop.
graceful_timeout = 30
keepalive = 5

limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

accesslog = "-"

# A directory of our own when none is given: two gunicorns on one machine must not share one.
_own_multiproc_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _own_multiproc_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="places-metrics-")


# The hooks run in the master, which loads no Django: standard library and prometheus_client.
def on_starting(server: Any) -> None:
    path = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _own_multiproc_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
