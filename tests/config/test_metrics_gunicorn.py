"""/metrics under gunicorn as deployed (config/gunicorn.py, two workers): every worker's
requests are in the answer whichever worker gives it, a worker that dies keeps its counts in
the sum, files of an earlier run are gone, and a client from outside is refused. A Celery
worker's prefork pool is summed the same way on its metrics port (CELERY_METRICS_PORT). And
Prometheus itself, scraping gunicorn with docker/prometheus/alerts.yml, groups the views, and
fires PlacesImportsFailing when an import job of the app fails."""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from django.conf import settings
from django.db import connection

from ingestion.services.imports.run import FINAL_STATES
from places.metrics.counted import IMPORT_JOB_STATES
from tests.db import database_url

T = TypeVar("T")

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.django_db]

ROOT = Path(settings.BASE_DIR)
READY_REQUESTS = 'django_http_requests_total_by_view_transport_method_total{method="GET",transport="http",view="health-ready"}'  # noqa: E501


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gunicorn:
    port: int
    process: subprocess.Popen
    multiproc_dir: Path
    log: Path

    def get(self, path: str, **headers: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": "127.0.0.1", **headers})
            response = conn.getresponse()
            # A tile is binary: its bytes are only looked at as text, never compared.
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}


@pytest.fixture
def gunicorn(tmp_path) -> Iterator[Gunicorn]:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    # A file an earlier run left, unreadable as a metrics file: the scrape would fail on it.
    (multiproc_dir / "counter_1.db").write_bytes(b"left by an earlier run")
    port, log = _free_port(), tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=connection.settings_dict["NAME"]),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        # One thread each: a worker holding a kept-alive connection takes no other, so two
        # open connections are served by two different workers.
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "1",
    }
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:config.gunicorn",
             "--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Gunicorn(port=port, process=process, multiproc_dir=multiproc_dir, log=log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{log.read_text()[-3000:]}")
        try:
            if server.get("/health/live/")[0] == 200 and len(server.worker_pids()) == 2:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("gunicorn did not start")
        time.sleep(0.1)
    yield server
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _sample(body: str, line_start: str) -> float:
    for line in body.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _ready_on_two_workers(server: Gunicorn, each: int) -> None:
    """``each`` readiness requests on each of two kept-alive connections (two workers)."""
    connections = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in "ab"]
    try:
        for _ in range(each):
            for conn in connections:
                conn.request("GET", "/health/ready/", headers={"Host": "127.0.0.1"})
                response = conn.getresponse()
                response.read()
                assert response.status == 200
    finally:
        for conn in connections:
            conn.close()


def test_metrics_add_up_every_workers_requests_and_keep_a_dead_workers(gunicorn):
    # given the earlier run's file is gone once gunicorn started
    assert not (gunicorn.multiproc_dir / "counter_1.db").exists()
    # when two workers answer 5 readiness requests each
    _ready_on_two_workers(gunicorn, each=5)
    # then both wrote their counts, and /metrics (answered by one of them) has all ten
    writers = {
        int(m.group(1))
        for f in gunicorn.multiproc_dir.glob("counter_*.db")
        if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))
    }
    assert writers == gunicorn.worker_pids()
    status, body = gunicorn.get("/metrics")
    assert status == 200
    assert _sample(body, READY_REQUESTS) == 10
    # and the figures read at scrape time are there, the answering process's own are not
    assert 'places_celery_queue_length{queue="default"}' in body
    assert "places_db_max_connections " in body
    assert "process_cpu_seconds_total" not in body

    # when a worker is killed (gunicorn starts another)
    victim = min(gunicorn.worker_pids())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while victim in gunicorn.worker_pids() or len(gunicorn.worker_pids()) != 2:
        assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
        time.sleep(0.1)
    # then its requests still count
    assert _sample(gunicorn.get("/metrics")[1], READY_REQUESTS) == 10


def test_metrics_refuse_a_request_forwarded_for_an_outside_address(gunicorn):
    # given a request that a proxy forwarded for a public address, then it is a 404
    assert gunicorn.get("/metrics", **{"X-Forwarded-For": "203.0.113.9"})[0] == 404
    # and the same request without it, from loopback, is answered
    assert gunicorn.get("/metrics")[0] == 200


def test_a_prefork_worker_serves_its_pools_task_durations(tmp_path):
    # given a Celery worker of two pool processes with its metrics port, and a task waiting
    from config.celery import app

    port, multiproc_dir = _free_port(), tmp_path / "worker-prometheus"
    queue = "edge"
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
    task = "ingestion.edge.tasks.edge_batches_count_pending"
    for _ in range(3):
        app.send_task(task, queue=queue)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=connection.settings_dict["NAME"]),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
        "CELERY_METRICS_PORT": str(port),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue,
         "--pool", "prefork", "--concurrency", "2", "--without-gossip", "--without-mingle",
         "--loglevel", "WARNING"],
        cwd=ROOT, env=env, start_new_session=True,
    )  # fmt: skip
    count = f'places_celery_task_duration_seconds_count{{queue="{queue}",task="{task}"}}'
    try:
        # when its pool has run the three tasks, then its port reports all three
        deadline = time.monotonic() + 90
        while True:
            assert worker.poll() is None, "the worker exited"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/metrics")
                body = conn.getresponse().read().decode()
                conn.close()
            except OSError:
                body = ""
            if _sample(body, count) >= 3:
                break
            assert time.monotonic() < deadline, f"no task durations on the worker's port:\n{body}"
            time.sleep(0.2)
        assert _sample(body, count) == 3
        success = f'places_celery_tasks_total{{queue="{queue}",state="SUCCESS",task="{task}"}}'
        assert _sample(body, success) == 3
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


