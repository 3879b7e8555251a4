"""Live-server harness: gunicorn serving the test database as bin/run starts it (for the
browser and OGC-client tests), and a playwright-core script (tests/browser/*.mjs) driving
Debian's Chromium against it, which prints one JSON report for the tests to compare with the
database and the API.

``make test`` installs what they need (``bin/install-system-deps``: chromium; ``npm ci``:
playwright-core). Without them these tests fail, saying so: they are not skipped.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.db import database_url

ROOT = Path(settings.BASE_DIR)
CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _live(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health/live/", headers={"Host": "127.0.0.1"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def browser_needs() -> None:
    """Fail, naming what is missing, when the browser or its driver is not installed."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (bin/install-system-deps installs Debian's chromium)")
    if shutil.which("node") is None:
        missing.append("node (bin/install-system-deps installs nodejs)")
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        missing.append("node_modules/playwright-core (npm ci, as make test runs it)")
    if missing:
        pytest.fail("the browser tests need " + "; ".join(missing))


@contextmanager
def gunicorn_serving(
    *, database: str, log: Path, access_log: Path | None = None, browser: bool = True
) -> Iterator[str]:
    """gunicorn as bin/run starts it (config/gunicorn.py) on ``database``; yields its base URL.
    ``access_log`` keeps what clients asked for; ``browser`` checks the browser is there.

    Analytics read the replica alias. A server outside pytest has no test mirror: a
    REPLICA_DATABASE_URL (make test sets one) would name the development database there, so
    this server reads the test database on the primary."""
    if browser:
        browser_needs()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=database),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "LOG_LEVEL": "WARNING",
    }
    for variable in ("REPLICA_DATABASE_URL", "REPLICA_DATABASE_URL_FILE"):
        env.pop(variable, None)
    port = _free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:config.gunicorn",
             "--bind", f"127.0.0.1:{port}", "--access-logfile", str(access_log or "/dev/null")],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not _live(port):
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("gunicorn did not answer within 90 s")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def browser_run(
    *, script: Path, scenario: dict[str, Any], folder: Path, timeout: int = 300
) -> dict[str, Any]:
    """Run a tests/browser script on ``scenario`` and return its JSON report."""
    (folder / "scenario.json").write_text(json.dumps(scenario))
    run = subprocess.run(
        ["node", str(script), str(folder / "scenario.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert "error" not in result, json.dumps(result)[-4000:]
    return result
