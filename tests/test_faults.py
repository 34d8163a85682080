"""Workers killed with SIGKILL while deliveries flow: nothing answered 2xx is lost.

A short run of ``bench/faults.py`` (the full run is in bench/README.md): the service under
gunicorn with three workers, a worker killed every 0.4 s, every acknowledged delivery checked
in the database, the rest retried as the provider would, each event stored exactly once.
"""

from __future__ import annotations

import pytest

from bench import faults


def test_killing_workers_loses_nothing_acknowledged(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import POSTGRES_URL

    drop = None
    options = ["--events", "400", "--senders", "8", "--kill-every", "0.4"]
    if POSTGRES_URL:
        from tests.conftest import fresh_postgres_database

        url, drop = fresh_postgres_database()
        options += ["--database-url", url]
    try:
        status = faults.main(options)
    finally:
        if drop:
            drop()
    out = capsys.readouterr().out
    assert status == 0, out
    assert "workers were killed" in out and " 0 workers were killed" not in out
