"""`make backup` on a cluster in use (the development cluster that `make run` and the tests
share): turning WAL archiving on needs one restart, which cuts every connected session. So
bin/backup restarts a cluster only when nobody is connected or when told to
(BACKUP_RESTART=1), says why otherwise, and never restarts it again once archiving is on.
A cluster made afresh under the same name is told apart from the stanza's.

On a throwaway cluster of the test's own (Debian's cluster tools, as root, a free port);
the shared 15/main and 15/replica are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.config.test_drills import PG_VERSION, _drop_cluster, _free_port

pytestmark = pytest.mark.slow

BASE_DIR = Path(settings.BASE_DIR)


@dataclass
class Cluster:
    name: str
    port: int
    base: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PG_CLUSTER": self.name,
            "PG_PORT": str(self.port),
            "PGBACKREST_CONFIG": str(self.base / "pgbackrest.conf"),
            "BACKUP_DIR": str(self.base / "backup"),
            "MEDIA_ROOT": str(self.base / "media"),
        }

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def create(self) -> None:
        subprocess.run(
            ["pg_createcluster", PG_VERSION, self.name, "-p", str(self.port), "--start", "--",
             "--auth-local=trust", "--auth-host=trust"],
            check=True, capture_output=True,
        )  # fmt: skip


def _backup(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bin/backup", *args], cwd=BASE_DIR, env={**cluster.env, **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's cluster tools, as root (as bin/replica-up does)")
    if shutil.which("pgbackrest") is None:
        pytest.skip("pgbackrest is not installed (bin/install-system-deps)")
    # Not under pytest's tmp_path, whose parents the postgres user may not enter.
    base = Path(tempfile.mkdtemp(prefix="places-backup-setup-"))
    base.chmod(0o755)
    (base / "media").mkdir()
    (base / "media" / "upload.csv").write_text("id,name\n")
    cluster = Cluster(name=f"backup_setup{os.getpid()}", port=_free_port(), base=base)
    try:
        cluster.create()
        yield cluster
    finally:
        _drop_cluster(cluster.name)
        shutil.rmtree(base, ignore_errors=True)


def test_backup_restarts_a_cluster_in_use_only_when_told_and_only_once(cluster: Cluster):
    # given a running cluster without archiving, and a session on it (make run's web, say)
    with cluster.connect() as conn:
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        # when a backup is asked for
        refused = _backup(cluster, "backup", "full")
        # then it refuses with the reason and the two ways on, and restarted nothing: the
        # session still works, archiving is still off
        assert refused.returncode == 3, refused.stderr
        assert "1 x postgres" in refused.stderr
        assert "BACKUP_RESTART=1 make backup" in refused.stderr
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "off"
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started

    # when told to restart
    with cluster.connect() as conn:
        done = _backup(cluster, "backup", "full", BACKUP_RESTART="1")
        assert done.returncode == 0, done.stderr
        # then the session was cut, and archiving is on
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with cluster.connect() as conn:
        assert conn.execute("SHOW archive_mode").fetchone()[0] == "on"
        restarted = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        # when backed up again with a session connected
        again = _backup(cluster, "backup", "incr")
        # then it is backed up without any restart, the session unharmed
        assert again.returncode == 0, again.stderr
        assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == restarted
    info = _backup(cluster, "info")
    assert info.stdout.count("backup: ") == 2, info.stdout
    assert len(list((cluster.base / "backup" / "media").glob("2*"))) >= 1


def test_backup_names_a_cluster_made_afresh_under_the_stanza(cluster: Cluster):
    # given a stanza holding the cluster's backups
    assert _backup(cluster, "setup").returncode == 0
    # when the cluster is dropped and made again under the same name (a new system id)
    _drop_cluster(cluster.name)
    cluster.create()
    failed = _backup(cluster, "setup")
    # then setup says so and how to go on, instead of pgBackRest's bare error
    assert failed.returncode == 1
    assert "holds another cluster's backups" in failed.stderr
    assert f"mv {cluster.base / 'backup'} " in failed.stderr
