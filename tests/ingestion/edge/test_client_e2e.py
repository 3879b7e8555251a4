"""bin/edge-client against the real server: gunicorn (config/gunicorn.py) on a free port and a
Celery worker on the ``edge`` queue, both real processes reading the test database, while
the server, the client or the worker is stopped or killed part-way.

Afterwards every valid reading of the files is stored exactly once: the readings stored for
the node, by natural key, are exactly the distinct valid readings of the files, counted here
with the csv module alone (not with the client's parser).

These tests commit (the server is another process), so each makes its own region, node and
key, and deletes them with their sensors, batches and readings at the end.
"""

from __future__ import annotations

import csv
import http.client
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from django.conf import settings
from django.contrib.gis.geos import Point
from django.db import connection, connections

from config.celery import app
from ingestion.edge.models import EdgeNode, EdgeNodeKey, ObservationBatch, Parameter, Sensor
from ingestion.edge.services.keys import edge_key_create, edge_node_create
from places.models import Place, Region
from places.services import dataset_get_or_create, place_create, place_retire, place_update
from tests.db import database_url
from tests.ingestion.edge.edge_client_support import (
    DHT22,
    MADAVI,
    SDS011,
    head_of,
    load_client,
    run_client,
    start_client,
)
from tests.ingestion.edge.factories import region_make

pytestmark = [pytest.mark.slow, pytest.mark.worker, pytest.mark.django_db]
T = TypeVar("T")

client = load_client()

ROOT = Path(settings.BASE_DIR)
EDGE_QUEUE = "edge"
BATCH = "200"
# Enough batches that each test can stop something part-way, few enough for a test.
SDS011_LINES, DHT22_LINES, MADAVI_LINES = 1500, 1000, 300
ARCHIVE = {"P1": "pm10", "P2": "pm2_5", "temperature": "temperature", "humidity": "humidity"}
MADAVI_SENSORS = {
    "SDS_P1": ("sds011", "pm10"),
    "SDS_P2": ("sds011", "pm2_5"),
    "Temp": ("dht22", "temperature"),
    "Humidity": ("dht22", "humidity"),
}
DEVICE = "esp8266-3654427"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def _environment(database: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url(dbname=database),
        "SECRET_KEY": secrets.token_urlsafe(40),
        "LOG_LEVEL": "WARNING",
        # The client honours 429s, but the tests are about failures, not the rate limit.
        "EDGE_RATE": "100000/m",
        # A killed worker's message goes back to the queue within seconds.
        "CELERY_VISIBILITY_TIMEOUT": "2",
    }


