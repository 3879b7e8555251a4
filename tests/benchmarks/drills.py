#!/usr/bin/env python
"""The disaster-recovery drills of ``tests/config/test_drills.py`` timed on a database of a
million places (issue 19: how the figures scale), on clusters of the script's own:

- **backup**: a full backup with pgBackRest (``bin/backup backup full``), then an
  incremental one after an import; sizes of the database and of the repository;
- **point-in-time recovery**: import, note T (counts and checksums of places and change
  log), import more, ``bin/backup restore T`` into a fresh cluster; RTO is the restore's wall
  time, RPO the newest archived WAL's age when the primary is "lost"; the restored state must
  equal T's;
- **failover**: a streaming replica (``bin/replica-up``, timed: a base backup of the whole
  database), commits waiting for it, PgBouncer in front, a client writing through it; the
  primary stopped hard, ``bin/failover``; downtime to the next acknowledged write, every
  acknowledged write on the new primary; then a new replica of the new primary (timed).

The million places and their change-log rows are generated with SQL (``generate_series``
into the migrated schema, triggers off), not imported: the importer's speed is measured
elsewhere (``imports.py``), and SQL makes them in a minute. The imports around T go through the real
importer (``manage.py import_places --sync``).

Never the shared clusters: a primary ``15/drillbench_p`` on DRILL_PORT (5494) and, from it,
a standby (5495), a restored copy (5496), a rebuilt replica (5497) and PgBouncer (6494),
under ``/var/tmp/places-drills-bench`` (pgBackRest repository, uploads); all removed at the
end (``--keep`` keeps them). Needs root, Debian's cluster tools, pgBackRest and PgBouncer
(``bin/install-system-deps``); about 8 GB of disk for a million places.

    .venv/bin/python tests/benchmarks/drills.py [--places 1000000]

Results: ``tests/benchmarks/results/drills.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

RESULTS = Path(__file__).with_name("results")
# Under /var/tmp, not pytest's or a user's temporary folder: the postgres user must enter it.
BASE = Path("/var/tmp/places-drills-bench")  # noqa: S108 (root's own, removed first and last)
PRIMARY, STANDBY, RESTORED, REBUILT = (
    "drillbench_p",
    "drillbench_s",
    "drillbench_r",
    "drillbench_t",
)
PORTS = {PRIMARY: 5494, STANDBY: 5495, RESTORED: 5496, REBUILT: 5497}
BOUNCER_PORT = 6494
BATCH = 100_000

# One batch of generated places and their 'create' change-log rows, shaped as the importer
# writes them (a change per field; no source values: the file's row, which only an import of
# the same source compares with). Deterministic in the place number.
GENERATE_SQL = """
WITH made AS (
  INSERT INTO places_place (source_key, name, religion, religion_raw, denominations,
      denomination_raw, location, tags, start_date_raw, end_date_raw, status, dataset_id)
  SELECT 'g' || i, kind || ' ' || i, religion, religion, '{}', '',
         ST_SetSRID(ST_MakePoint(lon, lat), 4326), '{}', '', '', 'active', %(dataset)s::bigint
  FROM (
    SELECT i,
           (ARRAY['Church', 'Mosque', 'Temple', 'Synagogue', 'Chapel', 'Shrine'])[1 + i %% 6]
             AS kind,
           (ARRAY['christian', 'muslim', 'hindu', 'jewish', 'christian', 'unknown'])[1 + i %% 6]
             AS religion,
           round((-180 + (i * 7919 %% 360000) / 1000.0)::numeric, 6)::float8 AS lon,
           round((-60 + (i * 104729 %% 135000) / 1000.0)::numeric, 6)::float8 AS lat
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
  ) AS g
  RETURNING id, name, religion, location
)
INSERT INTO places_placechange (operation, changes, place_version, source, device_id,
    comment, dataset_id, place_id)
SELECT 'create',
       jsonb_build_object('name', jsonb_build_object('new', name, 'old', null),
         'religion', jsonb_build_object('new', religion, 'old', null),
         'location', jsonb_build_object('new', ST_AsGeoJSON(location)::jsonb, 'old', null)),
       1, 'import', '', '', %(dataset)s::bigint, id
