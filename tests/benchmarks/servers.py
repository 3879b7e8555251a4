"""Start and stop the servers the benchmark measures: gunicorn (ours, nginx in front for the
load run) and uvicorn (tipg).

Each server runs in its own process group and is stopped (SIGTERM, then SIGKILL) when the
``with`` block ends, whatever happened inside it.
"""

from __future__ import annotations

import http.client
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import environ

ROOT = Path(__file__).resolve().parents[2]
BENCH_VENV = ROOT / ".venv-bench"
logger = logging.getLogger("bench")


@dataclass
class Server:
    name: str
    host: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.process.returncode}; see {server.log}:\n"
                + server.log.read_text(errors="replace")[-3000:]
            )
        try:
            conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} did not answer {path} within {timeout}s; see {server.log}")


def _stop(server: Server) -> None:
    if server.process.poll() is not None:
        return
    # The whole group: gunicorn's or uvicorn's workers go with their master.
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


@contextmanager
def _run(
    name: str,
    command: list[str],
    *,
    port: int,
    env: dict[str, str],
    cwd: Path,
    log_dir: Path,
    ready_path: str,
) -> Iterator[Server]:
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name=name, host="127.0.0.1", port=port, process=process, log=log)
    try:
        _wait_until_up(server, ready_path, timeout=120)
        logger.info("%s up on port %s (pid %s)", name, port, process.pid)
        yield server
    finally:
        _stop(server)
        logger.info("%s stopped", name)


@contextmanager
def gunicorn_server(
    *,
    database_url: str,
    redis_url: str,
    workers: int,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    name: str = "gunicorn",
) -> Iterator[Server]:
    """Our app as deployed (docker/Dockerfile, k8s/40-web.yaml): gunicorn with this tree's
    ``config/gunicorn.py`` (gthread workers, given by path so that a base ref served by
    ``ab.py`` runs the same server), production settings with DEBUG off, plus the bench
    URLconf that adds the naive baseline.

    One change: a long worker timeout, so that the naive baseline's 100K-feature answer is
    measured instead of killed at gunicorn's 30 s.

    ``cwd`` is the tree whose code is served (gunicorn puts it first on ``sys.path``), with
    this project's ``.venv`` either way: ``ab.py`` serves a base ref's worktree beside this
    one. ``name`` tells the logs of two servers apart.
    """
    port = free_port()
    env = {
        **os.environ,
        # gunicorn takes its directory from PWD when that names the same place as cwd.
        "PWD": str(cwd),
        "DJANGO_SETTINGS_MODULE": "tests.benchmarks.settings",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # TLS ends at the load balancer in production; here the bench talks plain HTTP.
        "SECURE_SSL_REDIRECT": "false",
        "DEBUG": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    for variable in (
        "DATABASE_URL_FILE",
        "REDIS_URL_FILE",
        "SENTRY_DSN",
        "SENTRY_DSN_FILE",
        "PYTHONPATH",
    ):
        env.pop(variable, None)
    command = [
        str(ROOT / ".venv" / "bin" / "gunicorn"),
        "--config",
        str(ROOT / "config" / "gunicorn.py"),
        "config.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--timeout",
        "600",
        "--access-logfile",
        str(log_dir / f"{name}-access.log"),
    ]
    with _run(
        name,
        command,
        port=port,
        env=env,
        cwd=cwd,
        log_dir=log_dir,
        ready_path="/health/live/",
    ) as server:
        yield server


@contextmanager
def nginx_server(*, upstream: Server, log_dir: Path) -> Iterator[Server]:
    """nginx in front of ``upstream`` as ``bin/run`` starts it (``config/nginx.conf`` through
    ``bin/nginx-conf``), on a free port."""
    port = free_port()
    # nginx's worker runs as "nobody" when started as root: a directory it may enter.
    prefix = Path(tempfile.mkdtemp(prefix="places-bench-nginx-"))
    prefix.chmod(0o755)
    conf = subprocess.run(
        [
            str(ROOT / "bin" / "nginx-conf"),
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{upstream.host}:{upstream.port}",
            "--prefix",
            str(prefix),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    command = [shutil.which("nginx") or "nginx", "-p", str(prefix), "-c", conf, "-e", "stderr"]
    try:
        with _run(
            "nginx",
            command,
            port=port,
            env=dict(os.environ),
            cwd=prefix,
            log_dir=log_dir,
            ready_path="/health/live/",
        ) as server:
            yield server
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def tipg_url(database_url: str) -> str:
    """tipg (asyncpg) wants a plain postgresql:// URL."""
    config = environ.Env.db_url_config(database_url)
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    return (
        f"postgresql://{config.get('USER') or 'postgres'}{password}@"
        f"{config.get('HOST') or '127.0.0.1'}:{config.get('PORT') or 5432}/{config['NAME']}"
    )


@contextmanager
def tipg_server(
    *,
    database_url: str,
    workers: int,
    max_features_per_query: int,
    max_features_per_tile: int,
    log_dir: Path,
) -> Iterator[Server]:
    """tipg from the bench-only venv, under uvicorn with as many workers as gunicorn has,
    publishing only the places table."""
    port = free_port()
    # An empty working directory: tipg's settings would also read a .env file from there.
    cwd = log_dir / "tipg-cwd"
    cwd.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "DATABASE_URL": tipg_url(database_url),
        "TIPG_DB_SCHEMAS": '["public"]',
        "TIPG_DB_TABLES": '["public.places_place"]',
        "TIPG_MAX_FEATURES_PER_QUERY": str(max_features_per_query),
        "TIPG_MAX_FEATURES_PER_TILE": str(max_features_per_tile),
        "TIPG_DB_MAX_CONN_SIZE": "10",
    }
    command = [
        str(BENCH_VENV / "bin" / "uvicorn"),
        "tipg.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with _run(
        "tipg", command, port=port, env=env, cwd=cwd, log_dir=log_dir, ready_path="/healthz"
    ) as server:
        yield server


def worker_peak_rss_kib(master_pid: int) -> list[int]:
    """VmHWM (peak resident set) of each child process of a server's master, in KiB."""
    peaks = []
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    for child in children:
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]))
    return peaks
