"""PostgreSQL: deliveries are stored on connections of a pool of their own, without its ping.

On PostgreSQL a delivery commits its own transaction (``app/groupcommit.py`` says why there
is no group commit there). Through a Session on the app's engine, each delivery also paid for
the pool's ping at checkout (one more round trip to the server) and for the Session's
bookkeeping. Here the same statements (``app/prepared.py``) run in one transaction on a
connection of a pool kept for deliveries (most recently used first, so a few stay warm):
a fifth to a third more deliveries a second (bench/README.md).

Without the ping, a connection may be dead when taken (the server restarted, a firewall cut
it while idle). So one that has been idle for ``IDLE_PING_S`` is pinged before use, and
replaced if dead. A failure that shows the server went away closes that connection and
retires every connection opened before it, so that each is replaced before its next
delivery rather than failing it. The delivery that met the failure gets a 503 as before,
and the provider retries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.prepared import Runner

EXTENSION = "confhook.deliveryconn"
IDLE_PING_S = 5.0

T = TypeVar("T")


class DeliveryConnections:
    """Run a delivery's statements in one transaction on a connection of ``engine``'s pool."""

    def __init__(self, engine: Engine, app_engine: Engine | None = None) -> None:
        self.engine = engine
        self.generation = 0  # bumped when a connection finds the server gone
        self.lock = threading.Lock()
        # Disposing of the app's engine (tests, shutdown) disposes of this one too.
        if app_engine is not None:
            event.listen(app_engine, "engine_disposed", lambda _engine: engine.dispose())

    def run(self, work: Callable[[Runner], T]) -> T:
        """``work(runner)`` in a transaction, committed; rolled back if it raises."""
        connection = self._connection()
        run = Runner(connection.driver_connection, self.engine.dialect)
        try:
            result = work(run)
            run.driver_sql("COMMIT")
            return result
        except DBAPIError as exc:
            if exc.connection_invalidated:
                with self.lock:
                    self.generation += 1
                connection.invalidate(exc)
            raise
        finally:
            run.close()
            if connection.is_valid:
                connection.info["used"] = time.monotonic()
            connection.close()  # back to the pool, rolled back if need be

    def _connection(self) -> Any:
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
            if info["generation"] < self.generation or (
                    time.monotonic() - info["used"] > IDLE_PING_S and not self._alive(
                        connection)):
                connection.invalidate()  # closed; the pool opens another
                continue
            return connection

    def _alive(self, connection: Any) -> bool:
        try:
            return bool(self.engine.dialect.do_ping(connection.driver_connection))
        except Exception:
            return False