@dataclass
class Server:
    """gunicorn as bin/run starts it; stopped and started again on the same port."""

    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", "python:config.gunicorn",
                 "--bind", f"127.0.0.1:{self.port}", "--access-logfile", "/dev/null"],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        _wait_for(self._live, timeout=60, what=f"gunicorn on port {self.port}")

    def _live(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/health/live/", headers={"Host": "127.0.0.1"})
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def kill(self) -> None:
        """SIGKILL to gunicorn and its workers: requests in flight get no answer."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Edge:
    server: Server
    region: Region
    node: EdgeNode
    key: str
    start_worker: Callable[[], subprocess.Popen]


def _purge_edge_queue() -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(EDGE_QUEUE)


def _committed(work: Callable[[], T]) -> T:
    """Run ``work`` on a connection of its own, in autocommit, so the server's processes see
    what it writes: the test's own connection is inside the transaction the ``django_db``
    mark wraps around the test (which is what sets the test database up)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:  # handed to the test's thread
            errors.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def edge(django_db_blocker, tmp_path) -> Iterator[Edge]:
    def make() -> tuple[Region, EdgeNode, str]:
        with django_db_blocker.unblock():
            region = region_make(f"EC{uuid.uuid4().hex[:8]}", code_system="edge-client-e2e")
            node = edge_node_create(name=f"edge-client-{uuid.uuid4().hex[:8]}", region=region)
            return region, node, edge_key_create(node=node).secret

    region, node, key = _committed(make)
    env = _environment(connection.settings_dict["NAME"])
    server = Server(port=_free_port(), env=env, log=tmp_path / "gunicorn.log")
    workers: list[subprocess.Popen] = []

    def start_worker() -> subprocess.Popen:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", EDGE_QUEUE,
             "--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", "WARNING"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        workers.append(worker)
        return worker

    _purge_edge_queue()
    try:
        server.start()
        yield Edge(server=server, region=region, node=node, key=key, start_worker=start_worker)
    finally:
        server.stop()
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
        _purge_edge_queue()

        def delete() -> None:
            with django_db_blocker.unblock():
                _delete_node(node, region)

        _committed(delete)


def _delete_node(node: EdgeNode, region: Region) -> None:
    sensors = list(Sensor.objects.filter(node=node).values_list("pk", flat=True))
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ingestion_observation WHERE sensor_id = ANY(%s)", [sensors])
    ObservationBatch.objects.filter(node=node).delete()
    Sensor.objects.filter(node=node).delete()
    EdgeNodeKey.objects.filter(node=node).delete()
    node.delete()
    # Places are never deleted (the change log refuses it): a region that has some stays.
    if not Place.objects.filter(region=region).exists():
        region.delete()


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """The first lines of three sample files, the madavi log keeping its device's name."""
    return [
        head_of(SDS011, SDS011_LINES, tmp_path / "sds011.csv"),
        head_of(DHT22, DHT22_LINES, tmp_path / "dht22.csv"),
        head_of(MADAVI, MADAVI_LINES, tmp_path / f"data-{DEVICE}-2019-03-01.csv"),
    ]


Key = tuple[str, str, str]  # sensor, parameter, time as the client sends it


def _valid_readings(paths: list[Path]) -> dict[Key, float]:
    """The distinct valid readings of the files (the first of a repeated natural key wins),
    counted with nothing but the csv module and the parameters' ranges."""
    ranges = {p.code: (p.min_value, p.max_value) for p in Parameter.objects.all()}
    found: dict[Key, float] = {}

    def keep(sensor: str, parameter: str, moment: str, text: str | None) -> None:
        if not (text or "").strip():
            return
        value = float(text)  # the sample files hold numbers only
        low, high = ranges[parameter]
        if low <= value <= high:
            found.setdefault((sensor, parameter, moment), value)

    for path in paths:
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter=";"):
                if "sensor_id" in row:
                    moment = row["timestamp"] + "Z"
                    for column, parameter in ARCHIVE.items():
                        keep(row["sensor_id"], parameter, moment, row.get(column))
                else:
                    moment = row["Time"].replace("/", "-").replace(" ", "T") + "Z"
                    for column, (model, parameter) in MADAVI_SENSORS.items():
                        keep(f"{DEVICE}-{model}", parameter, moment, row.get(column))
    return found


