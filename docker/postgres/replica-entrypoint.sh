#!/bin/bash
# The streaming replica: on its first start, a base backup of the primary with its own slot
# (pg_basebackup -R writes the standby settings); then PostgreSQL as a hot standby. A data
# directory that exists is started as it is: to rebuild, remove the volume (runbook).
set -euo pipefail
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGPASSWORD="$REPLICATION_PASSWORD"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h "$PRIMARY_HOST" -p 5432 -q; do sleep 1; done
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  # The slot outlives a replica whose volume was removed: reuse it rather than fail.
  create=(-C)
  if [ "$(psql -h "$PRIMARY_HOST" -U replicator -d postgres -tAc \
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'places_replica'")" = 1 ]; then
    create=()
  fi
  gosu postgres pg_basebackup -h "$PRIMARY_HOST" -p 5432 -U replicator -D "$PGDATA" \
    -R -X stream "${create[@]}" -S places_replica -c fast
  # The replica does not archive: the primary's WAL is archived once, by the primary.
  echo "archive_mode = off" >> "$PGDATA/postgresql.auto.conf"
fi
exec gosu postgres postgres -D "$PGDATA" -c hot_standby=on -c hot_standby_feedback=on