FROM made
"""

# Counts and order-free checksums (a sum of per-row hashes: a million rows' text joined into
# one string, as the test's checksum does, would not fit in memory).
STATE_SQL = """
SELECT row(
  (SELECT count(*) FROM places_place),
  (SELECT sum(('x' || left(md5(p::text), 15))::bit(60)::bigint) FROM places_place p),
  (SELECT count(*) FROM places_placechange),
  (SELECT sum(('x' || left(md5(c::text), 15))::bit(60)::bigint) FROM places_placechange c)
)::text
"""


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


def _say(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cluster_create(name: str, port: int) -> None:
    subprocess.run(
        ["pg_createcluster", "15", name, "-p", str(port), "--",
         "--auth-local=trust", "--auth-host=trust", "--data-checksums"],
        check=True, capture_output=True,
    )  # fmt: skip
    # A production-like WAL budget: a bulk load does not checkpoint every 1 GB.
    (Path(f"/etc/postgresql/15/{name}/conf.d") / "10-drill.conf").write_text(
        "listen_addresses = '127.0.0.1'\nmax_wal_size = '4GB'\nmaintenance_work_mem = '256MB'\n"
    )


def _replica_up(primary: str, replica: str) -> float:
    from tests.config.test_drills import _run, _scalar, _wait_for

    started = time.monotonic()
    _run(
        ["bin/replica-up"],
        env={
            **os.environ,
            "PRIMARY_CLUSTER": primary,
            "PRIMARY_PORT": str(PORTS[primary]),
            "REPLICA_CLUSTER": replica,
            "REPLICA_PORT": str(PORTS[replica]),
            "REPLICA_SLOT": f"{replica}_slot",
        },
        timeout=3600,
    )
    _wait_for(
        lambda: (
            _scalar(PORTS[replica], "SELECT status FROM pg_stat_wal_receiver", "postgres")
            == "streaming"
        ),
        timeout=120,
        what=f"{replica} to stream",
    )
    return _since(started)


def _cleanup() -> None:
    from tests.config.test_drills import _drop_cluster

    for name in (PRIMARY, STANDBY, RESTORED, REBUILT):
        _drop_cluster(name)
    pid = BASE / "pgbouncer.pid"
    if pid.exists():
        subprocess.run(["kill", "-TERM", pid.read_text().strip()], check=False)
    shutil.rmtree(BASE, ignore_errors=True)


def _generate(drill: Any, places: int) -> dict[str, Any]:
    """The dataset (through the app), then ``places`` places and their change-log rows."""
    from tests.config.test_drills import _connect, _run

    dataset = _run(
        [sys.executable, "manage.py", "shell", "-c",
         "from places.services import dataset_get_or_create; "
         "print(dataset_get_or_create(slug='generated').pk)"],
        env=drill.app_env(),
    ).split()[-1]  # fmt: skip
    started = time.monotonic()
    with _connect(drill.port) as conn:
        # Triggers off for the load: they keep the cache's data and area versions (a
        # deferred check per touched map cell at each commit: 20,000 places spread over the
        # world took 43 s with them, 1 s without) and check references this SQL gets right.
        conn.execute("SET session_replication_role = replica")
        for first in range(1, places + 1, BATCH):
            last = min(places, first + BATCH - 1)
            conn.execute(GENERATE_SQL, {"dataset": int(dataset), "first": first, "last": last})
            _say(f"  generated places {first:,}-{last:,}")
        conn.execute("ANALYZE")
    return {"generate_seconds": _since(started)}


def run(places: int) -> dict[str, Any]:
    from tests.config.test_drills import (
        Drill,
        Writer,
        _archived_through_now,
        _connect,
        _run,
        _scalar,
        _wait_for,
    )

    BASE.mkdir(parents=True)
    BASE.chmod(0o755)
    shutil.chown(BASE, "postgres", "postgres")
    (BASE / "media").mkdir()
    drill = Drill(base=BASE, primary=PRIMARY, port=PORTS[PRIMARY])
    result: dict[str, Any] = {"places": places, "started": datetime.now(UTC).isoformat()}

    _say(f"primary {PRIMARY} on {drill.port}, archiving through bin/backup; the schema")
    _cluster_create(PRIMARY, drill.port)
    _run(["bin/backup", "setup"], env=drill.backup_env)
    _run([sys.executable, "bin/ensure-database"], env=drill.app_env())
    _run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], env=drill.app_env())
    _say(f"{places:,} places and change-log rows, with SQL")
    result |= _generate(drill, places)
    _archived_through_now(drill.port)
    result["database_bytes"] = _scalar(drill.port, "SELECT pg_database_size('places')")
    result["cluster_bytes"] = _scalar(
        drill.port, "SELECT sum(pg_database_size(datname))::bigint FROM pg_database"
    )

    # Backups: a full one, then an incremental one after an import of 1,000 places.
    _say("full backup")
    started = time.monotonic()
    _run(["bin/backup", "backup", "full"], env=drill.backup_env, timeout=7200)
    result["backup_full_seconds"] = _since(started)
    result["repo_bytes_after_full"] = _dir_bytes(BASE / "backup" / "repo")
    drill.import_places("batch-a.csv", [(f"d{i}", f"Chapel {i}") for i in range(1000)])
    _say("incremental backup")
    started = time.monotonic()
    _run(["bin/backup", "backup", "incr"], env=drill.backup_env, timeout=7200)
    result["backup_incr_seconds"] = _since(started)

    # Point-in-time recovery to T, between two imports.
    _say("PITR: import, T, import more, restore to T")
    drill.import_places(
        "batch-b.csv",
        [(f"d{i}", f"Chapel {i} (renamed)") for i in range(300)]
        + [(f"d{i}", f"Hall {i}") for i in range(1000, 1500)],
    )
    _run(["bin/backup", "media"], env=drill.backup_env)
    at_t = _scalar(drill.port, STATE_SQL)
    target = _scalar(drill.port, "SELECT now()::text")
    drill.import_places(
        "batch-c.csv",
        [(f"d{i}", f"Chapel {i} (again)") for i in range(200)]
        + [(f"d{i}", f"Hall {i}") for i in range(1500, 2000)],
    )
    rpo = _scalar(
        drill.port,
        "SELECT extract(epoch FROM now() - last_archived_time)::float8 FROM pg_stat_archiver",
        "postgres",
    )
    result["rpo_seconds"] = round(rpo, 1)
    _archived_through_now(drill.port)
    started = time.monotonic()
    output = _run(
        ["bin/backup", "restore", target],
        env={
            **drill.backup_env,
            "RESTORE_CLUSTER": RESTORED,
            "RESTORE_PORT": str(PORTS[RESTORED]),
            "RESTORE_MEDIA_ROOT": str(BASE / "restored-media"),
        },
        timeout=7200,
    )
    result["restore_rto_seconds"] = _since(started)
    result["restore_reported_seconds"] = float(output.split("RESTORE_SECONDS=")[1].split()[0])
    restored = _scalar(PORTS[RESTORED], STATE_SQL)
    result["restore_matches_t"] = restored == at_t
    if restored != at_t:
        raise SystemExit(f"restored state {restored} differs from T's {at_t}")
    from tests.config.test_drills import _drop_cluster

    _drop_cluster(RESTORED)  # its disk is needed for the replicas

    # Failover through PgBouncer, with synchronous commits to the standby.
    _say("failover: a standby (base backup), PgBouncer, a writer, a hard stop")
    result["replica_build_seconds"] = _replica_up(PRIMARY, STANDBY)
    (Path(f"/etc/postgresql/15/{PRIMARY}/conf.d") / "20-sync.conf").write_text(
        "synchronous_standby_names = '*'\n"
    )
    _scalar(drill.port, "SELECT pg_reload_conf()", "postgres")
    ini = _run(
        ["bin/pgbouncer-conf", "--dir", str(BASE), "--listen-port", str(BOUNCER_PORT),
         "--primary-port", str(drill.port)],
        env=dict(os.environ),
    ).strip()  # fmt: skip
    subprocess.run(["runuser", "-u", "postgres", "--", "pgbouncer", "-d", ini], check=True)
    _wait_for(lambda: (BASE / "pgbouncer.pid").exists(), timeout=10, what="pgbouncer")
    with _connect(BOUNCER_PORT) as conn:
        conn.execute("CREATE TABLE drill_ack (n int PRIMARY KEY)")
    drill.import_places(
        "batch-d.csv",
        [(f"d{i}", f"Mission {i}") for i in range(2000, 2100)],
        port=BOUNCER_PORT,
        dbname="places_session",
    )
    acknowledged = _scalar(BOUNCER_PORT, STATE_SQL)
    writer = Writer(BOUNCER_PORT)
    writer.start()
    _wait_for(lambda: len(writer.acknowledged) >= 20, timeout=60, what="the writer's rows")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", "15", PRIMARY, "stop", "-m", "immediate"],
        check=True, capture_output=True,
    )  # fmt: skip
    stopped = time.monotonic()
    _run(
        ["bin/failover"],
        env={**drill.backup_env, "OLD_CLUSTER": PRIMARY, "NEW_CLUSTER": STANDBY,
             "PGBOUNCER_INI": ini},
        timeout=600,
    )  # fmt: skip
    _wait_for(
        lambda: any(at > stopped for _, at in writer.acknowledged),
        timeout=120,
        what="a write acknowledged after the failover",
    )
    result["failover_downtime_seconds"] = round(
        min(at for _, at in writer.acknowledged if at > stopped) - stopped, 2
    )
    writer.stop.set()
    writer.join(timeout=10)
    new_primary = PORTS[STANDBY]
    with _connect(new_primary) as conn:
        kept = {row[0] for row in conn.execute("SELECT n FROM drill_ack")}
    lost = {n for n, _ in writer.acknowledged} - kept
    state_after = _scalar(new_primary, STATE_SQL)
    result["failover_acknowledged_writes"] = len(writer.acknowledged)
    result["failover_lost_writes"] = len(lost)
    result["failover_import_kept"] = state_after == acknowledged
    if lost or state_after != acknowledged:
        raise SystemExit(f"failover lost {len(lost)} writes; state {state_after} != {acknowledged}")
    _say("a replica of the new primary")
    result["replica_rebuild_seconds"] = _replica_up(STANDBY, REBUILT)
    result["load_average"] = os.getloadavg()
    return result


def _markdown(r: dict[str, Any]) -> str:
    gib = 1024**3
    rows = [
        ("full backup (`bin/backup backup full`, zstd, 2 processes)",
         f"{r['backup_full_seconds']} s; repository {r['repo_bytes_after_full'] / gib:.2f} GiB"),
        ("incremental backup after a 1,000-place import", f"{r['backup_incr_seconds']} s"),
        ("restore to T into a new cluster (RTO)",
         f"{r['restore_rto_seconds']} s (bin/backup's own count "
         f"{r['restore_reported_seconds']} s); state equals T's: {r['restore_matches_t']}"),
        ("newest archived WAL's age at the loss (RPO)", f"{r['rpo_seconds']} s"),
        ("streaming replica built (`bin/replica-up`, a base backup)",
         f"{r['replica_build_seconds']} s"),
        ("failover downtime (hard stop to the next write through PgBouncer)",
         f"{r['failover_downtime_seconds']} s; {r['failover_acknowledged_writes']} writes "
         f"acknowledged, {r['failover_lost_writes']} lost"),
        ("replica of the new primary rebuilt", f"{r['replica_rebuild_seconds']} s"),
    ]  # fmt: skip
    table = "\n".join(f"| {step} | {value} |" for step, value in rows)
    return (
        f"# Disaster-recovery drills on {r['places']:,} places\n\n"
        f"Run {r['started']} (`tests/benchmarks/drills.py`); load average at the end "
        f"{r['load_average'][0]:.1f} on 2 cores. Places and change log generated with SQL in "
        f"{r['generate_seconds']} s. Database {r['database_bytes'] / gib:.2f} GiB (cluster "
        f"{r['cluster_bytes'] / gib:.2f} GiB).\n\n| step | time |\n|---|---|\n{table}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--places", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="Leave the clusters and files.")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("pg_createcluster") is None:
        raise SystemExit(
            "drills: run as root with Debian's cluster tools (bin/install-system-deps)"
        )
    import django

    django.setup()
    _cleanup()  # a run cut short earlier
    try:
        result = run(args.places)
    finally:
        if not args.keep:
            _cleanup()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drills.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "drills.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