def _stored_readings(node: EdgeNode) -> list[tuple[Key, float]]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT s.external_id, p.code,
                   to_char(o.time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), o.value
            FROM ingestion_observation o
            JOIN ingestion_sensor s ON s.id = o.sensor_id
            JOIN ingestion_parameter p ON p.id = o.parameter_id
            WHERE s.node_id = %s
            """,
            [node.pk],
        )
        return [((sensor, parameter, moment), value) for sensor, parameter, moment, value in cursor]


def _assert_each_valid_reading_stored_once(edge: Edge, files: list[Path], db: Path) -> None:
    expected = _valid_readings(files)
    stored = _stored_readings(edge.node)
    assert len(expected) == 2 * SDS011_LINES + 2 * DHT22_LINES + 4 * MADAVI_LINES
    # Nothing stored twice (the key is the table's primary key: this holds it to that) ...
    keys = [key for key, _ in stored]
    assert len(keys) == len(set(keys))
    # ... nothing lost, nothing extra, each with its value.
    assert set(keys) == set(expected)
    assert dict(stored) == pytest.approx(expected)
    # And the client agrees: nothing left in its queue, no batch left open.
    assert client_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [
        ("sent", len(expected))
    ]
    assert client_rows(db, "SELECT count(*) FROM batches WHERE state = 'open'") == [(0,)]


def client_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def _replay_args(edge: Edge, files: list[Path], db: Path) -> list[str]:
    return [
        "replay", *map(str, files), "--db", str(db), "--url", edge.server.url, "--key", edge.key,
        "--batch", BATCH, "--backoff", "0.2", "--max-backoff", "1", "--give-up-after", "120",
    ]  # fmt: skip


def _acknowledged(output: Path) -> int:
    return output.read_text().count(": accepted ")


def test_replay_survives_the_server_stopped_mid_replay(edge, files, tmp_path):
    edge.start_worker()
    db, output = tmp_path / "queue.sqlite", tmp_path / "client.log"
    # given a replay under way, some batches acknowledged
    process = start_client(*_replay_args(edge, files, db), output=output)
    _wait_for(lambda: _acknowledged(output) >= 2, timeout=120, what="two acknowledged batches")
    # when the server is killed (requests in flight get no answer) and stays down a while
    edge.server.kill()
    _wait_for(lambda: "server unreachable" in output.read_text(), timeout=60, what="a failed retry")
    assert process.poll() is None, output.read_text()
    # and comes back
    edge.server.start()
    # then the client finishes on its own
    assert process.wait(timeout=300) == 0, output.read_text()
    text = output.read_text()
    assert "done: queue empty" in text
    _assert_each_valid_reading_stored_once(edge, files, db)


def test_replay_survives_the_client_killed_mid_send(edge, files, tmp_path):
    edge.start_worker()
    db, output = tmp_path / "queue.sqlite", tmp_path / "client.log"
    # given a replay under way
    process = start_client(*_replay_args(edge, files, db), output=output)
    _wait_for(lambda: _acknowledged(output) >= 2, timeout=120, what="two acknowledged batches")
    # when the client is killed with SIGKILL as it sends a batch
    sending = output.read_text().count("sending batch ")
    _wait_for(
        lambda: output.read_text().count("sending batch ") > sending,
        timeout=60,
        what="the next batch",
    )
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    queued = client_rows(db, "SELECT count(*) FROM readings WHERE state = 'queued'")[0][0]
    assert queued > 0, "the kill came too late to test"
    # and run again (its files given again, as a boot script would)
    again = run_client(*_replay_args(edge, files, db))
    # then it finishes, and each valid reading is stored once
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count(" 0 new in the queue") == len(files)
    _assert_each_valid_reading_stored_once(edge, files, db)
    # and the server accepted each once between its batches (the batch sent again under its
    # key got the first answer back, not a second acceptance)
    stored = ObservationBatch.objects.filter(node=edge.node)
    assert sum(b.accepted for b in stored) == len(_valid_readings(files))


def test_replay_survives_the_worker_killed_after_acknowledging(edge, files, tmp_path):
    db, output = tmp_path / "queue.sqlite", tmp_path / "client.log"
    worker = edge.start_worker()
    # given a replay under way, batches acknowledged, the worker following them up
    process = start_client(*_replay_args(edge, files, db), output=output)
    _wait_for(lambda: _acknowledged(output) >= 3, timeout=120, what="three acknowledged batches")
    # when the worker is killed outright
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert process.poll() is None, "the replay ended before the worker was killed"
    # then the replay goes on and finishes: an acknowledged batch is already in PostgreSQL
    assert process.wait(timeout=300) == 0, output.read_text()
    _assert_each_valid_reading_stored_once(edge, files, db)
    # and a worker started afterwards does the follow-up of every batch (the killed worker's
    # unacknowledged message comes back to the queue), each once
    edge.start_worker()
    batches = ObservationBatch.objects.filter(node=edge.node)
    assert batches.count() == client_rows(db, "SELECT count(*) FROM batches")[0][0]
    _wait_for(
        lambda: not batches.filter(counted_at__isnull=True).exists(),
        timeout=120,
        what="every batch's follow-up",
    )


def test_status_heartbeat_reaches_the_server(edge, files, tmp_path):
    # given a device with readings queued
    db = tmp_path / "q.sqlite"
    assert run_client("replay", str(files[2]), "--db", str(db), "--queue-only").returncode == 0
    # when it reports
    result = run_client("status", "--db", str(db), "--url", edge.server.url, "--key", edge.key)
    # then the server keeps what it said
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node active" in result.stdout
    edge.node.refresh_from_db()
    assert edge.node.software_version == "edge-client 1.0"
    assert edge.node.queue_depth == 4 * MADAVI_LINES
    assert edge.node.disk_free_bytes > 0
    assert edge.node.clock_offset_seconds is not None


def test_a_wrong_key_stops_the_client_with_the_servers_reason(edge, files, tmp_path):
    wrong = edge.key[:-4] + ("AAAA" if not edge.key.endswith("AAAA") else "BBBB")
    result = run_client(
        "replay", str(files[0]), "--db", str(tmp_path / "q.sqlite"), "--url", edge.server.url,
        "--key", wrong,
    )  # fmt: skip
    assert result.returncode == client.EXIT_REFUSED
    assert "HTTP 401" in result.stderr


def _feed_caught_up() -> None:
    """Wait until the change feed hands out everything committed so far: it holds back
    changes newer than the oldest transaction open anywhere on the server."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT txid_current()")
        mine = cursor.fetchone()[0]
    deadline = time.monotonic() + 120
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            if cursor.fetchone()[0] > mine:
                return
        if time.monotonic() > deadline:
            pytest.skip("a transaction elsewhere on the server held the change feed back")
        time.sleep(0.2)


