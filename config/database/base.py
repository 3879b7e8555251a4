"""PostGIS with django-prometheus's query metrics, and a cheaper connection health check.

Django's ``CONN_HEALTH_CHECKS`` sends ``SELECT 1`` before the first query of every request
that reuses a persistent connection: a whole round trip, 16 % of a gunicorn worker's wall
time on cached map answers under four clients (py-spy, issue 14).

A connection the server has closed (a restart, a failover, ``pg_terminate_backend``,
``idle_session_timeout``, PgBouncer in session mode losing its server) has something to read
on its socket: the server's FATAL message, then the end of the stream. A live connection
between two requests has nothing to read. So the check first polls the socket, without
waiting, and spends Django's round trip (which closes a dead connection, so that Django
opens a new one for the query) only when:

- the socket has something to read, or cannot be polled;
- the connection is not idle between transactions;
- it went unused for more than ``IDLE_CHECK_SECONDS``. A NAT or load balancer that forgets
  an idle flow silently answers the next packet with a reset: only a round trip finds that
  out before the request's own query does. Under load connections are never that idle.

After an error in a request Django still asks with a round trip (``is_usable``), as before.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable

import psycopg
from django_prometheus.db.backends.postgis import base

# Longer idle than this and the check is Django's round trip, whatever the socket says.
IDLE_CHECK_SECONDS = 10.0

# Called after every commit on any connection of this process. places.version_watch adds
# one: a process must read its own writes at once, not when PostgreSQL's notification of
# them arrives.
AFTER_COMMIT: list[Callable[[], None]] = []


class DatabaseWrapper(base.DatabaseWrapper):
    health_check_enabled: bool
    health_check_done: bool
    # When a cursor was last asked for on this connection (time.monotonic()); None: never.
    _last_cursor_at: float | None = None

    def close_if_health_check_failed(self) -> None:
        # Django calls this before every cursor (and set_autocommit): the time between two
        # calls is how long the connection sat unused, a request's query time included.
        now = time.monotonic()
        last, self._last_cursor_at = self._last_cursor_at, now
        if self.connection is None or not self.health_check_enabled or self.health_check_done:
            return
        if last is not None and now - last <= IDLE_CHECK_SECONDS and self._quiet():
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def close(self) -> None:
        super().close()
        self._last_cursor_at = None

    def commit(self) -> None:
        super().commit()
        for hook in AFTER_COMMIT:
            hook()

    def _quiet(self) -> bool:
        """Whether the connection sits idle between transactions with nothing from the
        server waiting on its socket (see the module's docstring)."""
        try:
            if self.connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                return False
            poller = select.poll()
            poller.register(self.connection.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (psycopg.Error, OSError, ValueError):
            return False
