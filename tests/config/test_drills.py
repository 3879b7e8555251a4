"""Disaster-recovery drills, run for real on PostgreSQL clusters of their own (never the shared
15/main or 15/replica): a throwaway primary made with Debian's cluster tools on a free port,
archiving through bin/backup into a pgBackRest repository of its own, with the Places schema
(manage.py migrate) and places written by the real import command.

- Point-in-time recovery: import, note T, import more, `bin/backup restore T` into a fresh
  cluster; its places and change log (counts and checksums) and its uploaded files are those
  of T. RTO: the restore's wall time; RPO: the newest archived WAL's age when it started.
- Failover: a streaming replica (bin/replica-up) and pgbouncer in front of the primary; the
  primary is stopped hard while a client writes through pgbouncer, bin/failover promotes the
  replica and points pgbouncer at it; every acknowledged write (an import batch, change-log
  rows, the client's rows) is on the new primary; downtime measured; a new replica is built
  from the new primary.

Figures go to stdout (pytest -s shows them) and to README's "Disaster recovery drills".
The two tests share the module's primary: the failover drill, which ends it, runs last."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

pytestmark = pytest.mark.slow

PG_VERSION = "15"
BASE_DIR = Path(settings.BASE_DIR)
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def _connect(port: int, dbname: str = "places", **kwargs) -> psycopg.Connection:
    return psycopg.connect(
        host=HOST, port=port, user="postgres", dbname=dbname, autocommit=True, **kwargs
    )


def _scalar(port: int, sql: str, dbname: str = "places"):
    with _connect(port, dbname) as conn:
        row = conn.execute(sql).fetchone()
        return row[0] if row else None


def _drop_cluster(name: str) -> None:
    # Stopped at once (no shutdown checkpoint to wait for): it is thrown away.
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, name, "stop", "-m", "immediate"],
        check=False, capture_output=True,
    )  # fmt: skip
    subprocess.run(["pg_dropcluster", PG_VERSION, name], check=False, capture_output=True)
    # pg_dropcluster leaves conf.d behind (OPS-NOTES).
    shutil.rmtree(f"/etc/postgresql/{PG_VERSION}/{name}", ignore_errors=True)


def _run(command: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(
        command, env=env, cwd=BASE_DIR, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


@dataclass
class Drill:
    """The drill's primary and everything around it, all under ``base``."""

    base: Path
    primary: str
    port: int
    extra_clusters: list[str] = field(default_factory=list)

    @property
    def backup_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PG_CLUSTER": self.primary,
            "PG_PORT": str(self.port),
            "PGBACKREST_CONFIG": str(self.base / "pgbackrest.conf"),
            "BACKUP_DIR": str(self.base / "backup"),
            "MEDIA_ROOT": str(self.base / "media"),
        }

    def app_env(self, port: int | None = None, dbname: str = "places") -> dict[str, str]:
        """manage.py against the drill's database (or a pooler in front of it)."""
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": f"postgis://postgres@{HOST}:{port or self.port}/{dbname}",
            "REPLICA_DATABASE_URL": "",
            "MEDIA_ROOT": str(self.base / "media"),
            "REDIS_URL": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6380/0"),
            "CELERY_BROKER_URL": os.environ.get(
                "TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"
            ),
        }

    def import_places(self, name: str, rows: list[tuple[str, str]], **env_args) -> None:
        """``rows`` of (key, name) imported into the ``drill`` dataset by the real command."""
        path = self.base / name
        lines = ["id,name,religion,denomination,lon,lat"]
        for key, place_name in rows:
            number = int(key[1:])
            lines.append(
                f"{key},{place_name},Christian,methodist,"
                f"{-2 + (number % 97) / 50:.4f},{51 + (number % 89) / 50:.4f}"
            )
        path.write_text("\n".join(lines) + "\n")
        _run(
            [sys.executable, "manage.py", "import_places", str(path),
             "--dataset", "drill", "--sync"],
            env=self.app_env(**env_args),
        )  # fmt: skip


