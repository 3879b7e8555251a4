"""Helpers for the tests of bin/edge-client: the client loaded as a module (for its parsers),
run as a process with the standard library only (as on a Raspberry Pi), and a stand-in server
on a free port that records what it is sent and answers what the test says.

The stand-in is for the client's own behaviour (what it sends, when it retries, what it does
with each answer); the end-to-end tests run the client against the real server.
"""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

from django.conf import settings

CLIENT = Path(settings.BASE_DIR) / "bin" / "edge-client"
AIR_QUALITY = Path(settings.BASE_DIR) / "ingestion" / "sample_data" / "air_quality"
SDS011 = AIR_QUALITY / "sensor_community_aberdeen_sds011_2019-03-01_07.csv.gz"
DHT22 = AIR_QUALITY / "sensor_community_aberdeen_dht22_2019-03-01_07.csv.gz"
BME280 = AIR_QUALITY / "sensor_community_aberdeen_bme280_2019-03-01_07.csv.gz"
MADAVI = AIR_QUALITY / "madavi_esp8266-3654427_2019-03-01_07.csv.gz"
ARCHIVES = (SDS011, DHT22, BME280)


def load_client() -> ModuleType:
    """bin/edge-client as a module (it has no .py suffix, so the loader is named)."""
    loader = importlib.machinery.SourceFileLoader("edge_client", str(CLIENT))
    spec = importlib.util.spec_from_loader("edge_client", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["edge_client"] = module  # dataclasses look their module up by name
    loader.exec_module(module)
    return module


def client_command(*args: str) -> list[str]:
    # -I -S: no site-packages, no environment: the client must live on the standard library.
    return [sys.executable, "-I", "-S", str(CLIENT), *args]


def run_client(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_command(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def start_client(*args: str, output: Path) -> subprocess.Popen[bytes]:
    with open(output, "ab") as out:
        return subprocess.Popen(client_command(*args), stdout=out, stderr=subprocess.STDOUT)


def head_of(path: Path, lines: int, target: Path) -> Path:
    """The header and the first ``lines`` records of a gzipped sample, as a plain file."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as source:
        kept = [source.readline() for _ in range(lines + 1)]
    target.write_text("".join(kept), encoding="utf-8")
    return target


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> bytes:
        if self.headers.get("Content-Encoding") == "gzip":
            return gzip.decompress(self.raw)
        return self.raw

    def json(self) -> Any:
        return json.loads(self.body)


# (status, headers, payload): JSON-able, None for no body, or bytes sent as they are.
Reply = tuple[int, dict[str, str], Any]
Responder = Callable[[Received], Reply]


def accept_all(request: Received) -> Reply:
    """What the real server answers to a batch of valid readings it has not seen."""
    readings = len(request.json()["readings"]) if request.method == "POST" else 0
    return 200, {}, {"batch": 1, "accepted": readings, "duplicate": 0, "rejected": 0, "errors": []}


def heartbeat_ok(request: Received) -> Reply:
    """What the real server answers to a heartbeat."""
    return 200, {}, {"server_time": "2026-12-03T22:00:00Z", "clock_offset_seconds": 0.0,
                     "status": "active"}  # fmt: skip


@dataclass
class StandIn:
    """Heartbeats (POST heartbeat/) are kept apart from the rest, as replay and pull send one
    at their start: ``received``/``respond`` see batches and change-feed requests only."""

    url: str
    received: list[Received] = field(default_factory=list)
    respond: Responder = accept_all
    heartbeats: list[Received] = field(default_factory=list)
    heartbeat: Responder = heartbeat_ok


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Received(
                self.command, self.path, dict(self.headers.items()), self.rfile.read(length)
            )
            if self.path.endswith("/heartbeat/"):
                stand_in.heartbeats.append(request)
                status, headers, payload = stand_in.heartbeat(request)
            else:
                stand_in.received.append(request)
                status, headers, payload = stand_in.respond(request)
            # Bytes go as they are (a body garbled on the way); anything else as JSON, gzipped
            # when the reply says so, as the real server does when asked.
            if isinstance(payload, bytes):
                data = payload
            else:
                data = b"" if payload is None else json.dumps(payload).encode()
                if headers.get("Content-Encoding") == "gzip":
                    data = gzip.compress(data)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def stand_in_server() -> Iterator[StandIn]:
    """A server on a free port; the test sets ``respond``."""
    stand_in = StandIn(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stand_in))
    server.daemon_threads = True
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
