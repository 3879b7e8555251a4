"""The WAL archiving metrics against a PostgreSQL cluster of the test's own that archives: an
archive_command that fails shows as a failure newer than the last success, with segments
waiting (what PlacesWalArchivingFailing and PlacesWalArchiveBacklog watch); once the command
works again, the success is newer and nothing waits.

The cluster is made with Debian's cluster tools (as root, like bin/replica-up) on a free
port and dropped at the end; the shared clusters are never touched."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from places import metrics

pytestmark = pytest.mark.slow

PG_VERSION = "15"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def archiving_cluster() -> Iterator[tuple[psycopg.Connection, Path]]:
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's cluster tools, as root (as bin/replica-up does)")
    name, port = f"metrics{os.getpid()}", _free_port()
    # Not under pytest's tmp_path, whose parents the postgres user may not enter.
    base = Path(tempfile.mkdtemp(prefix="places-archive-"))
    base.chmod(0o755)
    switch = base / "archive-ok"  # the archive command succeeds while this file exists
    archive = base / "archive"
    archive.mkdir()
    shutil.chown(archive, "postgres", "postgres")
    subprocess.run(
        ["pg_createcluster", PG_VERSION, name, "-p", str(port), "--",
         "--auth-local=trust", "--auth-host=trust"],
        check=True, capture_output=True,
    )  # fmt: skip
    conf_d = Path(f"/etc/postgresql/{PG_VERSION}/{name}/conf.d")
    try:
        (conf_d / "archive.conf").write_text(
            "listen_addresses = '127.0.0.1'\n"
            "archive_mode = on\n"
            f"archive_command = 'test -e {switch} && cp %p {archive}/%f'\n"
        )
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, name, "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            yield conn, switch
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", PG_VERSION, name], check=False, capture_output=True
        )
        shutil.rmtree(f"/etc/postgresql/{PG_VERSION}/{name}", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def _figures(conn: psycopg.Connection) -> dict[str, float]:
    with conn.cursor() as cursor:
        return {f.name: f.samples[0].value for f in metrics.database_metric_families(cursor)}


def _switch_wal(conn: psycopg.Connection) -> None:
    # Some WAL to close, then close the segment: the archiver is handed it at once.
    conn.execute("CREATE TABLE IF NOT EXISTS t (n int)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("SELECT pg_switch_wal()")


def test_wal_archiving_failure_and_recovery_show_in_the_metrics(archiving_cluster):
    conn, switch = archiving_cluster
    # given an archive command that fails
    _switch_wal(conn)
    _wait_for(
        lambda: _figures(conn)["places_wal_archive_failed_total"] > 0,
        timeout=30,
        what="a failed archiving attempt",
    )
    failing = _figures(conn)
    # then the last failure is newer than the last success (never), and a segment waits
    assert failing["places_wal_archive_last_success_timestamp_seconds"] == 0
    assert failing["places_wal_archive_last_failure_timestamp_seconds"] > time.time() - 60
    assert failing["places_wal_archive_ready_segments"] >= 1

    # when the command works again and another segment is closed
    switch.touch()
    _switch_wal(conn)
    _wait_for(
        lambda: _figures(conn)["places_wal_archive_ready_segments"] == 0,
        timeout=90,
        what="the waiting segments to be archived",
    )
    # then the last success is newer than the last failure, and nothing waits
    recovered = _figures(conn)
    assert (
        recovered["places_wal_archive_last_success_timestamp_seconds"]
        > recovered["places_wal_archive_last_failure_timestamp_seconds"]
    )
    assert recovered["places_db_connections"] >= 1
