"""Database routing: the primary takes all ORM traffic; the replica only explicit reads.

Analytics selectors read with ``.using("replica")`` on purpose, so that the map never waits
behind a heavy aggregate. Nothing is ever migrated or written through the replica alias.
"""

from __future__ import annotations

from typing import Any

REPLICA = "replica"


class PrimaryReplicaRouter:
    def db_for_read(self, model: type, **hints: Any) -> str:
        return "default"

    def db_for_write(self, model: type, **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db != REPLICA
