"""The README's quick start, run as a new user runs it: ``make run`` and ``make demo``.

On a copy of the checkout (its ``instance/`` is the copy's, not this one's), with this
checkout's virtualenv and free ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parent.parent


def _copy(into: Path) -> Path:
    for name in ("app", "config", "server", "migrations", "scripts", "bench"):
        shutil.copytree(ROOT / name, into / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("wsgi.py", "alembic.ini", "Makefile", "requirements.txt"):
        shutil.copy2(ROOT / name, into / name)
    (into / ".venv").symlink_to(ROOT / ".venv")
    return into


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONFHOOK_", "CATAPULT_", "EMULATOR_", "DATABASE_URL"))}
    return {**env, "CONFHOOK_PORT": str(free_port()), "EMULATOR_PORT": str(free_port()),
            "NO_PROXY": "127.0.0.1,localhost"}


def test_make_demo_plays_every_scenario_and_stores_each_event_once(tmp_path: Path) -> None:
    project = _copy(tmp_path / "project")
    done = subprocess.run(["make", "demo"], cwd=project, env=_env(), capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "every delivered event is stored exactly once" in done.stdout


def test_make_run_serves_what_it_prints(tmp_path: Path) -> None:
    project = _copy(tmp_path / "project")
    env = _env()
    service = f"http://127.0.0.1:{env['CONFHOOK_PORT']}"
    emulator = f"http://127.0.0.1:{env['EMULATOR_PORT']}"
    log = open(tmp_path / "run.log", "w+")  # noqa: SIM115 - read back below
    proc = subprocess.Popen(["make", "run"], cwd=project, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops both." not in (tmp_path / "run.log").read_text():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-2000:]
            time.sleep(0.2)
        printed = (tmp_path / "run.log").read_text()
        token = next(line.split(": ", 1)[1].strip() for line in printed.splitlines()
                     if line.startswith("API token for this checkout:"))
        assert requests.get(f"{service}/readyz", timeout=5).status_code == 200
        # The printed curl lines, as requests: create, play, read back.
        created = requests.post(f"{service}/api/v1/conferences", timeout=10,
                                headers={"Authorization": f"Bearer {token}"},
                                json={"from": "+19195551212", "tag": "demo"})
        assert created.status_code == 201, created.text
        conference = created.json()
        played = requests.post(f"{emulator}/_emulator/scenarios", timeout=10,
                               auth=("local-token", "local-secret"),
                               json={"conferenceId": conference["conferenceId"],
                                     "stepMs": 5})
        assert played.status_code == 202, played.text
        assert requests.get(f"{emulator}/_emulator/idle", params={"wait": 30},
                            timeout=40).json()["idle"]
        events = requests.get(f"{service}/api/v1/conferences/{conference['id']}/events",
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert events.status_code == 200 and len(events.json()["data"]) > 10
        assert "Admin page:" in printed and "(password: " in printed
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