@pytest.fixture(scope="module")
def drill() -> Iterator[Drill]:
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's cluster tools, as root (as bin/replica-up does)")
    if shutil.which("pgbackrest") is None:
        pytest.skip("pgbackrest is not installed (bin/install-system-deps)")
    # Not under pytest's tmp_path, whose parents the postgres user may not enter.
    base = Path(tempfile.mkdtemp(prefix="places-drill-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    (base / "media").mkdir()
    drill = Drill(base=base, primary=f"drill_p{os.getpid()}", port=_free_port())
    try:
        subprocess.run(
            ["pg_createcluster", PG_VERSION, drill.primary, "-p", str(drill.port), "--",
             "--auth-local=trust", "--auth-host=trust", "--data-checksums"],
            check=True, capture_output=True,
        )  # fmt: skip
        (Path(f"/etc/postgresql/{PG_VERSION}/{drill.primary}/conf.d") / "10-drill.conf").write_text(
            f"listen_addresses = '{HOST}'\n"
        )
        # given the primary archiving through bin/backup (which starts it), the schema, and a
        # full backup
        _run(["bin/backup", "setup"], env=drill.backup_env)
        _run([sys.executable, "bin/ensure-database"], env=drill.app_env())
        _run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env=drill.app_env())
        _run(["bin/backup", "backup", "full"], env=drill.backup_env)
        yield drill
    finally:
        for name in [drill.primary, *drill.extra_clusters]:
            _drop_cluster(name)
        if (base / "pgbouncer.pid").exists():
            subprocess.run(["pkill", "-TERM", "-F", str(base / "pgbouncer.pid")], check=False)
        shutil.rmtree(base, ignore_errors=True)


# Counts and an order-independent-of-storage checksum of every row's text, per table.
STATE_SQL = """
SELECT (SELECT count(*) FROM places_place),
       (SELECT md5(coalesce(string_agg(p::text, '|' ORDER BY p.id), '')) FROM places_place p),
       (SELECT count(*) FROM places_placechange),
       (SELECT md5(coalesce(string_agg(c::text, '|' ORDER BY c.seq), ''))
          FROM places_placechange c)
"""


def _state(port: int) -> tuple:
    with _connect(port) as conn:
        return conn.execute(STATE_SQL).fetchone()


ARCHIVED_SQL = "SELECT last_archived_wal FROM pg_stat_archiver"


def _archived_through_now(port: int) -> None:
    """Close the current WAL segment and wait until pgBackRest holds it."""
    with _connect(port, "postgres") as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        _wait_for(
            lambda: (conn.execute(ARCHIVED_SQL).fetchone()[0] or "") >= segment,
            timeout=30,
            what=f"WAL segment {segment} to be archived",
        )  # fmt: skip


def test_pitr_drill_restores_places_change_log_and_uploads_as_of_t(drill: Drill):
    # given a first import, an incremental backup with its snapshot of the uploaded files,
    # and a second import that updates part of the first
    drill.import_places("batch-a.csv", [(f"d{i}", f"Chapel {i}") for i in range(300)])
    _run(["bin/backup", "backup", "incr"], env=drill.backup_env)
    drill.import_places(
        "batch-b.csv",
        [(f"d{i}", f"Chapel {i} (renamed)") for i in range(100)]
        + [(f"d{i}", f"Chapel {i}") for i in range(100, 300)]
        + [(f"d{i}", f"Hall {i}") for i in range(300, 400)],
    )
    # and the uploaded files kept again (what a cron job does between backups)
    _run(["bin/backup", "media"], env=drill.backup_env)
    # when T is noted with the state at T
    at_t = _state(drill.port)
    target = _scalar(drill.port, "SELECT now()::text")
    with _connect(drill.port) as conn:
        uploads_at_t = {row[0] for row in conn.execute("SELECT file FROM ingestion_importjob")}
    # and more is written after T: renames and new places
    drill.import_places(
        "batch-c.csv",
        [(f"d{i}", f"Chapel {i} (again)") for i in range(50)]
        + [(f"d{i}", f"Chapel {i}") for i in range(50, 300)]
        + [(f"d{i}", f"Hall {i}") for i in range(300, 500)],
    )
    after_t = _state(drill.port)
    assert after_t[0] == at_t[0] + 100
    assert after_t[2] > at_t[2]
    # the age of the newest archived WAL when the primary is "lost": what a crash now loses
    # at most (archive_timeout bounds it in steady state)
    rpo = _scalar(
        drill.port,
        "SELECT extract(epoch FROM now() - last_archived_time) FROM pg_stat_archiver",
        "postgres",
    )
    _archived_through_now(drill.port)
    # and the database restored to T into a fresh cluster
    restored = f"drill_r{os.getpid()}"
    drill.extra_clusters.append(restored)
    restored_media = drill.base / "restored-media"
    started = time.monotonic()
    output = _run(
        ["bin/backup", "restore", target],
        env={
            **drill.backup_env,
            "RESTORE_CLUSTER": restored,
            "RESTORE_MEDIA_ROOT": str(restored_media),
        },
    )
    rto = time.monotonic() - started
    port = int(output.split("RESTORE_PORT=")[1].split()[0])

    # then places and the change log are those of T, counts and checksums
    assert _state(port) == at_t
    # and it accepts writes (promoted, not a standby)
    assert _scalar(port, "SELECT pg_is_in_recovery()") is False
    # and every upload a restored import job names is there, the same bytes as the original
    with _connect(port) as conn:
        files = {row[0] for row in conn.execute("SELECT file FROM ingestion_importjob")}
    assert files == uploads_at_t
    assert len(files) == 2
    for name in files:
        assert (restored_media / name).read_bytes() == (drill.base / "media" / name).read_bytes()
    print(
        f"\nPITR drill: {at_t[0]} places, {at_t[2]} change-log rows at T; restore to T "
        f"(RTO) {rto:.1f} s; newest archived WAL age (RPO) {rpo:.1f} s"
    )


class Writer(threading.Thread):
    """The app's side: one row at a time through PgBouncer's transaction pool, reconnecting
    after an error; ``acknowledged`` holds (n, when) of every commit the server confirmed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.acknowledged: list[tuple[int, float]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        conn: psycopg.Connection | None = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = _connect(self.port, connect_timeout=2)
                n += 1
                conn.execute("INSERT INTO drill_ack (n) VALUES (%s)", [n])
                self.acknowledged.append((n, time.monotonic()))
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)
            time.sleep(0.01)
        if conn is not None:
            conn.close()


def _replica_up(drill: Drill, *, primary: str, primary_port: int, replica: str) -> int:
    port = _free_port()
    drill.extra_clusters.append(replica)
    env = {
        **os.environ,
        "PRIMARY_CLUSTER": primary,
        "PRIMARY_PORT": str(primary_port),
        "REPLICA_CLUSTER": replica,
        "REPLICA_PORT": str(port),
        "REPLICA_SLOT": f"{replica}_slot",
    }
    _run(["bin/replica-up"], env=env, timeout=180)
    _wait_for(
        lambda: _scalar(port, "SELECT status FROM pg_stat_wal_receiver", "postgres") == "streaming",
        timeout=30,
        what=f"{replica} to stream from {primary}",
    )
    return port


def test_failover_drill_loses_no_acknowledged_write_and_rebuilds_a_replica(drill: Drill):
    if shutil.which("pgbouncer") is None:
        pytest.skip("pgbouncer is not installed (bin/install-system-deps)")
    # given a streaming replica of the primary, commits waiting for it (synchronous
    # replication: what makes "no acknowledged write lost" hold after a hard stop)
    standby = f"drill_s{os.getpid()}"
    standby_port = _replica_up(drill, primary=drill.primary, primary_port=drill.port,
                               replica=standby)  # fmt: skip
    (Path(f"/etc/postgresql/{PG_VERSION}/{drill.primary}/conf.d") / "20-sync.conf").write_text(
        "synchronous_standby_names = '*'\n"
    )
    _scalar(drill.port, "SELECT pg_reload_conf()", "postgres")
    # and PgBouncer in front of the primary, run as postgres (it refuses root)
    bouncer_port = _free_port()
    ini = _run(
        ["bin/pgbouncer-conf", "--dir", str(drill.base), "--listen-port", str(bouncer_port),
         "--primary-port", str(drill.port)],
        env=dict(os.environ),
    ).strip()  # fmt: skip
    subprocess.run(["runuser", "-u", "postgres", "--", "pgbouncer", "-d", ini], check=True)
    _wait_for(lambda: (drill.base / "pgbouncer.pid").exists(), timeout=10, what="pgbouncer")
    with _connect(bouncer_port) as conn:
        conn.execute("CREATE TABLE drill_ack (n int PRIMARY KEY)")
    # and an import batch committed through PgBouncer's session pool (as a worker does)
    drill.import_places(
        "batch-d.csv",
        [(f"d{i}", f"Chapel {i} (failover)") for i in range(20)]
        + [(f"d{i}", f"Mission {i}") for i in range(1000, 1100)],
        port=bouncer_port,
        dbname="places_session",
    )
    acknowledged_state = _state(bouncer_port)
    # and the app writing through the transaction pool
    writer = Writer(bouncer_port)
    writer.start()
    _wait_for(lambda: len(writer.acknowledged) >= 20, timeout=30, what="the writer's first rows")

    # when the primary is stopped hard and bin/failover promotes the replica
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, drill.primary, "stop",
         "-m", "immediate"],
        check=True, capture_output=True,
    )  # fmt: skip
    stopped = time.monotonic()
    before_stop = len([n for n, at in writer.acknowledged if at < stopped])
    output = _run(
        ["bin/failover"],
        env={
            **drill.backup_env,
            "OLD_CLUSTER": drill.primary,
            "NEW_CLUSTER": standby,
            "PGBOUNCER_INI": ini,
        },
    )
    # then the app's connection answers again, through the same PgBouncer
    _wait_for(
        lambda: any(at > stopped for _, at in writer.acknowledged),
        timeout=60,
        what="a write acknowledged after the failover",
    )
    downtime = min(at for _, at in writer.acknowledged if at > stopped) - stopped
    _wait_for(lambda: len(writer.acknowledged) >= before_stop + 20, timeout=30, what="writes")
    writer.stop.set()
    writer.join(timeout=10)
    # and the new primary is writable and holds every acknowledged write: the import batch,
    # its change-log rows, and each of the app's rows
    assert _scalar(standby_port, "SELECT pg_is_in_recovery()") is False
    assert _state(standby_port) == acknowledged_state
    with _connect(standby_port) as conn:
        kept = {row[0] for row in conn.execute("SELECT n FROM drill_ack")}
    assert {n for n, _ in writer.acknowledged} <= kept
    # and the old primary is fenced: Debian's tools refuse to start it
    refused = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, drill.primary, "start"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0
    # and WAL archiving goes on from the new primary into the same stanza
    _archived_through_now(standby_port)

    # when a replica is built from the new primary
    rebuilt = f"drill_t{os.getpid()}"
    rebuilt_port = _replica_up(drill, primary=standby, primary_port=standby_port,
                               replica=rebuilt)  # fmt: skip
    # then it streams and has every acknowledged row
    assert _scalar(rebuilt_port, "SELECT pg_is_in_recovery()") is True
    _wait_for(
        lambda: _scalar(rebuilt_port, "SELECT count(*) FROM drill_ack") == len(kept),
        timeout=30,
        what="the rebuilt replica to replay the rows",
    )
    print(
        f"\nFailover drill: downtime (hard stop to the next acknowledged write through "
        f"PgBouncer) {downtime:.2f} s; {len(writer.acknowledged)} writes acknowledged, "
        f"{writer.errors} errors, none lost\n{output}"
    )
