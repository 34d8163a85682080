from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import create_app
from app.cli import upgrade_database
from tests.fakeprovider import FakeProvider
from tests.servers import ThreadedServer, free_port

SECRET = "test-secret-key-0123456789-abcdefghijkl"
TOKEN = "test-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# Set to a PostgreSQL server URL (postgresql+psycopg://user@host/dbname) to run the suite
# there; each test then gets its own database, cloned from a migrated template.
POSTGRES_URL = os.environ.get("CONFHOOK_TEST_POSTGRES_URL", "").strip()
_numbers = itertools.count()


def fresh_postgres_database() -> tuple[str, Any]:
    """Create an empty, migrated PostgreSQL database; return its URL and a function to drop it."""
    name = f"confhook_e2e_{os.getpid()}_{next(_numbers)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade_database(url)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database migrated to head once per run, that each test's database copies."""
    if POSTGRES_URL:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        name = f"confhook_template_{os.getpid()}"
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        upgrade_database(url)
        yield name
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        return
    path = tmp_path_factory.mktemp("template") / "confhook.db"
    upgrade_database(f"sqlite:///{path}")
    yield str(path)


@pytest.fixture
def database_url(tmp_path: Path, migrated_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    if not POSTGRES_URL:
        path = tmp_path / "confhook.db"
        shutil.copy(migrated_template, path)
        yield f"sqlite:///{path}"
        return
    name = f"confhook_test_{os.getpid()}_{next(_numbers)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"'))
    yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    server = ThreadedServer(fake.app).start()
    fake.url = server.url  # type: ignore[attr-defined]
    yield fake
    server.stop()


@pytest.fixture
def app_port() -> int:
    return free_port()


@pytest.fixture
def env(database_url: str, provider: FakeProvider, app_port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "CONFHOOK_SECRET_KEY": SECRET,
        "CONFHOOK_PUBLIC_URL": f"http://127.0.0.1:{app_port}",
        "CONFHOOK_API_TOKENS": f"another-token-abcdefgh,{TOKEN}",
        # Refused deliveries are written at once, so tests can read the counts right away.
        "CONFHOOK_REJECTION_FLUSH_MS": "0",
        "CATAPULT_API_URL": provider.url,  # type: ignore[attr-defined]
        "CATAPULT_USER_ID": provider.user_id,
        "CATAPULT_API_TOKEN": provider.credentials[0],
        "CATAPULT_API_SECRET": provider.credentials[1],
        # Short, for the timeout tests (their provider answers after 3.6 s), yet with room for
        # a loaded CI machine, where the fake provider once took over 1 s to answer.
        "CATAPULT_READ_TIMEOUT_S": "3.0",
        "CATAPULT_RETRIES": "1",
        # The test client does not close the answers it returns, so each would keep its
        # place in the API's share of the worker (app/capacity.py, which a server frees as
        # it closes the answer): in-process, no bound. tests/test_capacity.py tests it.
        "CONFHOOK_READ_CONCURRENCY": "256",
    }


@pytest.fixture
def app(env: dict[str, str]) -> Iterator[Flask]:
    application = create_app(env)
    yield application
    from app.db import database

    database(application).engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """Runs the app's ``flask`` commands, as the README shows them."""
    return app.test_cli_runner()


@pytest.fixture
def live_app(app: Flask, app_port: int) -> Iterator[ThreadedServer]:
    """The app served over real HTTP at CONFHOOK_PUBLIC_URL, so providers can call back."""
    server = ThreadedServer(app, port=app_port).start()
    yield server
    server.stop()


def create(client: FlaskClient, **body: Any) -> dict[str, Any]:
    """Create a conference through the API and return its JSON; assert it succeeded."""
    body.setdefault("from", "+19195551212")
    response = client.post("/api/v1/conferences", json=body, headers=AUTH)
    assert response.status_code == 201, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback servers only: never route test traffic through a configured proxy.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert os.environ["NO_PROXY"]
