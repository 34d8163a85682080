"""Statements run on the DBAPI cursor (app/statements.py) do what ``Session.execute`` does.

On the database the suite runs on: SQLite, or PostgreSQL with CONFHOOK_TEST_POSTGRES_URL.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from app import db
from app.models import Conference, utcnow
from app.statements import Prepared, Runner

CONF = Conference.__table__


def add_conference(app: Flask, pk: str) -> None:
    with app.app_context(), db.database().writer() as session:
        session.add(Conference(id=pk, from_number="+19195551212", tag="t",
                               callback_url="x", fallback_url="y", callback_method="POST",
                               callback_timeout_ms=2000))
        session.commit()


def test_an_update_matches_session_execute_and_computes_onupdate(app: Flask) -> None:
    add_conference(app, "a" * 32)
    add_conference(app, "b" * 32)
    at = datetime(2024, 5, 1, 10, 0, 0, 123456)
    stmt = update(CONF).where(CONF.c.id == bindparam("pk")).values(
        last_event_at=bindparam("at", type_=CONF.c.last_event_at.type), state="active")
    before = utcnow() - timedelta(seconds=1)
    with app.app_context(), db.database().writer() as session:
        session.execute(stmt, {"pk": "a" * 32, "at": at})
        run = Runner.of(session)
        cursor = run.execute(run.prepared(("test-update",), lambda: stmt),
                             {"pk": "b" * 32, "at": at})
        assert cursor.rowcount == 1
        run.close()
        session.commit()
    with app.app_context(), db.database().reader() as session:
        rows = {row.id: row for row in session.scalars(select(Conference))}
    a, b = rows["a" * 32], rows["b" * 32]
    assert (a.state, a.last_event_at) == (b.state, b.last_event_at) == ("active", at)
    assert b.updated_at >= before  # onupdate=utcnow, computed as SQLAlchemy would


def test_database_errors_are_sqlalchemy_errors(app: Flask) -> None:
    add_conference(app, "c" * 32)
    stmt = insert(CONF).values(id=bindparam("pk"), from_number="+1", callback_url="x",
                               fallback_url="y", callback_method="POST",
                               callback_timeout_ms=2000)
    with app.app_context(), db.database().writer() as session:
        run = Runner.of(session)
        with pytest.raises(IntegrityError):
            run.execute(run.prepared(("test-insert",), lambda: stmt), {"pk": "c" * 32})
        run.close()
        session.rollback()


def test_missing_parameters_and_in_lists_are_refused() -> None:
    stmt = update(CONF).where(CONF.c.id == bindparam("pk")).values(state="x")
    with pytest.raises(KeyError, match="pk"):
        Prepared(stmt, sqlite.dialect()).parameters({})
    with pytest.raises(ValueError, match="expanding"):
        Prepared(select(CONF.c.id).where(CONF.c.state.in_(("a", "b"))), sqlite.dialect())


def test_a_name_used_several_times_is_converted_once_and_bound_everywhere() -> None:
    from sqlalchemy import case
    from sqlalchemy.dialects import postgresql

    at = bindparam("at", type_=CONF.c.last_event_at.type)
    stmt = update(CONF).where(CONF.c.id == bindparam("pk")).values(
        last_event_at=case((CONF.c.last_event_at < at, at), else_=CONF.c.last_event_at),
        active_members_at=at, state="active")
    when = datetime(2024, 5, 1, 10, 0, 0, 5)
    # PostgreSQL's are compiled with $n placeholders (one per name), SQLite's with ? (one
    # per use).
    for dialect, compile_with in (
            (sqlite.dialect(), sqlite.dialect()),
            (postgresql.psycopg.dialect(), postgresql.psycopg.dialect(
                paramstyle="numeric_dollar"))):
        compiled = stmt.compile(dialect=compile_with)
        prepared = Prepared(stmt, dialect)
        assert prepared.sql == compiled.string
        got = prepared.parameters({"pk": "p", "at": when})
        # What SQLAlchemy itself would send, the computed updated_at aside.
        expected = compiled.construct_params({"pk": "p", "at": when})
        processors = compiled._bind_processors
        assert compiled.positiontup.count("at") == (3 if dialect.name == "sqlite" else 1)
        names = compiled.positiontup
        assert len(got) == len(names)
        for name, value in zip(names, got, strict=True):
            if name != "updated_at":
                want = expected[name]
                assert value == (processors[name](want) if name in processors else want)


def test_a_parameter_named_like_a_constant_does_not_replace_it() -> None:
    """SQLAlchemy names a constant's parameter after its column (``state``): a caller's
    parameter of that name (an event's own ``state``) is not taken for it."""
    from sqlalchemy.dialects import postgresql

    stmt = update(CONF).where(CONF.c.id == bindparam("pk")).values(state="active")
    for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):
        got = Prepared(stmt, dialect).parameters({"pk": "p", "state": "levitating"})
        assert "active" in got and "levitating" not in got and "p" in got
