"""The web tier as served: gunicorn with config/gunicorn.py behind nginx with config/nginx.conf,
real processes on free ports, reading the test database.

Slow clients and heavy requests must not stall it: while connections hold half-sent requests
and heavy uncached pages are being built, the liveness probe and a small API call still
answer. The 2 s deadline is not a performance figure: on an idle machine they answer in a few
milliseconds; a stalled tier does not answer at all while the slow clients hold their
connections (the issue saw the probe wait for as long as they were held, and 6 s behind four
heavy requests). 2 s tells "answers" from "held up" with room for a busy CI machine.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from places.models import Place
from tests.db import database_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

ROOT = Path(settings.BASE_DIR)
DEADLINE_SECONDS = 2.0
SLOW_CLIENTS = 24  # three times gunicorn's threads (2 workers x 4)
HEAVY_REQUESTS = 4


@dataclass
class WebTier:
    nginx_port: int
    gunicorn_port: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str, *, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_until_up(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _get(port, "/health/live/", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"nothing answered on port {port}:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def web_tier(gb_import, django_db_blocker) -> Iterator[WebTier]:
    """gunicorn and nginx started as bin/run starts them, on free ports. The anonymous page
    maximum is raised to the signed-in one, so that the heavy requests are as heavy as any
    client may ask for (every GB place in one answer)."""
    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    gunicorn_port, nginx_port = _free_port(), _free_port()
    # nginx's worker runs as "nobody" when started as root: a directory it may enter.
    prefix = Path(tempfile.mkdtemp(prefix="places-nginx-"))
    prefix.chmod(0o755)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=database),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "NUM_PROXIES": "1",
        "PLACES_API_ANON_MAX_PAGE_SIZE": str(settings.PLACES_API_MAX_PAGE_SIZE),
        "LOG_LEVEL": "WARNING",
    }
    gunicorn_log = prefix / "gunicorn.log"
    with open(gunicorn_log, "wb") as out:
        gunicorn = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--config",
                "python:config.gunicorn",
                "--bind",
                f"127.0.0.1:{gunicorn_port}",
                "--access-logfile",
                "/dev/null",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = [gunicorn]
    try:
        _wait_until_up(gunicorn_port, gunicorn, gunicorn_log)
        conf = subprocess.run(
            [
                str(ROOT / "bin" / "nginx-conf"),
                "--listen",
                f"127.0.0.1:{nginx_port}",
                "--upstream",
                f"127.0.0.1:{gunicorn_port}",
                "--prefix",
                str(prefix),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        nginx_log = prefix / "nginx.log"
        with open(nginx_log, "wb") as out:
            nginx = subprocess.Popen(
                [shutil.which("nginx") or "nginx", "-p", str(prefix), "-c", conf, "-e", "stderr"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(nginx)
        _wait_until_up(nginx_port, nginx, nginx_log)
        yield WebTier(nginx_port=nginx_port, gunicorn_port=gunicorn_port)
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(prefix, ignore_errors=True)


def _half_requests(port: int, count: int) -> list[socket.socket]:
    """Connections that sent the start of a request and then nothing: headers without their
    end, and a POST whose body stops short of its Content-Length."""
    held = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(b"GET /api/v1/places/?limit=10 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ")
        else:
            sock.sendall(
                b"POST /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 100000\r\n\r\nusername=a"
            )
        held.append(sock)
    return held


def _still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_slow_clients_and_heavy_requests_leave_health_and_small_calls_answering(web_tier):
    with_places = Place.objects.filter(status="active").count()
    # given connections holding half-sent requests, three times gunicorn's threads
    held = _half_requests(web_tier.nginx_port, SLOW_CLIENTS)
    # and heavy requests under way: every place, each with its own filter (an uncached answer)
    heavy_done: list[float] = []
    heavy_status: list[int] = []

    def heavy(i: int) -> None:
        status, _ = _get(
            web_tier.nginx_port,
            f"/api/v1/places/?limit={settings.PLACES_API_MAX_PAGE_SIZE}"
            f"&updated_since=2000-01-01T00:00:{i:02d}Z",
            timeout=120,
        )
        heavy_status.append(status)
        heavy_done.append(time.monotonic())

    threads = [threading.Thread(target=heavy, args=(i,)) for i in range(HEAVY_REQUESTS)]
    try:
        for thread in threads:
            thread.start()
        # Sequencing only: the heavy requests reach gunicorn before the probes are sent.
        time.sleep(0.3)

        # when the probe and a small API call are sent through nginx, and the probe straight
        # to gunicorn (as kubelet sends it)
        started = time.monotonic()
        live = _get(web_tier.nginx_port, "/health/live/", timeout=DEADLINE_SECONDS)
        live_direct = _get(web_tier.gunicorn_port, "/health/live/", timeout=DEADLINE_SECONDS)
        small = _get(
            web_tier.nginx_port,
            "/api/v1/places/?bbox=-0.15,51.49,-0.07,51.53&limit=10&fields=name",
            timeout=DEADLINE_SECONDS,
        )
        answered = time.monotonic()

        # then each answered within its deadline (a timeout would have raised)
        assert live[0] == 200
        assert live_direct[0] == 200
        assert small[0] == 200
        assert small[1].count(b'"Feature"') == 10
        # while the slow clients still held their connections
        assert all(_still_open(sock) for sock in held)
    finally:
        for thread in threads:
            thread.join(timeout=120)
        for sock in held:
            sock.close()
    # and the heavy requests were being built all along, and were served
    assert heavy_status == [200] * HEAVY_REQUESTS
    assert with_places > 10_000
    assert min(heavy_done) > answered, "the heavy requests ended before the probes were sent"
    assert answered - started < 3 * DEADLINE_SECONDS


@dataclass
class NginxOnly:
    port: int
    seen: list[tuple[str, int]]  # (path, body bytes) of each request the upstream received


@pytest.fixture
def nginx_only() -> Iterator[NginxOnly]:
    """nginx as bin/run configures it, in front of a stand-in upstream that records what
    reaches it: what nginx itself refuses, nothing behind it sees."""
    seen: list[tuple[str, int]] = []

    class Upstream(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append((self.path, length))
            body = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    nginx_port = _free_port()
    prefix = Path(tempfile.mkdtemp(prefix="places-nginx-"))
    prefix.chmod(0o755)
    nginx = None
    try:
        conf = subprocess.run(
            [
                str(ROOT / "bin" / "nginx-conf"),
                "--listen",
                f"127.0.0.1:{nginx_port}",
                "--upstream",
                f"127.0.0.1:{upstream.server_address[1]}",
                "--prefix",
                str(prefix),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        log = prefix / "nginx.log"
        with open(log, "wb") as out:
            nginx = subprocess.Popen(
                [shutil.which("nginx") or "nginx", "-p", str(prefix), "-c", conf, "-e", "stderr"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until_up(nginx_port, nginx, log)
        seen.clear()  # the readiness probe's GETs
        yield NginxOnly(port=nginx_port, seen=seen)
    finally:
        if nginx is not None:
            _stop(nginx)
        upstream.shutdown()
        shutil.rmtree(prefix, ignore_errors=True)


def _post_sized(port: int, path: str, size: int, *, send_body: bool) -> tuple[int, bytes]:
    """POST with ``Content-Length: size``; the body itself only if ``send_body``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", path, skip_host=True)
        conn.putheader("Host", "127.0.0.1")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        if send_body:
            conn.send(b" " * size)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_nginx_refuses_an_edge_body_past_its_limit_before_anything_is_spooled(nginx_only):
    # when a body bigger than an edge batch may be is announced to the edge protocol
    status, body = _post_sized(
        nginx_only.port, "/api/v1/edge/observations/", 64 * 1024 * 1024, send_body=False
    )
    # then nginx answers 413 in the protocol's shape at once, and nothing reaches gunicorn
    assert status == 413
    assert json.loads(body)["code"] == "too_large"
    assert nginx_only.seen == []
    # while a body within the edge limit goes through
    size = 8 * 1024 * 1024
    edge = "/api/v1/edge/observations/"
    assert _post_sized(nginx_only.port, edge, size, send_body=True)[0] == 200
    # and other paths keep the upload limit (an import is bigger than a batch)
    big = 12 * 1024 * 1024
    assert _post_sized(nginx_only.port, "/api/v1/imports/", big, send_body=True)[0] == 200
    assert nginx_only.seen == [("/api/v1/edge/observations/", size), ("/api/v1/imports/", big)]
