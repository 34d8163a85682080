"""Engine and session wiring: one engine per app, one session per request or command."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from flask import Flask, current_app, g
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_EXT = "confhook.db"


def read_only_connection(exc: BaseException | None) -> bool:
    """Whether ``exc`` says that this connection cannot write, though a new one could.

    SQLite opens a file it may not write read-only, without an error, and that connection
    stays read-only after the file is writable again (SQLITE_READONLY and its extended codes,
    which also cover a file moved or replaced beneath the connection). PostgreSQL refuses
    writes on a standby, as the old primary is after a failover (SQLSTATE 25006). Such a
    connection is discarded as a lost one is, so that the next is opened afresh.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == 8:  # SQLITE_READONLY
        return True
    return getattr(exc, "sqlstate", None) == "25006"  # read_only_sql_transaction


_FILE = "confhook.file"


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def file_replaced(info: dict[str, Any]) -> bool:
    """Whether the SQLite file a connection opened is no longer the one at its path.

    An open connection keeps its file, even after the file is deleted, or replaced by a
    rename (``mv backup.db confhook.db``): what it commits then goes nowhere anyone will read.
    ``info`` is the pool record's (``connection.info``); False for connections that are not
    to a SQLite file.
    """
    opened = info.get(_FILE)
    return opened is not None and _identity(opened[0]) != opened[1]


def error_name(exc: BaseException) -> str:
    """``OperationalError (SQLITE_FULL)``: the error's class and the driver's code, for logs.

    The driver's message stays out: it might quote data.
    """
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    return f"{type(orig).__name__} ({code})" if code else type(orig).__name__


def is_lock_wait(exc: BaseException) -> bool:
    """A lock not granted in time: PostgreSQL's lock_timeout, SQLite's busy timeout."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "55P03":  # lock_not_available
        return True
    return type(orig).__module__ == "sqlite3" and "locked" in str(orig)


def _discard_read_only_connections(engine: Engine) -> None:
    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        if read_only_connection(context.original_exception):
            context.is_disconnect = True  # SQLAlchemy invalidates it, and the pool


def network_options(url: str, timeout_ms: int) -> dict[str, Any]:
    """libpq's parameters that make a PostgreSQL server gone from the network an error in
    about ``timeout_ms``, where TCP alone waits minutes: a connect that gets no answer
    (``connect_timeout``), data the server's host does not acknowledge (``tcp_user_timeout``:
    it died, or a firewall drops the packets), and a connection waiting for an answer from
    a host that no longer answers keepalive probes. A parameter the URL gives is kept."""
    seconds = max(1, round(timeout_ms / 1000))
    options: dict[str, Any] = {
        "connect_timeout": max(2, seconds),  # libpq's minimum
        "tcp_user_timeout": int(timeout_ms),
        "keepalives": 1,
        "keepalives_idle": max(1, seconds // 2),
        "keepalives_interval": max(1, seconds // 6),
        "keepalives_count": 3,
    }
    given = make_url(url).query
    return {name: value for name, value in options.items() if name not in given}


def make_engine(url: str, sqlite_synchronous: str = "FULL", busy_timeout_ms: int = 10_000,
                lock_timeout_ms: int = 10_000, **pg_options: Any) -> Engine:
    """Create the engine; for SQLite, set WAL and the durability level on every connection.

    On PostgreSQL every connection waits at most ``lock_timeout_ms`` for a lock (a row another
    transaction holds): the statement then fails, and a delivery gets a 503 while the provider
    is still waiting for an answer, rather than holding a thread for as long as the lock lasts.
    The same time bounds connecting, and waiting on a server whose host is gone
    (:func:`network_options`).
    """
    if not url.startswith("sqlite"):
        pg_engine = create_engine(url, **({"pool_pre_ping": True,
                                           "connect_args": network_options(url, lock_timeout_ms)}
                                          | pg_options))

        @event.listens_for(pg_engine, "connect")
        def _on_pg_connect(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
            cur.close()
            dbapi_conn.commit()  # outside any transaction the pool later rolls back

        _discard_read_only_connections(pg_engine)
        return pg_engine
    parsed = make_url(url)
    database = parsed.database
    path = (os.path.abspath(database) if database not in (None, "", ":memory:")
            and not database.startswith("file:") else None)
    if path is not None:
        # Open the file only if it is there (mode=rw). Otherwise SQLite creates an empty one:
        # after an rm, an operator would find a new database without a schema at the path.
        # A missing file is an error instead (503, /readyz unready); `flask migrate` creates it.
        parsed = parsed.set(database=f"file:{quote(path)}",
                            query={**parsed.query, "mode": "rw", "uri": "true"})
    # A writer waits up to busy_timeout_ms (10 s) for SQLite's lock, then the request is a
    # 503: well within gunicorn's worker timeout, and the provider retries.
    engine = create_engine(parsed, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # We issue BEGIN ourselves (below) so that writers can take the lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.close()
        if path is not None:
            record.info[_FILE] = (path, _identity(path))

    @event.listens_for(engine, "checkout")
    def _on_checkout(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if file_replaced(record.info):
            # The pool discards it and opens another, on the file now at the path.
            raise DisconnectionError("the database file was replaced or removed")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" if another writer got in between; BEGIN IMMEDIATE waits for the lock instead.
        write = conn.get_execution_options().get("confhook_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    _discard_read_only_connections(engine)
    return engine


class Database:
    """The engine and two session factories: readers, and writers that lock up front."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.reader = sessionmaker(bind=engine, expire_on_commit=False)
        self.writer = sessionmaker(bind=engine.execution_options(confhook_write=True),
                                   expire_on_commit=False)


def init_app(app: Flask) -> None:
    """Create the engine for ``app`` (no connection is opened) and close sessions after use."""
    engine = make_engine(app.config["DATABASE_URL"], app.config["CONFHOOK_SQLITE_SYNCHRONOUS"],
                         app.config["CONFHOOK_SQLITE_BUSY_TIMEOUT_MS"],
                         app.config["CONFHOOK_DELIVERY_WAIT_MS"])
    app.extensions[_EXT] = Database(engine)
    app.teardown_appcontext(_close_sessions)


def database(app: Flask | None = None) -> Database:
    return (app or current_app).extensions[_EXT]  # type: ignore[no-any-return]


def _session(kind: str) -> Session:
    key = f"_db_{kind}"
    session = g.get(key)
    if session is None:
        factory = getattr(database(), kind)
        session = factory()
        setattr(g, key, session)
    return session  # type: ignore[no-any-return]


def read_session() -> Session:
    """Return this request's reading session."""
    return _session("reader")


def write_session() -> Session:
    """Return this request's writing session (SQLite: BEGIN IMMEDIATE)."""
    return _session("writer")


def _close_sessions(_exc: BaseException | None) -> None:
    for key in ("_db_reader", "_db_writer"):
        session = g.pop(key, None)
        if session is not None:
            session.close()


def upsert(session: Session, table: Any) -> Any:
    """Return an INSERT for ``table`` that supports ON CONFLICT on this session's dialect."""
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)
