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

    __slots__ = ("binds", "order", "positional", "sql")

    def __init__(self, stmt: Any, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=_placeholders(dialect))
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("statements with expanding (IN) parameters are not prepared here")
        self.sql = compiled.string
        self.positional = compiled.positional
        processors = compiled._bind_processors
        names = compiled.positiontup if compiled.positional else list(
            compiled.bind_names.values())
        escaped = compiled.escaped_bind_names or {}
        # Columns whose Python-side default or onupdate SQLAlchemy computes per execution
        # (``updated_at``): computed here the same way.
        computed = {}
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            generator = (column.onupdate if column in compiled.update_prefetch
                         else column.default)
            if generator is None or not (generator.is_callable or generator.is_scalar):
                raise ValueError(f"cannot compute the default of {column}")
            computed[column.key] = generator
        # One entry per distinct name: a name used several times (``:at`` in five places of
        # one UPDATE) is converted once, and SQLite's positional parameters repeat it.
        binds: list[tuple[str, str, Any, Any]] = []
        index: dict[str, int] = {}
        for name in names:
            if name in index:
                continue
            index[name] = len(binds)
            bind = compiled.binds[name]
            if name in computed:
                binds.append((name, escaped.get(name, name), computed[name],
                              processors.get(name)))
                continue
            # A caller gives its own parameters by name (``bindparam("pk")``); the statement's
            # constants (``state = 'completed'``, anonymous names) keep their value.
            default = _MISSING if bind.required or bind.callable is not None else bind.value
            binds.append((name, escaped.get(name, name), default, processors.get(name)))
        self.binds = tuple(binds)
        # Positional: the distinct values in the statement's order, where names repeat.
        order = tuple(index[name] for name in names)
        self.order = order if self.positional and order != tuple(range(len(binds))) else None

    def parameters(self, params: dict[str, Any]) -> Any:
        values = []
        for name, _escaped, default, processor in self.binds:
            value = params.get(name, _MISSING)
            if value is _MISSING:
                value = default
                if value is _MISSING:
                    raise KeyError(f"no value for parameter {name!r}")
                if isinstance(value, ColumnDefault):
                    value = value.arg(None) if value.is_callable else value.arg
            values.append(processor(value) if processor is not None and value is not None
                          else value)
        if self.positional:
            return values if self.order is None else [values[i] for i in self.order]
        return {escaped: value for (_n, escaped, _d, _p), value in zip(self.binds, values,
                                                                        strict=True)}


class Runner:
    """Runs prepared statements on one DBAPI connection, in its current transaction.

    :meth:`of` takes a session's connection (opening its transaction if needed). A
    connection the caller holds itself (the SQLite writer's) is given with its dialect. On a
    connection in autocommit mode (PostgreSQL's deliveries) each statement commits itself
    until :meth:`begin`; whoever holds the connection then commits (``began``).
    """

    __slots__ = ("autocommit", "began", "connection", "cursor", "dbapi_connection", "dialect")

    _CACHE: dict[tuple[str, Any], Prepared] = {}

    def __init__(self, dbapi_connection: Any, dialect: Dialect,
                 connection: Connection | None = None, *, autocommit: bool = False) -> None:
        self.dbapi_connection = dbapi_connection
        self.dialect = dialect
        self.connection = connection
        self.autocommit = autocommit
        self.began = False
        self.cursor = (dialect.loaded_dbapi.RawCursor(dbapi_connection)
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
        with contextlib.suppress(Exception):  # a cursor of a lost connection
            self.cursor.close()