def test_pull_keeps_a_copy_of_the_regions_places(edge, django_db_blocker, tmp_path):
    def make() -> list[Place]:
        with django_db_blocker.unblock():
            tag = uuid.uuid4().hex[:8]
            dataset = dataset_get_or_create(slug=f"edge-client-{tag}")
            inside = {"location": Point(-2.5, 57.5), "region": edge.region}
            # Keys of their own: these places outlive the test (the change log keeps them) and
            # other tests look for keys shared between datasets.
            return [
                place_create(
                    dataset=dataset, source_key=f"{tag}-k{i}", data={"name": f"K{i}", **inside}
                )
                for i in range(5)
            ]

    places = _committed(make)
    db = tmp_path / "places.sqlite"
    args = ("pull", "--db", str(db), "--url", edge.server.url, "--key", edge.key, "--limit", "2")
    local = "SELECT id, name FROM places ORDER BY id"
    # when the device pulls the first time
    first = run_client(*args)
    # then it holds the region's places, taken as a snapshot two a page
    assert first.returncode == 0, first.stdout + first.stderr
    assert client_rows(db, local) == [(p.pk, p.name) for p in places]
    assert first.stdout.count("(snapshot)") >= 3
    # read to its end: the feed's first page followed
    assert client_rows(db, "SELECT in_snapshot FROM pull_state") == [(0,)]

    # when one place is renamed and another retired, and it pulls again
    def change() -> None:
        with django_db_blocker.unblock():
            place_update(place=places[0], data={"name": "K0, renamed"})
            place_retire(place=places[1])
            _feed_caught_up()

    _committed(change)
    second = run_client(*args)
    # then its copy is the region as it is now
    assert second.returncode == 0, second.stdout + second.stderr
    assert client_rows(db, local) == [(places[0].pk, "K0, renamed")] + [
        (p.pk, p.name) for p in places[2:]
    ]
    assert "1 deletes" in second.stdout
    # and a pull with nothing new changes nothing
    third = run_client(*args)
    assert third.returncode == 0, third.stdout + third.stderr
    assert client_rows(db, local)[0] == (places[0].pk, "K0, renamed")
    assert len(client_rows(db, local)) == 4


