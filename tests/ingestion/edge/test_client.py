"""bin/edge-client on its own: its parsers on the bundled sample files, its SQLite queue, and
what it does with each answer of a stand-in server (the end-to-end tests, in
test_client_e2e.py, run it against the real one)."""

from __future__ import annotations

import csv
import gzip
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.ingestion.edge.edge_client_support import (
    ARCHIVES,
    BME280,
    DHT22,
    MADAVI,
    SDS011,
    Received,
    Reply,
    StandIn,
    accept_all,
    client_command,
    head_of,
    load_client,
    run_client,
    stand_in_server,
)

KEY = "edge_abcd1234_" + "x" * 43
client = load_client()


@pytest.fixture
def server() -> Iterator[StandIn]:
    yield from stand_in_server()


def plain_counts(path: Path, columns: dict[str, str]) -> Counter[str]:
    """Non-empty cells per column, counted with nothing but the csv module."""
    counts: Counter[str] = Counter()
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter=";"):
            for column, parameter in columns.items():
                if (row.get(column) or "").strip():
                    counts[parameter] += 1
    return counts


def parsed(path: Path, **options) -> tuple[list, dict, object]:
    sensors: dict = {}
    stats = client.FileStats()
    readings = list(client.read_file(path, sensors, stats, **options))
    return readings, sensors, stats


