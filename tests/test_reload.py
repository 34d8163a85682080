"""A reload (``SIGHUP``) of gunicorn as shipped: it serves the code on disk, with no gap.

gunicorn starts new workers and stops the old ones; ours go on serving until the new ones have
loaded the app (server/handover.py). The app is a copy of this checkout whose
code is changed before the reload, so that its new workers are slow to load and recognisable.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from scripts.local import ROOT, Stack, running
from tests.servers import free_port

pytestmark = pytest.mark.system  # real servers: `pytest -m 'not system'` skips them

LOAD_S = 5.0  # how long the changed app takes to load in a new worker

CHANGE = f'''
import time as _time

_create_app = create_app


def create_app(environ=None):
    app = _create_app(environ)

    @app.after_request
    def _generation(response):
        response.headers["X-Generation"] = "2"
        return response

    return app


_time.sleep({LOAD_S})
'''


def copy_of_checkout(into: Path) -> Path:
    for name in ("app", "config", "server", "migrations"):
        shutil.copytree(ROOT / name, into / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("wsgi.py", "alembic.ini"):
        shutil.copy2(ROOT / name, into / name)
    return into


def test_a_reload_serves_the_new_code_and_answers_throughout(tmp_path: Path) -> None:
    project = copy_of_checkout(tmp_path / "project")
    stack = Stack(free_port(), free_port(), f"sqlite:///{tmp_path / 'confhook.db'}",
                  secrets.token_urlsafe(32), "ops-" + secrets.token_urlsafe(16),
                  extra_env={"CONFHOOK_WORKERS": "2", "CONFHOOK_THREADS": "2"},
                  with_emulator=False, root=project, log_dir=tmp_path / "logs")
    answers: list[tuple[float, float, int | str, str]] = []  # sent, took, status, generation
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = requests.get(f"{stack.service_url}/healthz", timeout=20,
                                        headers={"Connection": "close"})
                status: int | str = response.status_code
                generation = response.headers.get("X-Generation", "1")
            except requests.RequestException as exc:
                status, generation = type(exc).__name__, "?"
            answers.append((sent, time.monotonic() - sent, status, generation))
            time.sleep(0.02)

    with running(stack):
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        time.sleep(1.0)
        # The code on disk changes, in the package gunicorn's master loads first (app/).
        with open(project / "app" / "__init__.py", "a") as init:
            init.write(CHANGE)
        reloaded_at = time.monotonic()
        os.kill(stack.processes[0].pid, signal.SIGHUP)
        deadline = reloaded_at + 45
        while time.monotonic() < deadline:  # until the old workers are gone
            recent = answers[-25:]
            if len(recent) == 25 and all(a[3] == "2" for a in recent):
                break
            time.sleep(0.2)
        stop.set()
        prober.join(timeout=25)
    log = (tmp_path / "logs" / "service.log").read_text()

    after = [a for a in answers if a[0] >= reloaded_at]
    assert [a for a in answers if a[2] != 200] == []
    # No gap: a reload that stopped the old workers at once would leave none to answer while
    # the new ones load (LOAD_S).
    assert max(a[1] for a in answers) < 2.5, max(answers, key=lambda a: a[1])
    first_new = min((a[0] + a[1] for a in after if a[3] == "2"), default=None)
    assert first_new is not None, "the new workers never served the changed code"
    assert first_new - reloaded_at >= LOAD_S * 0.9  # they did take that long to load
    # Meanwhile the old workers answered, to the end of the handover.
    meanwhile = [a for a in after if a[0] + a[1] < first_new]
    assert len(meanwhile) >= 20 and meanwhile[-1][0] >= first_new - 1.0
    assert all(a[3] == "2" for a in answers[-25:]), "old workers still answer"
    assert "serves until the new workers do" in log and "the new workers serve" in log


def test_the_handover_waits_for_every_new_worker_across_processes() -> None:
    from server.handover import Handover

    handover = Handover()
    assert not handover.waiting(1)  # no reload yet: a SIGTERM stops at once

    def in_a_child(*ages: int) -> None:  # a forked worker, as gunicorn forks them
        pid = os.fork()
        if pid == 0:
            for age in ages:
                handover.ready(age)
            os._exit(0)
        os.waitpid(pid, 0)

    handover.begin(2, 2)  # workers 1 and 2 are old; 3 and 4 start
    assert handover.waiting(1) and handover.waiting(2) and not handover.waiting(3)
    in_a_child(3)
    assert handover.waiting(1)
    in_a_child(9)  # not one of this reload's new workers
    assert handover.waiting(2)
    in_a_child(4)
    assert not handover.waiting(1) and not handover.waiting(2)
    handover.begin(4, 1)  # the next reload waits afresh
    assert handover.waiting(3) and handover.waiting(4)