def test_a_sensor_of_another_node_is_rejected_on_the_device_and_the_rest_stored(
    edge, django_db_blocker, tmp_path
):
    tag = uuid.uuid4().hex[:8]
    mine, theirs = f"mine-{tag}", f"theirs-{tag}"

    def sensor_file(path: Path, sensors: list[str]) -> Path:
        lines = ["sensor_id;sensor_type;location;lat;lon;timestamp;P1;P2"]
        lines += [
            f"{sensors[row % len(sensors)]};SDS011;1;57.1;-2.1;2019-03-01T00:{row:02d}:00;{row};1"
            for row in range(12)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    # given sensor `theirs` registered to another node (it sent a reading first)
    def make_other() -> tuple[EdgeNode, Region, str]:
        with django_db_blocker.unblock():
            region = region_make(f"EC{uuid.uuid4().hex[:8]}", code_system="edge-client-e2e")
            node = edge_node_create(name=f"edge-client-{uuid.uuid4().hex[:8]}", region=region)
            return node, region, edge_key_create(node=node).secret

    other, other_region, other_key = _committed(make_other)
    try:
        theirs_file = sensor_file(tmp_path / "theirs.csv", [theirs])
        first = run_client(
            "replay", str(theirs_file), "--db", str(tmp_path / "other.sqlite"),
            "--url", edge.server.url, "--key", other_key, "--give-up-after", "30",
        )  # fmt: skip
        assert first.returncode == 0, first.stdout + first.stderr
        # when this node's device sends readings of its own sensor and of `theirs`, in turns
        db = tmp_path / "q.sqlite"
        both = sensor_file(tmp_path / "both.csv", [mine, theirs])
        result = run_client(
            "replay", str(both), "--db", str(db), "--url", edge.server.url, "--key", edge.key,
            "--batch", "8", "--give-up-after", "30",
        )  # fmt: skip
        # then the run ends well: `theirs` is rejected on the device, with the server's reason
        assert result.returncode == 0, result.stdout + result.stderr
        assert client_rows(db, "SELECT sensor, state, count(*) FROM readings GROUP BY 1, 2") == [
            (mine, "sent", 12),
            (theirs, "rejected", 12),
        ]
        (reason,) = client_rows(db, "SELECT DISTINCT error FROM readings WHERE state = 'rejected'")
        assert reason[0].startswith("sensor_of_other_node: ")
        assert theirs in reason[0]
        # and the server holds this node's readings of its own sensor, each once
        stored = _stored_readings(edge.node)
        assert len(stored) == 12
        assert {key[0] for key, _ in stored} == {mine}
        assert Sensor.objects.get(external_id=theirs).node_id == other.pk
    finally:

        def delete() -> None:
            with django_db_blocker.unblock():
                _delete_node(other, other_region)

        _committed(delete)


def test_a_node_moved_to_another_region_pulls_the_new_region_by_itself(
    edge, django_db_blocker, tmp_path
):
    def make() -> tuple[Region, list[Place], list[Place]]:
        with django_db_blocker.unblock():
            region = region_make(f"EC{uuid.uuid4().hex[:8]}", code_system="edge-client-e2e")
            tag = uuid.uuid4().hex[:8]
            dataset = dataset_get_or_create(slug=f"edge-client-{tag}")

            def make_in(where: Region, n: int) -> list[Place]:
                data = {"location": Point(-2.5, 57.5), "region": where}
                return [
                    place_create(
                        dataset=dataset,
                        source_key=f"{tag}-{where.pk}-{i}",
                        data={"name": "K", **data},
                    )
                    for i in range(n)
                ]

            here, there = make_in(edge.region, 2), make_in(region, 3)
            _feed_caught_up()
            return region, here, there

    new_region, here, there = _committed(make)
    db = tmp_path / "places.sqlite"
    args = ("pull", "--db", str(db), "--url", edge.server.url, "--key", edge.key)
    local = "SELECT id FROM places ORDER BY id"
    # given a device holding its region's places
    assert run_client(*args).returncode == 0
    assert client_rows(db, local) == [(p.pk,) for p in here]

    # when its node is moved to another region, and it pulls
    def move() -> None:
        with django_db_blocker.unblock():
            EdgeNode.objects.filter(pk=edge.node.pk).update(region=new_region)

    _committed(move)
    result = run_client(*args)
    # then the stored cursor is refused, and the client says so and takes a fresh snapshot
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused our cursor" in result.stdout
    assert client_rows(db, local) == [(p.pk,) for p in there]
    # and the pulls were heartbeats too: a node that only pulls is seen
    edge.node.refresh_from_db()
    assert edge.node.last_heartbeat_at is not None
    assert edge.node.software_version == client.VERSION
