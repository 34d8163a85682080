"""Storing deliveries on SQLite: one writer thread per process commits them in batches.

SQLite lets one writer in at a time, and with ``synchronous=FULL`` every commit is an fsync.
Request threads hand their delivery to this process's writer and wait; the writer takes every
delivery waiting, stores each in a savepoint of its own, commits once, and only then answers
each. Whatever fails for one delivery rolls back that delivery alone; a failure of the batch
leaves the connection closed cleanly (cursor, then transaction, then connection), so no lock
or file descriptor outlives it. Writers of several processes queue on a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from app import db
from app.statements import Runner

log = logging.getLogger(__name__)

MAX_BATCH = 200
IDLE_EXIT_S = 30.0

T = TypeVar("T")
Work = Callable[[Runner], Any]


class SQLiteStore:
    """Runs each delivery's work through one writer thread; :meth:`run` blocks until committed.
    """

    def __init__(self, engine: Engine, lock_path: str | None = None,
                 wait_s: float = 10.0) -> None:
        self.wait_s = wait_s
        # The writer thread keeps one connection of the pool for itself, across batches.
        self.engine = engine
        self.connection: Any = None
        # Writers of several processes queue on this file lock, woken as soon as it is free;
        # SQLite's own busy handler polls with sleeps of up to 100 ms and is not fair, so
        # one process could starve for seconds while the others commit.
        self.lock_path = lock_path
        self.lock_file: Any = None
        self.lock_pid = 0
        self.jobs: queue.SimpleQueue[tuple[Work, Future[Any]]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.batches = 0  # committed batches and the deliveries in them, for tests and benches
        self.deliveries = 0

    def run(self, work: Callable[[Runner], T]) -> T:
        """Run ``work`` in the next batch; return its result once committed, or raise what
        it raised (its savepoint rolled back) or what failed the batch.

        Waiting is bounded (``CONFHOOK_DELIVERY_WAIT_MS``): past the provider's patience a
        thread held for a stuck database serves nobody, and a 503 makes the provider retry.
        A job given up on stays queued and is still stored; its retry is then a duplicate.
        """
        future: Future[Any] = Future()
        self.jobs.put((work, future))
        self._ensure_thread()
        return future.result(timeout=self.wait_s)  # type: ignore[no-any-return]

    def _ensure_thread(self) -> None:
        # Started on first use, so each gunicorn worker (a fork) gets its own.
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="confhook-writer",
                                               daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self.jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self.lock:
                    if self.jobs.empty():  # nobody queued while we were deciding
                        self.thread = None
                        connection, self.connection = self.connection, None
                        if connection is not None:
                            with contextlib.suppress(Exception):
                                connection.close()  # back to the pool
                        return
                continue
            batch = [first]
            self._take_waiting(batch)
            self._commit(batch)

    def _take_waiting(self, batch: list[tuple[Work, Future[Any]]]) -> None:
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self.jobs.get_nowait())
            except queue.Empty:
                return

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        if self.lock_file is None or self.lock_pid != os.getpid():
            try:
                self.lock_file = open(self.lock_path, "a+b")  # noqa: SIM115 - kept open
            except OSError:
                # No lock file, no database either: let SQLite report it (a 503).
                yield
                return
            self.lock_pid = os.getpid()
        fcntl.flock(self.lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.lock_file.fileno(), fcntl.LOCK_UN)

    def _store(self, batch: list[tuple[Work, Future[Any]]],
               done: list[tuple[Future[Any], Any,
                                BaseException | None]]) -> None:
        """One transaction for ``batch``; a savepoint per delivery, so one that fails rolls
        back alone. A failure of the transaction itself discards the connection."""
        if self.connection is None:
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            try:
                self.connection = self.engine.raw_connection()
            except dbapi_error as exc:  # as SQLAlchemy would raise it from a session
                raise DBAPIError.instance(None, None, exc, dbapi_error) from exc
        run = Runner(self.connection.driver_connection, self.engine.dialect)
        try:
            run.driver_sql("BEGIN IMMEDIATE")
            for work, future in batch:
                run.driver_sql("SAVEPOINT delivery")
                try:
                    outcome = work(run)
                except Exception as exc:
                    # Anything at all: this delivery alone is rolled back and answered 503.
                    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                        # Not this delivery's fault but the connection's (lost, or opened
                        # read-only while the file was unwritable): the batch fails, and
                        # the next one gets a new connection.
                        raise
                    run.driver_sql("ROLLBACK TO delivery")
                    run.driver_sql("RELEASE delivery")
                    done.append((future, None, exc))
                    continue
                run.driver_sql("RELEASE delivery")
                done.append((future, outcome, None))
            run.driver_sql("COMMIT")
            if db.file_replaced(self.connection.info):
                # Committed to a file that was deleted or replaced (a restore by rename)
                # while open: nobody will read it, so nothing of it is acknowledged. The
                # provider's retries go to the file now at the path, on a new connection.
                dbapi = self.engine.dialect.loaded_dbapi
                raise DBAPIError.instance(
                    None, None, dbapi.OperationalError("the database file was replaced or "
                                                       "removed while open"),
                    dbapi.Error, connection_invalidated=True)
        except BaseException as exc:
            done.clear()
            connection, self.connection = self.connection, None
            # The cursor first: SQLite keeps a connection closed with a statement still open
            # alive, with its write transaction and lock, and its file descriptor.
            run.close()
            with contextlib.suppress(Exception):
                connection.driver_connection.rollback()
            with contextlib.suppress(Exception):
                connection.invalidate()
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                # The pool's other connections were opened alike (while the file was
                # unwritable, say): new ones for all, as SQLAlchemy does on a disconnect.
                self.engine.dispose()
            raise
        finally:
            run.close()

    def _commit(self, batch: list[tuple[Work, Future[Any]]]) -> None:
        done: list[tuple[Future[Any], Any,
                         BaseException | None]] = []
        try:
            with self._writer_lock():
                # Deliveries that arrived while this process waited for its turn ride along:
                # under contention batches grow, and each costs one lock and one fsync.
                self._take_waiting(batch)
                self._store(batch, done)
            self.batches += 1
            self.deliveries += len(batch)
        except BaseException as exc:
            log.error("group commit of %d deliveries failed: %s", len(batch),
                      db.error_name(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, outcome, error in done:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(outcome)  # type: ignore[arg-type]
