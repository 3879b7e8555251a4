"""Data versions remembered between the commits that move them, told by PostgreSQL.

Every cacheable map answer (viewport, tiles, the places list) is keyed on the data version
of what it shows (``places.selectors.data_version``), read from PostgreSQL per request: on a
cached answer under four clients that read was the one database round trip left, and with
it a cached answer reached 41 % of ``/health/live/``'s rate (issue 14).

The version tables move only at commit, in ``places_dataversion_commit`` and
``places_areaversion_commit`` (deferred triggers of the pending tables), which send ``NOTIFY
places_data_versions`` then; PostgreSQL delivers it after the commit and only if it commits.
Version rows deleted otherwise (a dataset deleted) notify by statement trigger. Each web
process (``config/wsgi.py`` calls ``start`` in every gunicorn worker) keeps one connection
listening on that channel in a thread of its own. Every notification moves the process's
*generation*; a version read under a generation is remembered for it, and a request that
finds one for the current generation spends no round trip. Other processes (Celery workers,
commands) never start it and read every version from PostgreSQL.

What it costs: a cached answer may be older than a commit by the notification's delivery,
milliseconds, instead of never. What keeps it safe:

- A version is remembered under the generation read *before* its query: a commit whose
  notification arrives while the query runs leaves the answer under a generation no one
  asks for any more, so an old version is never remembered as current.
- A notification waiting unread on the socket, or being read, withdraws trust until it is
  counted (the listener thread may be waiting for the GIL).
- A commit through Django's ``commit()`` (``transaction.atomic``) on any of the process's
  own connections makes it forget every remembered version at once (``config.database``):
  a process reads what it wrote in a transaction without waiting.
- Reads inside a transaction (which must see their own pending writes), reads of another
  database than ``default`` (a replica cannot LISTEN), and every read while the listener is
  not known to hear PostgreSQL go to PostgreSQL as before.
- The listener proves that it hears: every ``CHECK_SECONDS`` it notifies a channel of its
  own and waits for that notification to come back on its connection, which happens only
  after every notification committed before it; the same statement checks that it runs on
  the server session that holds both LISTENs. Without such a proof for ``TRUST_SECONDS``,
  or with the connection lost, remembering is off; a new connection moves the generation
  (notifications may have been missed while it was away).

A ``clear`` notification (``copies_clear_everywhere``) also empties every listening
process's copy of recent bodies (``places.serving.local_cache``): what ``cache.clear()``
does to Redis and to its own process, for all web processes at once.

``DATA_VERSION_LISTEN_URL`` names the database the thread listens on: empty for the
``default`` database's own settings, ``off`` to read every version from PostgreSQL. It must
name a session pool or PostgreSQL itself (``bin/prod`` and ``docker/compose.yaml`` do), never
a transaction pool: there the server session holding the LISTEN is lent to other clients,
who would get its notifications. The check catches that only when it runs (its statement
then lands on another session, or the LISTEN is gone), not between checks.

Loads that switch triggers off (``session_replication_role = replica``,
``pg_restore --disable-triggers``) send nothing: run ``NOTIFY places_data_versions`` after
them, or restart the web.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, connections

from config.database import base as database
from places.serving.local_cache import LOCAL_BODIES

logger = logging.getLogger(__name__)

CHANNEL = "places_data_versions"
CLEAR = "clear"
# The listening session's name in pg_stat_activity.
APPLICATION_NAME = "places version watch"
# How often the listener proves it hears PostgreSQL, and how old that proof may get before
# remembered versions are no longer trusted.
CHECK_SECONDS = 2.0
TRUST_SECONDS = 3 * CHECK_SECONDS
RETRY_SECONDS = 5.0
# Distinct (datasets, cells) keys remembered per process: each is a few hundred bytes.
MEMO_SIZE = 4096


class VersionWatch:
    """One process's listener and the versions it remembers (see the module docstring)."""

    def __init__(
        self,
        *,
        connect: Callable[[], psycopg.Connection],
        check_seconds: float = CHECK_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._connect = connect
        self.check_seconds = check_seconds
        self.trust_seconds = TRUST_SECONDS * check_seconds / CHECK_SECONDS
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple[int, Hashable], str] = OrderedDict()
        self.generation = 0
        # The listening connection's socket, and time.monotonic() as of which every
        # notification committed earlier has been counted: both None while not listening.
        self._fd: int | None = None
        self._alive_at: float | None = None
        # True while the listener reads from its socket: what it read is not counted yet.
        self._busy = False
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()
        # Notifications psycopg read while the listener's own statement ran.
        self._received: list[tuple[str, str]] = []

    # --- the request side -----------------------------------------------------------------

    def trusted(self) -> bool:
        """Whether this process's remembered versions (and copies of bodies) may be used
        now: its listener runs and has counted every notification PostgreSQL sent it.

        The order matters: the socket, then the reading, then the proof, which the listener
        withdraws before it lets go of the socket (its number may then be reused).
        """
        if self._pid != os.getpid():
            return False  # never started in this process (or inherited by a fork)
        fd = self._fd
        if fd is None:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if poller.poll(0) or self._busy:
            return False
        alive = self._alive_at
        return alive is not None and time.monotonic() - alive <= self.trust_seconds

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

    def forget(self) -> None:
        """Forget every remembered version: this process has just committed, or PostgreSQL
        told of a commit."""
        with self._lock:
            self.generation += 1
            self._memo.clear()

    # --- the listening thread -------------------------------------------------------------

    def start(self) -> None:
        """Start listening in this process (a web process, once Django is set up)."""
        if self._pid == os.getpid():
            return
        old = self._thread
        if old is not None and old.is_alive() and old.ident is not None:
            # A thread stopped in this process that has not ended yet: two would share the
            # fields below. (A forked child inherits the object, never the thread.)
            old.join(timeout=10)
            if old.is_alive():
                logger.warning("data version listener still running; not started again")
                return
        # A forked child inherits the parent's state and maybe a held lock, not its thread.
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._memo.clear()
        self._fd = self._alive_at = None
        self._busy = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="places-version-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the listener; remembering is off until the next ``start``."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive():
                logger.warning("data version listener did not end within 10 s")
        with self._lock:
            self._pid = 0
            self._memo.clear()

    def _deaf(self) -> None:
        # Trust withdrawn first, then the socket's number: trusted() reads them the other way.
        with self._lock:
            self._alive_at = None
            self._fd = None
            self.generation += 1
            self._memo.clear()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Marks the listener busy while it reads; a failure leaves it deaf *before* it
        stops being busy, so no request trusts a socket that libpq may have closed."""
        self._busy = True
        try:
            yield
        except BaseException:
            self._deaf()
            raise
        finally:
            self._busy = False

    def _run(self) -> None:
        stopping = self._stopping
        while not stopping.is_set():
            conn = None
            try:
                conn = self._connect()
                conn.add_notify_handler(lambda n: self._received.append((n.channel, n.payload)))
                own = f"places_version_watch_{uuid.uuid4().hex[:16]}"
                # One simple query, so that both LISTENs and the pid are one server session's
                # even behind a pooler (whose own pid would differ from the server's).
                cursor = conn.execute(f"LISTEN {CHANNEL}; LISTEN {own}; SELECT pg_backend_pid()")
                while cursor.description is None and cursor.nextset():
                    pass
                server_pid = cursor.fetchone()[0]  # type: ignore[index]
                self._fd = conn.pgconn.socket
                self._listen(conn, own, server_pid, stopping)
            except Exception as exc:  # any failure: deaf, then a new connection
                self._deaf()
                logger.warning("data version listener lost (%s); retrying", exc)
            finally:
                self._deaf()
                self._received.clear()
                if conn is not None:
                    conn.close()
            stopping.wait(self.retry_seconds)

    def _listen(
        self, conn: psycopg.Connection, own: str, server_pid: int, stopping: threading.Event
    ) -> None:
        pgconn = conn.pgconn
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN)
        sent_at: float | None = None  # when the proof now awaited was asked for
        next_proof_at = time.monotonic()
        awaited = ""
        while not stopping.is_set():
            now = time.monotonic()
            if sent_at is None and now >= next_proof_at:
                # Ask for the proof: a notification to ourselves. It is committed after
                # every commit told before it, so it comes back after their notifications.
                # PostgreSQL may hand it back with the statement's own answer.
                awaited, sent_at = uuid.uuid4().hex, now
                with self._reading():
                    row = conn.execute(
                        "SELECT pg_backend_pid(), %s = ANY(ARRAY(SELECT pg_listening_channels())),"
                        " pg_notify(%s, %s)",
                        [CHANNEL, own, awaited],
                    ).fetchone()
                    if row is None or row[0] != server_pid or not row[1]:
                        # A transaction pool: this statement ran on another server session
                        # than the LISTEN, or on one that no longer listens.
                        raise psycopg.OperationalError("the listener's session moved")
                    if self._count(pgconn, own, awaited, sent_at):
                        next_proof_at, sent_at = sent_at + self.check_seconds, None
                continue
            if sent_at is not None and now - sent_at > self.trust_seconds:
                raise psycopg.OperationalError("the listener's own notification never came back")
            deadline = next_proof_at if sent_at is None else sent_at + self.trust_seconds
            if not poller.poll(max(0.0, min(deadline - now, self.check_seconds)) * 1000):
                continue
            with self._reading():
                pgconn.consume_input()
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the listening connection closed")
                if self._count(pgconn, own, awaited, sent_at):
                    next_proof_at = (sent_at or now) + self.check_seconds
                    sent_at = None

    def _count(
        self, pgconn: psycopg.pq.abc.PGconn, own: str, awaited: str, sent_at: float | None
    ) -> bool:
        """Count the notifications read so far (by psycopg during a statement, and on the
        socket); True when the awaited proof was among them."""
        received, self._received = self._received, []
        while (notify := pgconn.notifies()) is not None:
            received.append((notify.relname.decode(), notify.extra.decode()))
        proved = False
        for channel, payload in received:
            if channel == own:
                proved = proved or (sent_at is not None and payload == awaited)
                continue
            if payload == CLEAR:
                LOCAL_BODIES.clear()
            self.forget()
        if proved:
            if self._alive_at is None:
                self.forget()  # the first proof on a connection: before it, nothing was told
            with self._lock:
                self._alive_at = sent_at
        return proved


def _listen_connection(
    connection_class: type[psycopg.Connection] = psycopg.Connection,
) -> psycopg.Connection:
    """A connection of its own, autocommit, to the database ``DATA_VERSION_LISTEN_URL``
    names (the ``default`` database's settings when empty)."""
    url = settings.DATA_VERSION_LISTEN_URL
    default = connections["default"].get_connection_params()
    if url:
        from config.env import env

        config = env.db_url_config(url)
        params: dict[str, Any] = {
            "dbname": config.get("NAME"),
            "user": config.get("USER") or default.get("user"),
            "password": config.get("PASSWORD") or default.get("password"),
            "host": config.get("HOST") or None,
            "port": config.get("PORT") or None,
            **config.get("OPTIONS", {}),
        }
        params = {k: v for k, v in params.items() if v not in (None, "")}
    else:
        params = {
            k: v
            for k, v in default.items()
            if k not in {"cursor_factory", "context", "server_side_binding", "prepare_threshold"}
        }
    params.setdefault("connect_timeout", 5)
    params["application_name"] = APPLICATION_NAME
    # Keepalives find a peer that vanished without a word while nothing is being sent.
    # A statement whose bytes are never acknowledged (the network gone) fails after 10 s
    # instead of the kernel's quarter of an hour, and the thread connects anew.
    params.update(
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=2,
        tcp_user_timeout=10_000,
    )
    return connection_class.connect(**params, autocommit=True)


WATCH = VersionWatch(connect=_listen_connection)
database.AFTER_COMMIT.append(WATCH.forget)


def enabled() -> bool:
    """Whether this deployment remembers versions (``DATA_VERSION_LISTEN_URL`` not off)."""
    return settings.DATA_VERSION_LISTEN_URL != "off"


def start() -> None:
    """Listen in this process when the settings allow it (``config/wsgi.py``)."""
    if enabled():
        WATCH.start()


def copies_clear_everywhere() -> None:
    """Every listening web process empties its copy of recent bodies (and forgets its
    versions) once this commits."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, CLEAR])
