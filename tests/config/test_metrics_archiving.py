"""The WAL archiving and backup metrics against a PostgreSQL cluster of the test's own that
archives: an archive_command that fails shows as a failure newer than the last success, with
segments waiting (what PlacesWalArchivingFailing and PlacesWalArchiveBacklog watch); once the
command works again, the success is newer and nothing waits. A full backup with pgBackRest
shows as the newest backup's stop time (what PlacesBackupTooOld watches).

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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY

from places import metrics
from places.metrics import scraped

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


@dataclass
class Cluster:
    name: str
    port: int
    base: Path  # a folder the postgres user may use (archive, pgBackRest's repository)
    conn: psycopg.Connection | None = None

    @property
    def data(self) -> str:
        return f"/var/lib/postgresql/{PG_VERSION}/{self.name}"


@contextmanager
def scratch_cluster(archive_command: Callable[[Path], str]) -> Iterator[Cluster]:
    """A PostgreSQL cluster on a free port archiving with ``archive_command(base)``."""
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's cluster tools, as root (as bin/replica-up does)")
    # Not under pytest's tmp_path, whose parents the postgres user may not enter.
    base = Path(tempfile.mkdtemp(prefix="places-archive-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    cluster = Cluster(name=f"metrics{os.getpid()}", port=_free_port(), base=base)
    subprocess.run(
        ["pg_createcluster", PG_VERSION, cluster.name, "-p", str(cluster.port), "--",
         "--auth-local=trust", "--auth-host=trust"],
        check=True, capture_output=True,
    )  # fmt: skip
    conf_d = Path(f"/etc/postgresql/{PG_VERSION}/{cluster.name}/conf.d")
    try:
        (conf_d / "archive.conf").write_text(
            "listen_addresses = '127.0.0.1'\n"
            "archive_mode = on\n"
            f"archive_command = '{archive_command(base)}'\n"
        )
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, cluster.name, "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        with psycopg.connect(
            host="127.0.0.1", port=cluster.port, user="postgres", dbname="postgres",
            autocommit=True,
        ) as conn:  # fmt: skip
            cluster.conn = conn
            yield cluster
    finally:
        subprocess.run(
            ["pg_dropcluster", "--stop", PG_VERSION, cluster.name],
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(f"/etc/postgresql/{PG_VERSION}/{cluster.name}", ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def _figures(conn: psycopg.Connection) -> dict[str, float]:
    with conn.cursor() as cursor:
        return {f.name: f.samples[0].value for f in metrics.database_metric_families(cursor)}


def _switch_wal(conn: psycopg.Connection) -> None:
    # Some WAL to close, then close the segment: the archiver is handed it at once.
    conn.execute("CREATE TABLE IF NOT EXISTS t (n int)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("SELECT pg_switch_wal()")


def test_wal_archiving_failure_and_recovery_show_in_the_metrics():
    # The archive command succeeds while the file "archive-ok" exists.
    with scratch_cluster(lambda base: f"test -e {base}/archive-ok && cp %p {base}/%f") as cluster:
        assert cluster.conn is not None
        _archiving_fails_then_recovers(cluster.conn, cluster.base / "archive-ok")


def _archiving_fails_then_recovers(conn: psycopg.Connection, switch: Path) -> None:
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


PGBACKREST_CONF = """[global]
repo1-path={base}/repo
log-path={base}/log
lock-path={base}/lock
start-fast=y
archive-check=y

[places]
pg1-path={data}
pg1-port={port}
pg1-socket-path=/var/run/postgresql
"""


def _pgbackrest(conf: Path, *args: str) -> None:
    # As postgres: as root, pgBackRest cannot reach the cluster (OPS-NOTES).
    command = " ".join(["pgbackrest", f"--config={conf}", "--stanza=places", *args])
    subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True)


def test_backup_times_come_from_pgbackrest_info(settings, monkeypatch):
    if shutil.which("pgbackrest") is None:
        pytest.skip("pgbackrest is not installed (Debian package pgbackrest)")
    conf_path: list[Path] = []

    def archive_push(base: Path) -> str:
        conf_path.append(base / "pgbackrest.conf")
        return f"pgbackrest --config={base}/pgbackrest.conf --stanza=places archive-push %p"

    with scratch_cluster(archive_push) as cluster:
        conf = conf_path[0]
        conf.write_text(
            PGBACKREST_CONF.format(base=cluster.base, data=cluster.data, port=cluster.port)
        )
        shutil.chown(conf, "postgres", "postgres")
        settings.PGBACKREST_STANZA = "places"
        settings.PGBACKREST_CONFIG = str(conf)
        _pgbackrest(conf, "stanza-create")
        # given a stanza without any backup: info answers, no backup time yet
        monkeypatch.setattr(scraped, "_backup_cached", None)
        assert REGISTRY.get_sample_value("places_backup_info_up") == 1
        assert (
            REGISTRY.get_sample_value(
                "places_backup_last_success_timestamp_seconds", {"type": "full"}
            )
            is None
        )
        # when a full backup is taken
        before = time.time()
        _pgbackrest(conf, "backup", "--type=full")
        # then, once the cached answer expires, its stop time is the full backup's
        monkeypatch.setattr(scraped, "_backup_cached", None)
        stop = REGISTRY.get_sample_value(
            "places_backup_last_success_timestamp_seconds", {"type": "full"}
        )
        assert stop is not None
        assert before - 1 <= stop <= time.time() + 1
