"""A node's contact with the server: heartbeats, and the sweep that marks quiet nodes silent."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from ingestion.edge.models import EdgeNode, NodeStatus

BIGINT_MAX = 2**63 - 1
SOFTWARE_VERSION_MAX = EdgeNode._meta.get_field("software_version").max_length or 64


class HeartbeatInvalid(ValueError):
    """A heartbeat field the database could not hold (HTTP 400 naming ``field``)."""

    code = "invalid"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


MARK_SILENT = f"""
UPDATE {EdgeNode._meta.db_table} SET status = %s
WHERE status = %s AND COALESCE(last_seen_at, created_at) < %s
RETURNING id
"""  # nosec B608 # table name is a constant; values are bound

# A silent node that makes contact is active again; a disabled one stays disabled.
REACTIVATE = Case(
    When(status=NodeStatus.SILENT, then=Value(NodeStatus.ACTIVE.value)), default=F("status")
)


def edge_node_heartbeat(
    *,
    node: EdgeNode,
    software_version: str | None,
    queue_depth: int | None,
    disk_free_bytes: int | None,
    clock: dt.datetime | None,
) -> dict[str, Any]:
    """Record what the node reports (fields it leaves out keep their last value) and that it
    was in contact; answer the server's time, the node's clock offset and its status.

    The offset is the device's clock minus the server's at receipt (positive: ahead), so it
    includes the request's transit time (one way, typically milliseconds).
    """
    now = timezone.now()
    changes: dict[str, Any] = {"last_heartbeat_at": now, "last_seen_at": now}
    if software_version is not None:
        if len(software_version) > SOFTWARE_VERSION_MAX:
            raise HeartbeatInvalid(
                "software_version",
                f"software_version must be at most {SOFTWARE_VERSION_MAX} characters.",
            )
        changes["software_version"] = software_version
    for field, value in (("queue_depth", queue_depth), ("disk_free_bytes", disk_free_bytes)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= BIGINT_MAX:
            raise HeartbeatInvalid(field, f"{field} must be a whole number from 0 to 2^63-1.")
        changes[field] = value
    offset: float | None = None
    if clock is not None:
        if timezone.is_naive(clock):
            raise HeartbeatInvalid("clock", "clock must carry a zone (Z or an offset).")
        offset = round((clock - now).total_seconds(), 3)
        changes["clock_offset_seconds"] = offset
    EdgeNode.objects.filter(pk=node.pk).update(status=REACTIVATE, **changes)
    node.refresh_from_db(fields=["status", *changes])
    return {
        "server_time": now.astimezone(dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "clock_offset_seconds": offset,
        "status": node.status,
    }


def edge_node_seen(*, node: EdgeNode, now: dt.datetime) -> None:
    """Record contact from ``node`` at ``now`` (any authenticated request): its last-seen
    time moves forward and a silent node is active again (a disabled one stays disabled)."""
    EdgeNode.objects.filter(pk=node.pk).filter(
        Q(last_seen_at__isnull=True) | Q(last_seen_at__lt=now)
    ).update(last_seen_at=now, status=REACTIVATE)
    node.last_seen_at = now
    if node.status == NodeStatus.SILENT:
        node.status = NodeStatus.ACTIVE


def edge_nodes_silent_mark(*, silent_after: dt.timedelta) -> list[int]:
    """Mark active nodes silent when no contact (any request of theirs: a heartbeat, a
    batch, a pull) came for ``silent_after`` (a node never heard from counts from its
    creation). PostgreSQL re-checks the condition on a row that a contact updates
    meanwhile, so that node stays active. Returns the ids marked."""
    cutoff = timezone.now() - silent_after
    with connection.cursor() as cursor:
        cursor.execute(MARK_SILENT, [NodeStatus.SILENT.value, NodeStatus.ACTIVE.value, cutoff])
        return sorted(row[0] for row in cursor.fetchall())
