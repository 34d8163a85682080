"""Statements compiled once per dialect and run on a DBAPI cursor: the delivery path's SQL.

Each statement is compiled once, with its parameter order, defaults and SQLAlchemy's own bind
processors, and each run is one ``cursor.execute`` in the caller's transaction: the SQL
SQLAlchemy would send, without its per-execution machinery (bench/README.md measures it).
On PostgreSQL the SQL is compiled with the server's own ``$n`` placeholders and run on a
psycopg ``RawCursor``, which sends it as it is: a ``%(name)s`` statement is parsed again on
every run once it is over 4 KiB or 50 parameters, as a delivery's one statement is.
Results are plain rows; errors are SQLAlchemy's ``DBAPIError`` subclasses, and a lost or
read-only connection is invalidated as the engines of ``app/db.py`` do.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.schema import ColumnDefault

from app.db import read_only_connection

_MISSING = object()


_NUMBERED: dict[type[Dialect], Dialect] = {}


def _placeholders(dialect: Dialect) -> Dialect:
    """The dialect to compile with: PostgreSQL's with ``$n`` placeholders (see above)."""
    if dialect.name != "postgresql":
        return dialect
    numbered = _NUMBERED.get(type(dialect))
    if numbered is None:
        numbered = _NUMBERED[type(dialect)] = type(dialect)(paramstyle="numeric_dollar")
    return numbered


class Prepared:
    """One statement compiled for one dialect."""

    __slots__ = ("order", "slots", "sql")

    def __init__(self, stmt: Any, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=_placeholders(dialect))
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("statements with expanding (IN) parameters are not prepared here")
        if not compiled.positional:
            raise ValueError(f"{dialect.name}: only positional placeholders are prepared here")
        self.sql = compiled.string
        processors = compiled._bind_processors
        # Columns whose Python-side default or onupdate SQLAlchemy computes per execution
        # (``updated_at``): computed here the same way.
        computed = {}
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            generator = (column.onupdate if column in compiled.update_prefetch
                         else column.default)
            if generator is None or not (generator.is_callable or generator.is_scalar):
                raise ValueError(f"cannot compute the default of {column}")
            computed[column.key] = generator
        # One slot per distinct name: a name used several times (``:at`` in five places of
        # one UPDATE) is converted once, and SQLite's positional parameters repeat it. A slot
        # is the caller's parameter (``bindparam("pk")``), converted per run, or the
        # statement's own constant (``state = 'completed'``, anonymous names), converted
        # here once: no parameter of a caller's can replace a constant.
        slots: list[tuple[str, Any, ColumnDefault | None, Any]] = []
        index: dict[str, int] = {}
        for name in compiled.positiontup:
            if name in index:
                continue
            index[name] = len(slots)
            bind = compiled.binds[name]
            processor = processors.get(name)
            if name in computed or bind.required or bind.callable is not None:
                slots.append((name, _MISSING, computed.get(name), processor))
                continue
            value = bind.value
            slots.append((name, processor(value) if processor is not None and value is not None
                          else value, None, None))
        self.slots = tuple(slots)
        # The distinct values in the statement's order, where names repeat.
        order = tuple(index[name] for name in compiled.positiontup)
        self.order = order if order != tuple(range(len(slots))) else None

    def parameters(self, params: dict[str, Any]) -> list[Any]:
        values: list[Any] = []
        append = values.append
        get = params.get
        for name, constant, computed, processor in self.slots:
            if constant is not _MISSING:
                append(constant)
                continue
            value = get(name, _MISSING)
            if value is _MISSING:
                if computed is None:
                    raise KeyError(f"no value for parameter {name!r}")
                value = computed.arg(None) if computed.is_callable else computed.arg
            append(value if processor is None or value is None else processor(value))
        return values if self.order is None else [values[i] for i in self.order]


class Runner:
    """Runs prepared statements on one DBAPI connection, in its current transaction.

    :meth:`of` takes a session's connection (opening its transaction if needed). A
    connection the caller holds itself (the SQLite writer's) is given with its dialect. On a
    connection in autocommit mode (PostgreSQL's deliveries) each statement commits itself
    until :meth:`begin`; whoever holds the connection then commits (``began``).
    """

    __slots__ = ("autocommit", "began", "connection", "cursor", "dbapi_connection", "dialect",
                 "owns_cursor")

    _CACHE: dict[tuple[str, Any], Prepared] = {}

    def __init__(self, dbapi_connection: Any, dialect: Dialect,
                 connection: Connection | None = None, *, autocommit: bool = False,
                 cursor: Any = None) -> None:
        self.dbapi_connection = dbapi_connection
        self.dialect = dialect
        self.connection = connection
        self.autocommit = autocommit
        self.began = False
        # A cursor the caller keeps with its connection stays open: psycopg's cursor holds
        # the converters it found for each parameter's type, found again by a new one.
        self.owns_cursor = cursor is None
        self.cursor = cursor if cursor is not None else self.new_cursor(dbapi_connection, dialect)

    @staticmethod
    def new_cursor(dbapi_connection: Any, dialect: Dialect) -> Any:
        return (dialect.loaded_dbapi.RawCursor(dbapi_connection)
                if dialect.name == "postgresql" else dbapi_connection.cursor())

    @classmethod
    def of(cls, session: Session) -> Runner:
        connection = session.connection()
        return cls(connection.connection.driver_connection, connection.dialect, connection)

    def prepared(self, key: Any, build: Any) -> Prepared:
        cache_key = (self.dialect.name, key)
        prepared = self._CACHE.get(cache_key)
        if prepared is None:
            prepared = self._CACHE[cache_key] = Prepared(build(), self.dialect)
        return prepared

    def execute(self, prepared: Prepared, params: dict[str, Any]) -> Any:
        """Run ``prepared``; return the cursor, to fetch from."""
        args = prepared.parameters(params)
        try:
            self.cursor.execute(prepared.sql, args)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._translate(exc, prepared.sql, args) from exc
        return self.cursor

    def begin(self) -> None:
        """Make the statements that follow one transaction (a no-op inside one already)."""
        if self.autocommit:
            self.driver_sql("BEGIN")
            self.autocommit = False
            self.began = True

    def driver_sql(self, sql: str) -> None:
        try:
            self.cursor.execute(sql)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._translate(exc, sql, ()) from exc

    def _translate(self, exc: Exception, sql: str, args: Any) -> DBAPIError:
        disconnect = (self.dialect.is_disconnect(exc, self.dbapi_connection, self.cursor)
                      or read_only_connection(exc))
        if disconnect and self.connection is not None:
            self.connection.invalidate(exc)
        return DBAPIError.instance(sql, args, exc, self.dialect.loaded_dbapi.Error,
                                   hide_parameters=True, connection_invalidated=disconnect,
                                   dialect=self.dialect)  # type: ignore[return-value]

    def close(self) -> None:
        if self.owns_cursor:
            with contextlib.suppress(Exception):  # a cursor of a lost connection
                self.cursor.close()