@contextmanager
def _prometheus(tmp_path: Path, web_port: int) -> Iterator[int]:
    """Prometheus (Debian's binary, bin/deploy-tools) scraping gunicorn on ``web_port`` and
    evaluating docker/prometheus/alerts.yml every second; yields its API port."""
    binary = ROOT / ".venv" / "prometheus" / "usr" / "bin" / "prometheus"
    if not binary.exists():
        pytest.fail("prometheus is missing: run bin/deploy-tools (make check-deploy does)")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ROOT / 'docker' / 'prometheus' / 'alerts.yml'}']\n"
        "scrape_configs:\n"
        "  - job_name: places-web\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{web_port}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)


def _prometheus_get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())["data"]
    finally:
        conn.close()


def _prometheus_query(port: int, query: str) -> list[dict]:
    return _prometheus_get(port, "/api/v1/query?" + urllib.parse.urlencode({"query": query}))[
        "result"
    ]


def _poll(what: str, timeout: float, probe: Callable[[], T]) -> T:
    """``probe()`` until it gives something true (errors count as not yet): a deadline for
    Prometheus's next scrape and evaluation, not a timing under test."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if found := probe():
                return found
        except (OSError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.5)


def test_prometheus_scrapes_web_and_the_rules_group_its_views(gunicorn, tmp_path):
    # given Prometheus scraping this gunicorn every second with docker/prometheus/alerts.yml
    with _prometheus(tmp_path, gunicorn.port) as port:
        # when tiles and the places list are asked for while it scrapes
        def answered(query: str, want: Callable[[list[dict]], bool]) -> bool:
            for path in ("/tiles/places/0/0/0.pbf", "/api/v1/places/?limit=1"):
                assert gunicorn.get(path)[0] == 200
            try:
                return want(_prometheus_query(port, query))
            except (OSError, KeyError, ValueError):
                return False

        deadline = time.monotonic() + 60
        groups: set[str] = set()
        while not {"tiles", "api"} <= groups:
            assert time.monotonic() < deadline, f"p95 groups seen: {groups}"
            time.sleep(0.5)
            answered("up", lambda result: True)
            result = _prometheus_query(port, "places:request_latency_seconds:p95")
            groups = {r["metric"].get("group", "") for r in result}
        # then its recording rule finds both groups by their views, and the target's own
        # figures are there: cache outcomes by endpoint, queue lengths
        assert answered(
            'places_cache_requests_total{endpoint="place-tile"}', lambda result: len(result) >= 1
        )
        assert answered('places_celery_queue_length{queue="default"}', lambda r: len(r) == 1)
        assert answered('up{job="places-web"}', lambda r: r[0]["value"][1] == "1")


# An import job that fails for real in a process of the app: its stored upload is gone when
# it runs (a media volume lost or cleaned), so reading it fails and the job ends "failed".
# The rows are deleted again at once: the counter, in the multiprocess files, stays.
FAILING_IMPORT = """
import os
from pathlib import Path
from ingestion.models import ImportJob
from ingestion.services.imports import import_job_execute
from ingestion.services.jobs import import_job_create
from places.models import Dataset
from places.services import dataset_get_or_create

dataset = dataset_get_or_create(slug="alerts-firing")
job = import_job_create(path=Path(os.environ["FAILING_UPLOAD"]), dataset=dataset)
os.remove(job.file.path)
try:
    import_job_execute(job_id=job.pk)
except FileNotFoundError:
    pass  # counted and marked failed first; a Celery task would log it and give up
print(ImportJob.objects.get(pk=job.pk).state)
ImportJob.objects.filter(pk=job.pk).delete()
Dataset.objects.filter(pk=dataset.pk).delete()
"""


def _firing(port: int, name: str) -> list[dict]:
    alerts = _prometheus_get(port, "/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_a_failed_import_fires_places_imports_failing_in_prometheus(gunicorn, tmp_path):
    # given Prometheus scraping gunicorn with the real rules, and the failed-jobs series at 0
    # from gunicorn's start (what lets increase() see the first failure)
    assert set(IMPORT_JOB_STATES) == {str(state) for state in FINAL_STATES}
    series = 'places_import_jobs_total{state="failed"}'
    with _prometheus(tmp_path, gunicorn.port) as port:
        _poll(f"{series} at 0", 60, lambda: _prometheus_query(port, series))
        assert [r["value"][1] for r in _prometheus_query(port, series)] == ["0"]
        assert _firing(port, "PlacesImportsFailing") == []

        # when an import job fails in another process of the app writing the same
        # multiprocess folder (as a worker's pool processes do for its metrics port)
        upload = tmp_path / "chapels.csv"
        upload.write_text(
            "id,name,religion,denomination,lon,lat\nf1,Chapel,Christian,methodist,-1.5,51.5\n"
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": database_url(dbname=connection.settings_dict["NAME"]),
            "SECRET_KEY": secrets.token_urlsafe(40),
            "LOG_LEVEL": "CRITICAL",
            "MEDIA_ROOT": str(tmp_path / "media"),
            "PROMETHEUS_MULTIPROC_DIR": str(gunicorn.multiproc_dir),
            "FAILING_UPLOAD": str(upload),
        }
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", FAILING_IMPORT],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split()[-1] == "failed"

        # then gunicorn's /metrics counts it, and Prometheus's alerts API has the alert
        # firing with the rule's labels and summary
        firing = _poll(
            "PlacesImportsFailing to fire", 90, lambda: _firing(port, "PlacesImportsFailing")
        )
        assert len(firing) == 1
        assert firing[0]["labels"] == {"alertname": "PlacesImportsFailing", "severity": "warning"}
        assert "import job(s) failed in the last hour" in firing[0]["annotations"]["summary"]
        assert _sample(gunicorn.get("/metrics")[1], series) == 1