def db_rows(db: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


# --- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ARCHIVES, ids=lambda p: p.name.split("_")[3])
def test_archive_readings_per_parameter_equal_the_files_non_empty_values(path):
    # given a sensor.community archive file
    expected = plain_counts(path, client.ARCHIVE_COLUMNS)
    # when the client reads it
    readings, sensors, stats = parsed(path)
    # then it finds one reading per non-empty value, under the protocol's parameter names
    assert Counter(r.parameter for r in readings) == expected
    assert sum(expected.values()) > 10_000
    assert stats.skipped == 0
    # and the sensors of the file with their kind and [lon, lat]
    with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    assert set(sensors) == {row["sensor_id"] for row in rows}
    first = rows[0]
    assert sensors[first["sensor_id"]].kind == first["sensor_type"]
    assert (sensors[first["sensor_id"]].lon, sensors[first["sensor_id"]].lat) == (
        float(first["lon"]),
        float(first["lat"]),
    )


def test_archive_times_are_sent_as_utc_with_a_zone():
    readings, _, _ = parsed(SDS011)
    # the file's first line: 15092;SDS011;7647;56.963;-2.211;2019-03-01T00:00:15;23.07;;;10.90;;
    assert readings[:2] == [
        client.Reading("15092", "pm10", "2019-03-01T00:00:15Z", 23.07),
        client.Reading("15092", "pm2_5", "2019-03-01T00:00:15Z", 10.90),
    ]


def test_madavi_log_columns_become_the_devices_sensors_and_parameters():
    # given the madavi device log, whose rows are two fields short of its header
    expected = plain_counts(
        MADAVI,
        {col: f"{spec[0]}:{spec[2]}" for col, spec in client.MADAVI_COLUMNS.items()},
    )
    # when the client reads it
    readings, sensors, stats = parsed(MADAVI, location=(-2.077, 57.138))
    # then each non-empty sensor column is one reading of sensor <device>-<model>
    got = Counter(f"{r.sensor.removeprefix('esp8266-3654427-')}:{r.parameter}" for r in readings)
    assert got == expected
    assert got == {
        "sds011:pm10": 3741,
        "sds011:pm2_5": 3741,
        "dht22:temperature": 3741,
        "dht22:humidity": 3741,
    }
    assert stats.skipped == 0
    assert {s.id: s.kind for s in sensors.values()} == {
        "esp8266-3654427-sds011": "SDS011",
        "esp8266-3654427-dht22": "DHT22",
    }
    assert sensors["esp8266-3654427-sds011"].lon == -2.077
    # and its times (2019/03/01 00:01:36, UTC) are sent with a zone
    assert readings[0] == client.Reading(
        "esp8266-3654427-sds011", "pm10", "2019-03-01T00:01:36Z", 12.53
    )


def test_madavi_log_without_a_device_in_its_name_asks_for_device(tmp_path):
    renamed = tmp_path / "log.csv"
    renamed.write_bytes(gzip.decompress(MADAVI.read_bytes()))
    with pytest.raises(client.Stop, match="--device"):
        parsed(renamed)
    readings, sensors, _ = parsed(renamed, device="esp8266-1")
    assert set(sensors) == {"esp8266-1-sds011", "esp8266-1-dht22"}
    assert len(readings) == 4 * 3741


def test_values_that_are_not_finite_numbers_are_skipped_and_counted(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text(
        "sensor_id;sensor_type;location;lat;lon;timestamp;P1;P2\n"
        "1;SDS011;9;57.1;-2.1;2019-03-01T00:00:00;nan;inf\n"
        "1;SDS011;9;57.1;-2.1;2019-03-01T00:02:00;abc;5\n"
        "1;SDS011;9;57.1;-2.1;not a time;1;2\n"
        "1;SDS011;9;57.1;-2.1;2019-03-01T00:04:00;;\n",
        encoding="utf-8",
    )
    readings, _, stats = parsed(path)
    assert readings == [client.Reading("1", "pm2_5", "2019-03-01T00:02:00Z", 5.0)]
    assert (stats.lines, stats.readings, stats.skipped) == (4, 1, 4)


def test_a_sensor_that_moves_is_declared_where_it_last_reported(tmp_path):
    path = tmp_path / "moved.csv"
    lines = [
        "sensor_id;sensor_type;location;lat;lon;timestamp;P1;P2",
        "7;SDS011;1;51.5;0.0;2019-03-01T00:00:00;1;2",  # on the Greenwich meridian
        "7;SDS011;1;;;2019-03-01T00:02:00;1;2",  # no position on this line
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, sensors, _ = parsed(path)
    assert (sensors["7"].lon, sensors["7"].lat) == (0.0, 51.5)
    path.write_text("\n".join([*lines, "7;SDS011;2;51.6;-0.1;2019-03-02T00:00:00;1;2"]) + "\n")
    _, sensors, _ = parsed(path)
    assert (sensors["7"].lon, sensors["7"].lat) == (-0.1, 51.6)


def test_a_file_of_neither_format_is_refused_naming_both(tmp_path):
    path = tmp_path / "places.csv"
    path.write_text("id;name\n1;x\n", encoding="utf-8")
    result = run_client("replay", str(path), "--db", str(tmp_path / "q.sqlite"), "--queue-only")
    assert result.returncode == client.EXIT_INPUT
    assert "sensor.community archive" in result.stderr
    assert "madavi.de device log" in result.stderr


# --- the queue -------------------------------------------------------------------------------


def test_reading_files_again_adds_nothing_to_the_queue(tmp_path):
    db = tmp_path / "q.sqlite"
    files = [str(DHT22), str(BME280), str(MADAVI)]
    # given the files read into the queue once
    first = run_client("replay", *files, "--db", str(db), "--queue-only")
    assert first.returncode == 0, first.stderr
    queued = db_rows(db, "SELECT count(*) FROM readings")[0][0]
    expected = sum(sum(plain_counts(p, client.ARCHIVE_COLUMNS).values()) for p in (DHT22, BME280))
    assert queued == expected + 4 * 3741
    # when they are read again (a plain copy of one too, and under another name)
    plain = tmp_path / "copy_of_dht22.csv"
    plain.write_bytes(gzip.decompress(DHT22.read_bytes()))
    again = run_client("replay", *files, str(plain), "--db", str(db), "--queue-only")
    # then nothing was added
    assert again.returncode == 0, again.stderr
    assert db_rows(db, "SELECT count(*) FROM readings")[0][0] == queued
    assert again.stdout.count(" 0 new in the queue") == 4
    # and the queue is unique by natural key, in WAL mode
    assert (
        db_rows(db, "SELECT count(DISTINCT sensor || parameter || time) FROM readings")[0][0]
        == queued
    )
    assert db_rows(db, "PRAGMA journal_mode")[0][0] == "wal"


def test_batch_key_membership_and_body_are_saved_before_sending(tmp_path, server):
    db = tmp_path / "q.sqlite"
    seen: list[tuple] = []

    def respond(request: Received) -> Reply:
        # What the client's database holds while its request is in flight.
        key = request.headers["Idempotency-Key"]
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT id, state, body FROM batches WHERE idempotency_key = ?", (key,)
            ).fetchone()
            members = conn.execute(
                "SELECT count(*) FROM readings WHERE batch_id = ? AND state = 'queued'",
                (row[0],) if row else (None,),
            ).fetchone()[0]
        seen.append((key, row[1] if row else None, members, row and row[2] == request.raw))
        return accept_all(request)

    server.respond = respond
    source = head_of(SDS011, 250, tmp_path / "sds.csv")
    # when 500 readings are sent in batches of 200
    result = run_client(
        "replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY, "--batch", "200"
    )
    assert result.returncode == 0, result.stderr
    # then each batch was in the database, open, with its readings and the very bytes sent
    assert [s[1:] for s in seen] == [("open", 200, True), ("open", 200, True), ("open", 100, True)]
    assert len({s[0] for s in seen}) == 3
    # and the batches were sent as the protocol says: gzip JSON, sensors declared
    request = server.received[0]
    assert request.path == "/api/v1/edge/observations/"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Encoding"] == "gzip"
    body = request.json()
    assert body["sensors"] == [{"id": "15092", "kind": "SDS011", "location": [-2.211, 56.963]}]
    assert body["readings"][0] == {
        "sensor": "15092",
        "parameter": "pm10",
        "time": "2019-03-01T00:00:15Z",
        "value": 23.07,
    }
    # and afterwards every reading is sent and every batch closed
    assert db_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [("sent", 500)]
    assert db_rows(db, "SELECT DISTINCT state FROM batches") == [("done",)]
    # keeping their answers, not their bodies
    assert db_rows(db, "SELECT sum(length(body)), sum(accepted) FROM batches") == [(0, 500)]


def test_client_killed_mid_send_sends_the_same_batch_again_with_the_same_key(tmp_path, server):
    db = tmp_path / "q.sqlite"
    in_flight = threading.Event()
    release = threading.Event()

    def hold_the_first(request: Received) -> Reply:
        if len(server.received) == 1:
            in_flight.set()
            release.wait(30)
            return 503, {}, None
        return accept_all(request)

    server.respond = hold_the_first
    source = head_of(DHT22, 150, tmp_path / "dht.csv")
    args = ("replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY)
    # given a client whose first batch is on the wire
    process = subprocess.Popen(
        client_command(*args, "--batch", "100"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert in_flight.wait(60), "the client sent nothing"
        # when it is killed with SIGKILL before the answer
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        release.set()
    assert process.returncode == -signal.SIGKILL
    assert db_rows(db, "SELECT count(*) FROM batches WHERE state = 'open'") == [(1,)]
    # and run again
    again = run_client(*args, "--batch", "100")
    assert again.returncode == 0, again.stderr
    # then the batch went again first, with the same key and the same bytes
    first, second = server.received[0], server.received[1]
    assert second.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    assert second.raw == first.raw
    # and every reading was sent once, in batches of distinct keys after it
    total = Counter(
        (r["sensor"], r["parameter"], r["time"])
        for request in server.received[1:]
        for r in request.json()["readings"]
    )
    assert len(total) == 300
    assert set(total.values()) == {1}
    keys = [r.headers["Idempotency-Key"] for r in server.received[1:]]
    assert len(set(keys)) == len(keys)
    assert db_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [("sent", 300)]


def test_connection_errors_5xx_and_429_are_retried_honouring_retry_after(tmp_path, server):
    db = tmp_path / "q.sqlite"
    answers = iter(
        [
            (503, {}, {"detail": "down for a moment"}),
            (429, {"Retry-After": "1"}, {"detail": "slow down", "code": "throttled"}),
            (500, {}, None),
        ]
    )

    def flaky(request: Received) -> Reply:
        return next(answers, None) or accept_all(request)

    server.respond = flaky
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    result = run_client(
        "replay",
        str(source),
        "--db",
        str(db),
        "--url",
        server.url,
        "--key",
        KEY,
        "--backoff",
        "0.05",
        "--max-backoff",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    assert [r.headers["Idempotency-Key"] for r in server.received] == [
        server.received[0].headers["Idempotency-Key"]
    ] * 4
    assert "HTTP 503; retrying" in result.stdout
    # the 429's Retry-After is a floor under the jittered wait
    assert "HTTP 429; retrying in 1.0 s" in result.stdout
    assert db_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [("sent", 20)]


def test_an_exhausted_rate_limit_is_waited_out_before_the_next_batch(tmp_path, server):
    def last_in_window(request: Received) -> Reply:
        status, _, answer = accept_all(request)
        left = "0" if len(server.received) == 1 else "5"
        return status, {"RateLimit-Limit": "6", "RateLimit-Remaining": left,
                        "RateLimit-Reset": "1"}, answer  # fmt: skip

    server.respond = last_in_window
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    result = run_client(
        "replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY, "--batch", "5"
    )
    assert result.returncode == 0, result.stderr
    # one wait, after the answer that left none, and no request refused meanwhile
    assert result.stdout.count("rate limit reached; waiting 1 s") == 1
    assert len(server.received) == 4


def test_unreachable_server_is_retried_until_give_up_after(tmp_path):
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    result = run_client(
        "replay",
        str(source),
        "--db",
        str(db),
        "--url",
        "http://127.0.0.1:9",
        "--key",
        KEY,
        "--backoff",
        "0.05",
        "--max-backoff",
        "0.1",
        "--give-up-after",
        "0.5",
    )
    assert result.returncode == client.EXIT_STOPPED
    assert "server unreachable" in result.stdout
    assert "gave up" in result.stderr
    # nothing left the queue; the batch stays open for the next run
    assert db_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [("queued", 20)]
    assert db_rows(db, "SELECT count(*) FROM batches WHERE state = 'open'") == [(1,)]


@pytest.mark.parametrize(
    ("status", "code", "detail", "extra"),
    [
        (401, "key_revoked", "The key has been revoked.", {}),
        (403, "scope_missing", "The key may not push readings.", {}),
        # a sensor this batch does not hold: nothing to drop, so it stops like the others
        (403, "sensor_of_other_node", "Sensor 'elsewhere' is registered to another node.",
         {"sensor": "elsewhere", "index": 0}),
    ],
)  # fmt: skip
def test_a_refused_key_stops_at_once_with_the_servers_message(
    tmp_path, server, status, code, detail, extra
):
    server.respond = lambda request: (status, {}, {"detail": detail, "code": code, **extra})
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    result = run_client("replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY)
    assert result.returncode == client.EXIT_REFUSED
    assert f"HTTP {status}: {detail} ({code})" in result.stderr
    assert len(server.received) == 1
    # the batch stays open: sent again, same key, once the key is fixed
    assert db_rows(db, "SELECT count(*) FROM batches WHERE state = 'open'") == [(1,)]


def test_a_batch_refused_as_too_large_goes_back_to_the_queue(tmp_path, server):
    def too_large(request: Received) -> Reply:
        if len(request.json()["readings"]) > 5:
            return 413, {}, {"detail": "At most 5 readings a batch.", "code": "too_many"}
        return accept_all(request)

    server.respond = too_large
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    args = ("replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY)
    # given a batch the server refuses as too large
    result = run_client(*args, "--batch", "20")
    assert result.returncode == client.EXIT_REFUSED
    assert "smaller --batch" in result.stderr
    assert db_rows(db, "SELECT state FROM batches") == [("dropped",)]
    # when run again with smaller batches, every reading goes
    again = run_client(*args, "--batch", "5")
    assert again.returncode == 0, again.stderr
    assert db_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [("sent", 20)]


def test_readings_the_server_rejects_keep_its_reason(tmp_path, server):
    def reject_second(request: Received) -> Reply:
        count = len(request.json()["readings"])
        error = {"index": 1, "field": "value", "code": "out_of_range", "message": "too high"}
        return (
            200,
            {},
            {"batch": 7, "accepted": count - 1, "duplicate": 0, "rejected": 1, "errors": [error]},
        )

    server.respond = reject_second
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 2, tmp_path / "sds.csv")
    result = run_client("replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY)
    assert result.returncode == 0, result.stderr
    assert db_rows(db, "SELECT parameter, state, error FROM readings ORDER BY id") == [
        ("pm10", "sent", None),
        ("pm2_5", "rejected", "out_of_range: too high"),
        ("pm10", "sent", None),
        ("pm2_5", "sent", None),
    ]
    status = run_client("status", "--db", str(db))
    assert "3 sent, 1 rejected" in status.stdout
    assert "rejected ×1: out_of_range: too high" in status.stdout


def two_sensors(path: Path, rows: int) -> Path:
    """An archive of sensors "1" and "2" taking turns, a minute apart (two readings a row)."""
    lines = ["sensor_id;sensor_type;location;lat;lon;timestamp;P1;P2"]
    for row in range(rows):
        sensor = 1 + row % 2
        lines.append(f"{sensor};SDS011;9;57.1;-2.1;2019-03-01T00:{row:02d}:00;{row};1.5")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_batch_declaring_another_nodes_sensor_is_rebuilt_without_it(tmp_path, server):
    # given a server where sensor "2" is registered to another node: a batch declaring it is
    # refused whole (403), naming it
    def foreign_two(request: Received) -> Reply:
        declared = [s["id"] for s in request.json()["sensors"]]
        if "2" in declared:
            detail = f"Sensor '2' (sensors[{declared.index('2')}]) is registered to another node."
            return 403, {}, {"detail": detail, "code": "sensor_of_other_node", "sensor": "2",
                             "index": declared.index("2")}  # fmt: skip
        return accept_all(request)

    server.respond = foreign_two
    db = tmp_path / "q.sqlite"
    source = two_sensors(tmp_path / "two.csv", 10)  # 10 readings of each sensor
    # when 20 readings are sent in batches of 8
    result = run_client(
        "replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY, "--batch", "8"
    )
    # then the run goes on to the end
    assert result.returncode == 0, result.stderr
    assert "sensor '2' is registered to another node" in result.stdout
    # and the refused batch went once; its readings of sensor "1" went again, under a new key
    first, second, *rest = server.received
    assert [s["id"] for s in first.json()["sensors"]] == ["1", "2"]
    assert second.json()["sensors"] == [{"id": "1", "kind": "SDS011", "location": [-2.1, 57.1]}]
    assert second.json()["readings"] == [r for r in first.json()["readings"] if r["sensor"] == "1"]
    keys = [r.headers["Idempotency-Key"] for r in server.received]
    assert len(set(keys)) == len(keys)
    # and no later batch named sensor "2": all its queued readings were rejected at once
    assert len(server.received) == 3
    assert all(r["sensor"] == "1" for q in rest for r in q.json()["readings"])
    reason = "sensor_of_other_node: Sensor '2' (sensors[1]) is registered to another node."
    assert db_rows(db, "SELECT sensor, state, error, count(*) FROM readings GROUP BY 1, 2, 3") == [
        ("1", "sent", None, 10),
        ("2", "rejected", reason, 10),
    ]
    assert db_rows(db, "SELECT state, answer FROM batches ORDER BY id")[0] == ("dropped", reason)
    assert db_rows(db, "SELECT state FROM batches ORDER BY id")[1:] == [("done",), ("done",)]
    status = run_client("status", "--db", str(db))
    assert "10 sent, 10 rejected" in status.stdout
    assert f"rejected ×10: {reason}" in status.stdout


def test_a_reading_of_another_nodes_sensor_rejected_per_item_keeps_the_reason(tmp_path, server):
    # given a server that rejects, item by item, readings naming sensor "2" (another node's)
    def per_item(request: Received) -> Reply:
        readings = request.json()["readings"]
        errors = [
            {"index": i, "field": f"readings[{i}].sensor", "code": "sensor_of_other_node",
             "message": "Sensor '2' is registered to another node."}
            for i, r in enumerate(readings) if r["sensor"] == "2"
        ]  # fmt: skip
        answer = {"batch": 3, "accepted": len(readings) - len(errors), "duplicate": 0,
                  "rejected": len(errors), "errors": errors}  # fmt: skip
        return 200, {}, answer

    server.respond = per_item
    db = tmp_path / "q.sqlite"
    source = two_sensors(tmp_path / "two.csv", 4)
    result = run_client("replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY)
    assert result.returncode == 0, result.stderr
    # then those readings are rejected with the server's reason, the others sent
    reason = "sensor_of_other_node: Sensor '2' is registered to another node."
    assert db_rows(db, "SELECT sensor, state, error, count(*) FROM readings GROUP BY 1, 2, 3") == [
        ("1", "sent", None, 4),
        ("2", "rejected", reason, 4),
    ]
    assert len(server.received) == 1


# --- pull and status -------------------------------------------------------------------------


def place(pid: int, version: int, name: str) -> dict:
    return {
        "op": "upsert",
        "id": pid,
        "version": version,
        "place": {
            "id": pid,
            "name": name,
            "religion": "christian",
            "denominations": [],
            "dataset": "osm-gb",
            "source_key": f"osm:node/{pid}",
            "lon": -2.1,
            "lat": 57.1,
            "status": "active",
        },
    }


def test_pull_applies_a_snapshot_then_changes_and_keeps_the_cursor(tmp_path, server):
    # The server's shape: snapshot pages say has_more until the feed's first page follows.
    script = [
        ({"cursor": "s1", "has_more": True, "snapshot": True,
          "changes": [place(1, 1, "St Machar"), place(2, 1, "St Nicholas")]}),
        ({"cursor": "f0", "has_more": True, "snapshot": True, "changes": [place(3, 1, "Kirk")]}),
        ({"cursor": "f0", "has_more": False, "snapshot": False, "changes": []}),
        ({"cursor": "f1", "has_more": False, "snapshot": False,
          "changes": [place(1, 2, "St Machar's Cathedral"),
                      {"op": "delete", "id": 2, "reason": "retired", "superseded_by": None},
                      place(3, 1, "Kirk")]}),
    ]  # fmt: skip
    asked: list[tuple[str | None, str | None]] = []

    def respond(request: Received) -> Reply:
        cursor = parse_qs(urlparse(request.path).query).get("cursor", [None])[0]
        asked.append((cursor, request.headers.get("If-None-Match")))
        if len(asked) > len(script):
            return 304, {}, None
        return 200, {"ETag": f'"e{len(asked)}"'}, script[len(asked) - 1]

    server.respond = respond
    db = tmp_path / "places.sqlite"
    args = ("pull", "--db", str(db), "--url", server.url, "--key", KEY, "--limit", "2")
    # when it pulls the first time: the snapshot's two pages, then the feed's first
    first = run_client(*args)
    assert first.returncode == 0, first.stderr
    assert db_rows(db, "SELECT id, version, name FROM places ORDER BY id") == [
        (1, 1, "St Machar"),
        (2, 1, "St Nicholas"),
        (3, 1, "Kirk"),
    ]
    assert db_rows(db, "SELECT cursor, in_snapshot FROM pull_state") == [("f0", 0)]
    # and again: the changes since, a tombstone among them
    second = run_client(*args)
    assert second.returncode == 0, second.stderr
    assert db_rows(db, "SELECT id, version, name FROM places ORDER BY id") == [
        (1, 2, "St Machar's Cathedral"),
        (3, 1, "Kirk"),
    ]
    assert db_rows(db, "SELECT cursor, etag FROM pull_state") == [("f1", '"e4"')]
    # and a third time: nothing new (304 to the stored ETag)
    third = run_client(*args)
    assert third.returncode == 0, third.stderr
    assert "no change since the last pull" in third.stdout
    # a snapshot is read to its end; only the feed's pages are asked "if changed"
    assert asked == [(None, None), ("s1", None), ("f0", None), ("f0", '"e3"'), ("f1", '"e4"')]
    assert server.received[-1].headers["Authorization"] == f"Bearer {KEY}"


def test_pull_resync_drops_places_the_new_snapshot_lacks(tmp_path, server):
    pages = iter(
        [
            {
                "cursor": "a",
                "has_more": False,
                "snapshot": True,
                "changes": [place(1, 1, "One"), place(2, 1, "Two")],
            },
            {"cursor": "b", "has_more": False, "snapshot": True, "changes": [place(2, 1, "Two")]},
        ]
    )
    server.respond = lambda request: (200, {}, next(pages))
    db = tmp_path / "places.sqlite"
    args = ("pull", "--db", str(db), "--url", server.url, "--key", KEY)
    assert run_client(*args).returncode == 0
    assert run_client(*args, "--resync").returncode == 0
    assert "cursor=" not in server.received[-1].path
    assert db_rows(db, "SELECT id FROM places") == [(2,)]


CURSOR_REFUSED = (
    400,
    {},
    {"detail": "The cursor is not one of this region's.", "code": "cursor", "field": "cursor"},
)


def test_pull_resyncs_by_itself_when_the_server_refuses_its_cursor(tmp_path, server):
    # given a copy of the old region's places (1 and 2), pulled to cursor "a"
    old = {"cursor": "a", "has_more": False, "snapshot": True,
           "changes": [place(1, 1, "One"), place(2, 1, "Two")]}  # fmt: skip
    server.respond = lambda request: (200, {}, old)
    db = tmp_path / "places.sqlite"
    args = ("pull", "--db", str(db), "--url", server.url, "--key", KEY)
    assert run_client(*args).returncode == 0
    # when the node has moved: its cursor is refused, and a snapshot gives the new region's
    new = [
        {"cursor": "b1", "has_more": True, "snapshot": True, "changes": [place(3, 1, "Three")]},
        {"cursor": "b2", "has_more": False, "snapshot": True, "changes": [place(2, 1, "Two")]},
    ]

    def moved(request: Received) -> Reply:
        cursor = parse_qs(urlparse(request.path).query).get("cursor", [None])[0]
        if cursor == "a":
            return CURSOR_REFUSED
        return 200, {}, new[0 if cursor is None else 1]

    server.respond = moved
    result = run_client(*args)
    # then the pull said why and started again from a snapshot, without being told
    assert result.returncode == 0, result.stderr
    assert "refused our cursor (The cursor is not one of this region's. (cursor))" in result.stdout
    asked = [parse_qs(urlparse(r.path).query).get("cursor") for r in server.received[1:]]
    assert asked == [["a"], None, ["b1"]]
    # and the local copy is the new region's: what the snapshot lacked is gone
    assert db_rows(db, "SELECT id FROM places ORDER BY id") == [(2,), (3,)]
    assert db_rows(db, "SELECT cursor, in_snapshot FROM pull_state") == [("b2", 0)]


def test_a_pull_refused_its_cursor_again_and_again_gives_up(tmp_path, server):
    # a server that refuses even the cursors of its own snapshot pages
    def broken(request: Received) -> Reply:
        if "cursor=" in request.path:
            return CURSOR_REFUSED
        return 200, {}, {"cursor": "s", "has_more": True, "snapshot": True,
                         "changes": [place(1, 1, "One")]}  # fmt: skip

    server.respond = broken
    db = tmp_path / "places.sqlite"
    result = run_client("pull", "--db", str(db), "--url", server.url, "--key", KEY)
    assert result.returncode == client.EXIT_REFUSED
    assert "HTTP 400" in result.stderr
    # a first snapshot page, then three fresh starts
    assert len(server.received) == 2 + 2 * client.MAX_RESYNCS


def test_pull_asks_for_gzip_and_unpacks_it_retrying_a_body_that_does_not_unpack(tmp_path, server):
    page = {"cursor": "f0", "has_more": False, "snapshot": True, "changes": [place(1, 1, "Kirk")]}
    packed = gzip.compress(json.dumps(page).encode())
    answers = iter(
        [
            # cut short on the way: not a page, so asked again
            (200, {"Content-Encoding": "gzip"}, packed[: len(packed) // 2]),
            (200, {"Content-Encoding": "gzip", "ETag": '"e1"'}, page),
        ]
    )
    server.respond = lambda request: next(answers)
    db = tmp_path / "places.sqlite"
    result = run_client(
        "pull", "--db", str(db), "--url", server.url, "--key", KEY, "--backoff", "0.05"
    )
    assert result.returncode == 0, result.stderr
    assert "does not unpack" in result.stdout
    assert [r.headers.get("Accept-Encoding") for r in server.received] == ["gzip", "gzip"]
    assert db_rows(db, "SELECT id, version, name FROM places") == [(1, 1, "Kirk")]
    assert db_rows(db, "SELECT cursor, etag FROM pull_state") == [("f0", '"e1"')]


def test_a_page_and_its_cursor_are_stored_together(tmp_path):
    # given a page whose apply fails half-way (a change without an id)
    conn = client.connect(str(tmp_path / "p.sqlite"))
    conn.execute("INSERT INTO pull_state (id, cursor) VALUES (1, 'before')")
    page = {
        "cursor": "after",
        "has_more": False,
        "snapshot": False,
        "changes": [place(1, 1, "One"), {"op": "upsert"}],
    }
    with pytest.raises(KeyError):
        client.apply_page(conn, page, None)
    # then neither the first change nor the cursor were kept
    assert conn.execute("SELECT count(*) FROM places").fetchone() == (0,)
    assert conn.execute("SELECT cursor FROM pull_state").fetchone() == ("before",)


def test_status_sends_a_heartbeat_with_queue_depth_disk_and_clock(tmp_path, server):
    server.heartbeat = lambda request: (
        200,
        {},
        {"server_time": "2026-12-03T22:00:00Z", "clock_offset_seconds": 1.5, "status": "active"},
    )
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 3, tmp_path / "sds.csv")
    run_client("replay", str(source), "--db", str(db), "--queue-only")
    result = run_client("status", "--db", str(db), "--url", server.url, "--key", KEY)
    assert result.returncode == 0, result.stderr
    assert "6 queued, 0 sent" in result.stdout
    assert "clock is off by 1.5 s" in result.stdout
    (request,) = server.heartbeats
    assert request.path == "/api/v1/edge/heartbeat/"
    body = request.json()
    assert body["queue_depth"] == 6
    assert body["disk_free_bytes"] > 0
    assert body["software_version"] == "edge-client 1.0"
    assert body["clock"].endswith("Z")
    # without --url/--key no heartbeat goes
    assert run_client("status", "--db", str(db)).returncode == 0
    assert len(server.heartbeats) == 1
    assert server.received == []


def test_replay_sends_a_heartbeat_first_and_a_failed_one_does_not_stop_it(tmp_path, server):
    order: list[str] = []

    def heartbeat(request: Received) -> Reply:
        order.append("heartbeat")
        return 503, {}, {"detail": "down for a moment"}

    def batch(request: Received) -> Reply:
        order.append("batch")
        return accept_all(request)

    server.heartbeat, server.respond = heartbeat, batch
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    # when a replay runs (against a server whose heartbeat endpoint fails)
    result = run_client(
        "replay", str(source), "--db", str(db), "--url", server.url, "--key", KEY, "--batch", "5"
    )
    # then it sent one heartbeat, before its first batch, with what the device knows
    assert result.returncode == 0, result.stderr
    assert order == ["heartbeat", "batch", "batch", "batch", "batch"]
    body = server.heartbeats[0].json()
    assert body["queue_depth"] == 20
    assert body["disk_free_bytes"] > 0
    assert body["software_version"] == client.VERSION
    assert body["clock"].endswith("Z")
    # and the failed heartbeat was reported, not retried, and the readings all went
    assert "heartbeat refused: HTTP 503: down for a moment; going on" in result.stdout
    assert db_rows(db, "SELECT state, count(*) FROM readings GROUP BY state") == [("sent", 20)]
    # and a run with nothing left to send still reports, an empty queue
    again = run_client("replay", "--db", str(db), "--url", server.url, "--key", KEY)
    assert again.returncode == 0, again.stderr
    assert order[5:] == ["heartbeat"]
    assert server.heartbeats[1].json()["queue_depth"] == 0


def test_pull_sends_a_heartbeat_and_leaves_out_a_queue_it_never_had(tmp_path, server):
    page = {"cursor": "f0", "has_more": False, "snapshot": True, "changes": [place(1, 1, "Kirk")]}
    server.respond = lambda request: (200, {}, page)
    db = tmp_path / "places.sqlite"
    args = ("pull", "--db", str(db), "--url", server.url, "--key", KEY)
    # a pull-only database: no queue to report
    assert run_client(*args).returncode == 0
    (only,) = server.heartbeats
    assert set(only.json()) == {"software_version", "clock", "disk_free_bytes"}
    # the database replay uses too: its queue depth goes along
    source = head_of(SDS011, 2, tmp_path / "sds.csv")
    run_client("replay", str(source), "--db", str(db), "--queue-only")
    assert run_client(*args).returncode == 0
    assert server.heartbeats[1].json()["queue_depth"] == 4
    # and a pull whose server cannot take heartbeats still pulls
    server.heartbeat = lambda request: (403, {}, {"detail": "no", "code": "scope_missing"})
    again = run_client(*args)
    assert again.returncode == 0, again.stderr
    assert "heartbeat refused: HTTP 403" in again.stdout
    assert len(server.received) == 3


def test_a_long_run_sends_a_heartbeat_at_most_once_a_minute(tmp_path, server, capsys):
    # given a pull of four pages in which each request finds the clock 31 s later
    pages = [
        {"cursor": f"s{n}", "has_more": n < 3, "snapshot": True, "changes": [place(n, 1, "K")]}
        for n in range(4)
    ]
    server.respond = lambda request: (200, {}, pages[len(server.received) - 1])
    ticks = iter(range(0, 1000, 31))
    conn = client.connect(str(tmp_path / "p.sqlite"))
    args = client.build_parser().parse_args(
        ["pull", "--db", str(tmp_path / "p.sqlite"), "--url", server.url, "--key", KEY]
    )
    heartbeat = client.Heartbeat(conn, args, clock=lambda: next(ticks))
    backoff = client.Backoff(0.01, 0.01, 0)
    # when it runs
    client.pull_once(conn, args, backoff, heartbeat)
    # then heartbeats went at 0 s and 62 s, none at 31 s or 93 s
    assert len(server.received) == 4
    assert len(server.heartbeats) == 2
    # and a heartbeat that cannot reach the server is only reported
    args.url = "http://127.0.0.1:9"
    client.Heartbeat(conn, args).beat()
    assert "heartbeat not sent (server unreachable" in capsys.readouterr().out


def test_help_explains_each_command_to_a_newcomer():
    top = run_client("--help")
    assert top.returncode == 0
    for command in ("replay", "pull", "status"):
        assert command in top.stdout
        text = run_client(command, "--help").stdout
        assert "--db" in text
    assert "madavi.de device log" in run_client("replay", "--help").stdout
    assert "tombstone" not in top.stdout  # plain words: deletes
    assert "EDGE_KEY" in top.stdout


def test_status_of_a_database_that_does_not_exist_says_so(tmp_path):
    result = run_client("status", "--db", str(tmp_path / "typo.sqlite"))
    assert result.returncode == client.EXIT_INPUT
    assert "no such database" in result.stderr
    assert not (tmp_path / "typo.sqlite").exists()


def test_sending_without_a_server_named_says_what_is_missing(tmp_path):
    result = run_client("replay", "--db", str(tmp_path / "q.sqlite"))
    assert result.returncode == client.EXIT_USAGE
    assert "--url and --key needed" in result.stderr


def test_stop_signal_ends_the_wait_and_leaves_the_queue_for_the_next_run(tmp_path):
    db = tmp_path / "q.sqlite"
    source = head_of(SDS011, 10, tmp_path / "sds.csv")
    output = tmp_path / "out.txt"
    process = subprocess.Popen(
        client_command(
            "replay",
            str(source),
            "--db",
            str(db),
            "--url",
            "http://127.0.0.1:9",
            "--key",
            KEY,
            "--backoff",
            "5",
            "--max-backoff",
            "5",
        ),
        stdout=output.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "retrying" not in output.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == client.EXIT_STOPPED
    assert "20 readings still queued" in output.read_text()
