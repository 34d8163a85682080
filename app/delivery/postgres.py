"""Storing deliveries on PostgreSQL: each in its own transaction, on a pool kept for them.

The server takes concurrent writers as they come (row locks, its own WAL group commit), so
every delivery commits alone; a batch could hold several conferences' row locks at once and
deadlock with another instance's. The connections are in autocommit mode: a delivery is one
statement, its own transaction (``filing``), and one round trip; work that begins a
transaction of several statements is committed here. The pool has no ping at checkout: a
connection idle for ``IDLE_PING_S`` is pinged before use, and a failure that shows the
server went away retires every connection opened before it. A server that stops answering
without closing anything would hold the thread for as long as TCP waits: the
:class:`Watchdog` shuts the socket down once ``CONFHOOK_DELIVERY_WAIT_MS`` (and a grace) has
passed, and the delivery is a 503. Whatever fails rolls back that delivery alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.statements import Runner

log = logging.getLogger(__name__)

IDLE_PING_S = 5.0

T = TypeVar("T")


class Watch:
    __slots__ = ("cut", "deadline", "fd", "inode")

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.inode = _inode(fd)
        self.cut = False


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


class Watchdog:
    """Shuts down the socket of a connection whose deadline passed while it was watched.

    One thread per process, asleep until the earliest deadline; a delivery that is answered
    in time costs two lock turns and no wake-up (about 5 µs). A socket is shut down only
    while still watched, under the lock the watcher takes to stop watching, and only if its
    number still names the same socket: the driver closes the socket of a connection it
    finds lost, and the number may be another's by then.
    """

    def __init__(self, period_s: float) -> None:
        # With nothing to watch the thread still wakes every period_s, the time a watch
        # normally gets: a new watch's deadline is then no earlier than the next wake-up,
        # and needs no notify (each would cost a thread switch).
        self.period_s = period_s
        self.condition = threading.Condition(threading.Lock())
        self.watches: set[Watch] = set()
        self.wakes_at = 0.0  # when the thread wakes next, as far as it knows
        self.pid = 0  # the process whose thread it is: a fork has none
        self.wakes = 0  # how often the thread woke, for tests

    @contextlib.contextmanager
    def watch(self, fd: int, deadline: float) -> Iterator[Watch]:
        watch = Watch(fd, deadline)
        with self.condition:
            if self.pid != os.getpid():  # first, or after a fork
                threading.Thread(target=self._run, name="confhook-watchdog",
                                 daemon=True).start()
                self.pid = os.getpid()
            self.watches.add(watch)
            if deadline < self.wakes_at:
                self.condition.notify()
        try:
            yield watch
        finally:
            with self.condition:
                self.watches.discard(watch)

    def _run(self) -> None:
        with self.condition:
            while True:
                self.wakes += 1
                now = time.monotonic()
                for watch in [w for w in self.watches if w.deadline <= now]:
                    self.watches.discard(watch)
                    if watch.inode is not None and _inode(watch.fd) == watch.inode:
                        watch.cut = True
                        _shut_down(watch.fd)
                self.wakes_at = min((w.deadline for w in self.watches),
                                    default=now + self.period_s)
                self.condition.wait(self.wakes_at - now)


def _shut_down(fd: int) -> None:
    """Shut the socket ``fd`` down both ways (its owner still closes it): a thread waiting on
    it wakes with an end of file, and the server sees the connection end."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class PostgresStore:
    """Run a delivery's statements in one transaction on a connection of ``engine``'s pool,
    with the cursor the connection keeps for as long as it lives.

    The whole delivery waits at most ``wait_s`` (and a grace) for the server: the
    connection's checkout (``pool_timeout``), its ping if it has been idle, and the statements.
    """

    def __init__(self, engine: Engine, app_engine: Engine | None = None,
                 wait_s: float = 10.0) -> None:
        self.engine = engine
        self.wait_s = wait_s
        # A statement kept waiting by a row lock ends with the server's own lock_timeout (the
        # same wait) and leaves the connection as it is; the watchdog comes a little later,
        # for a server that answers nothing at all.
        self.grace_s = min(1.0, wait_s / 2)
        self.watchdog = Watchdog(wait_s)
        self.generation = 0  # bumped when a connection finds the server gone
        self.lock = threading.Lock()
        # Disposing of the app's engine (tests, shutdown) disposes of this one too.
        if app_engine is not None:
            event.listen(app_engine, "engine_disposed", lambda _engine: engine.dispose())

    def run(self, work: Callable[[Runner], T]) -> T:
        """``work(runner)``, each statement committed by itself until the work begins a
        transaction (:meth:`Runner.begin`), which is then committed; rolled back if it raises.

        Raises ``concurrent.futures.TimeoutError`` if the server kept it waiting past the
        deadline, as when no connection was free.
        """
        deadline = time.monotonic() + self.wait_s + self.grace_s
        connection = self._connection(deadline)
        driver = connection.driver_connection
        cursor = connection.info.get("cursor")
        if cursor is None or cursor.connection is not driver:  # one per connection, kept
            cursor = connection.info["cursor"] = Runner.new_cursor(driver, self.engine.dialect)
        run = Runner(driver, self.engine.dialect, autocommit=True, cursor=cursor)
        watch: Watch | None = None
        try:
            with self.watchdog.watch(self._fd(connection), deadline) as watch:
                result = work(run)
                if run.began:
                    run.driver_sql("COMMIT")
            if watch.cut:  # committed just as its time ran out: stored, the connection done
                connection.invalidate()
            return result
        except DBAPIError as exc:
            if exc.connection_invalidated:
                with self.lock:
                    self.generation += 1
                connection.invalidate(exc)
            if watch is not None and watch.cut:
                log.warning("delivery: the database did not answer within %d ms; its "
                            "connection was closed", (self.wait_s + self.grace_s) * 1000)
                raise FuturesTimeout("the database did not answer in time") from exc
            raise
        finally:
            run.close()
            if connection.is_valid:
                connection.info["used"] = time.monotonic()
            connection.close()  # back to the pool, rolled back if need be

    @staticmethod
    def _fd(connection: Any) -> int:
        try:
            return int(connection.driver_connection.pgconn.socket)
        except Exception:  # lost already (no socket): its first statement fails at once
            return -1

    def _connection(self, deadline: float) -> Any:
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        while True:
            try:
                connection = self.engine.raw_connection()
            except dbapi_error as exc:  # as SQLAlchemy would raise it from a session
                raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
            except PoolTimeout:
                # Every connection busy for CONFHOOK_DELIVERY_WAIT_MS: answered as the SQLite
                # writer's wait is, a 503 database_busy.
                raise FuturesTimeout("no connection free for the delivery") from None
            info = connection.info
            if "generation" not in info:  # new
                info["generation"] = self.generation
                return connection
            if time.monotonic() > deadline:
                connection.close()
                raise FuturesTimeout("no connection answered in time for the delivery")
            if info["generation"] < self.generation or (
                    time.monotonic() - info["used"] > IDLE_PING_S and not self._alive(
                        connection, deadline)):
                connection.invalidate()  # closed; the pool opens another
                continue
            return connection

    def _alive(self, connection: Any, deadline: float) -> bool:
        try:
            with self.watchdog.watch(self._fd(connection), deadline):
                return bool(self.engine.dialect.do_ping(connection.driver_connection))
        except Exception:
            return False
