"""Data versions remembered between the commits that move them, told by PostgreSQL.

Every cacheable map answer (viewport, tiles, the places list) is keyed on the data version
of what it shows (``places.selectors.data_version``), read from PostgreSQL per request: on a
cached answer under four clients that read was the one database round trip left, and with
it a cached answer reached 41 % of ``/health/live/``'s rate (issue 14).

The version tables move only at commit (``places_dataversion_commit`` and
``places_areaversion_commit``), and a statement trigger on each (``places_versions_notify``)
sends ``NOTIFY places_data_versions`` then, which PostgreSQL delivers after the commit and
only if it commits. Each web process keeps one connection listening on that channel in a
thread of its own. Every notification moves the process's *generation*; a version read
under a generation is remembered for it, and a request that finds one for the current
generation spends no round trip.

What it costs: a cached answer may be older than a commit by the notification's delivery,
milliseconds, instead of never. What keeps it safe:

- A version is remembered under the generation read *before* its query: a commit whose
  notification arrives while the query runs leaves the answer under a generation no one
  asks for any more, so an old version is never remembered as current.
- A commit through any of the process's own connections makes it forget every remembered
  version at once (``config.database``): a process reads its own writes without waiting.
- Reads inside a transaction (which must see their own pending writes), reads of another
  database than ``default`` (a replica cannot LISTEN), and every read while the listening
  connection is not known to be alive go to PostgreSQL as before.
- The listening connection is checked with a round trip every ``CHECK_SECONDS``; a failed
  check, a lost connection or a missed check (the thread stalled) turns remembering off
  until it is back, and its return moves the generation (notifications may have been missed
  while it was away).

``DATA_VERSION_LISTEN_URL`` names the database the thread listens on: empty for the
``default`` database's own settings, ``off`` to read every version from PostgreSQL. Behind
PgBouncer's transaction pool, where a LISTEN does not survive the transaction, it must name
a session pool or PostgreSQL itself (``bin/prod`` and the Helm chart do).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections

from config.database import base as database

logger = logging.getLogger(__name__)

CHANNEL = "places_data_versions"
# The listening session's name in pg_stat_activity.
APPLICATION_NAME = "places version watch"
# How often the listening connection proves it is alive, and how stale that proof may get
# before remembered versions are no longer trusted.
CHECK_SECONDS = 2.0
TRUST_SECONDS = 3 * CHECK_SECONDS
RETRY_SECONDS = 5.0
# Distinct (datasets, cells) keys remembered per process: each is a few hundred bytes.
MEMO_SIZE = 4096


class VersionWatch:
    """One process's listener and the versions it remembers (see the module docstring)."""

    def __init__(self, *, connect: Callable[[], psycopg.Connection]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple[int, Hashable], str] = OrderedDict()
        self.generation = 0
        # The listening connection's socket, and time.monotonic() of the last proof that it
        # is alive and listening: both None while it is not.
        self._fd: int | None = None
        self._alive_at: float | None = None
        # True while the listener reads from its socket: what it read is not counted yet.
        self._busy = False
        self._told = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()

    # --- the request side -----------------------------------------------------------------

    def trusted(self) -> bool:
        """Whether remembered versions may be used now, starting the listener if this
        process has none yet (a forked gunicorn worker starts its own).

        Not while a notification waits on the socket or is being read: the listener thread
        may not have run since it arrived (the GIL), and the request must not be the one
        that answers from before it. The order matters: the socket, then the reading, then
        the proof of life, which is withdrawn before the socket is closed.
        """
        if self._pid != os.getpid():
            self._start()
            return False
        fd = self._fd
        if fd is None:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        if poller.poll(0) or self._busy:
            return False
        alive = self._alive_at
        return alive is not None and time.monotonic() - alive <= TRUST_SECONDS

    def version(self, key: Hashable, read: Callable[[], str]) -> str:
        """The version under ``key`` remembered for the current generation, or ``read()``'s,
        then remembered under the generation seen before reading."""
        if not self.trusted():
            return read()
        generation = self.generation
        with self._lock:
            found = self._memo.get((generation, key))
            if found is not None:
                self._memo.move_to_end((generation, key))
                return found
        value = read()
        with self._lock:
            if generation == self.generation:
                self._memo[(generation, key)] = value
                if len(self._memo) > MEMO_SIZE:
                    self._memo.popitem(last=False)
        return value

    # --- the listening thread -------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # A forked child inherits the parent's memo and state but not its thread.
            self._pid = os.getpid()
            self._memo.clear()
            self._fd = self._alive_at = None
            self._busy = False
            self._stopping = threading.Event()
            self._thread = threading.Thread(
                target=self._run, name="places-version-watch", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """End the listener (tests); remembering is off until the next ``trusted()``."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        with self._lock:
            self._pid = 0
            self._memo.clear()

    def forget(self) -> None:
        """Forget every remembered version: this process has just committed."""
        with self._lock:
            self.generation += 1
            self._memo.clear()

    def _moved(self, *, alive: bool) -> None:
        with self._lock:
            self.generation += 1
            self._memo.clear()
            self._alive_at = time.monotonic() if alive else None

    def _on_notify(self, _notify: psycopg.Notify) -> None:
        # Notifications psycopg reads while the listener's own query runs.
        self._told = True

    def _run(self) -> None:
        stopping = self._stopping
        while not stopping.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.add_notify_handler(self._on_notify)
                conn.execute(f"LISTEN {CHANNEL}")
                self._fd = conn.pgconn.socket
                # Anything committed before the LISTEN was never told: start afresh.
                self._moved(alive=True)
                self._listen(conn, stopping)
            except Exception as exc:  # any failure means: stop trusting, then reconnect
                logger.warning("data version listener lost (%s); retrying", exc)
            finally:
                # No longer trusted before the socket closes: its number may be reused.
                self._moved(alive=False)
                self._fd = None
                if conn is not None:
                    conn.close()
            stopping.wait(RETRY_SECONDS)

    def _listen(self, conn: psycopg.Connection, stopping: threading.Event) -> None:
        pgconn = conn.pgconn
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
        checked_at = time.monotonic()
        while not stopping.is_set():
            ready = poller.poll(CHECK_SECONDS * 1000)
            if ready:
                self._busy = True
                try:
                    pgconn.consume_input()
                    told = False
                    while pgconn.notifies() is not None:
                        told = True
                    if pgconn.status != psycopg.pq.ConnStatus.OK:
                        raise psycopg.OperationalError("the listening connection closed")
                    if told:
                        self._moved(alive=True)
                finally:
                    self._busy = False
            if time.monotonic() - checked_at >= CHECK_SECONDS:
                # A round trip proves the connection alive: a peer that vanished without a
                # word leaves the socket silent, not readable.
                self._busy = True
                try:
                    self._told = False
                    conn.execute("SELECT 1")
                    if self._told:
                        self._moved(alive=True)
                    with self._lock:
                        self._alive_at = checked_at = time.monotonic()
                finally:
                    self._busy = False


def _listen_connection() -> psycopg.Connection:
    """A connection of its own, autocommit, to the database ``DATA_VERSION_LISTEN_URL``
    names (the ``default`` database's settings when empty)."""
    params: dict[str, Any] = connections["default"].get_connection_params()
    url = settings.DATA_VERSION_LISTEN_URL
    if url:
        from config.env import env

        config = env.db_url_config(url)
        for param, name in (
            ("dbname", "NAME"),
            ("user", "USER"),
            ("password", "PASSWORD"),
            ("host", "HOST"),
            ("port", "PORT"),
        ):
            if config.get(name):
                params[param] = config[name]
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("server_side_binding", None)
    params.pop("prepare_threshold", None)
    params.setdefault("connect_timeout", 5)
    params["application_name"] = APPLICATION_NAME
    # Keepalives find a peer that vanished without a word while nothing is being sent.
    params.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=2)
    return psycopg.connect(**params, autocommit=True)


WATCH = VersionWatch(connect=_listen_connection)
database.AFTER_COMMIT.append(WATCH.forget)


def enabled() -> bool:
    """Whether this deployment remembers versions (``DATA_VERSION_LISTEN_URL`` not off)."""
    return settings.DATA_VERSION_LISTEN_URL != "off"
