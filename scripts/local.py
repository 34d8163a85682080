"""Run the whole product on one machine: the service under gunicorn, on SQLite, wired to the
provider emulator. ``--demo`` plays conferences end to end and checks that every event the
emulator delivered was stored.

    python -m scripts.local            # run until Ctrl-C
    python -m scripts.local --demo     # play scenarios, print a summary, exit 0 if nothing lost
"""

from __future__ import annotations

import argparse
import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from werkzeug.security import generate_password_hash

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_CREDENTIALS = {"user": "u-local", "token": "local-token", "secret": "local-secret"}
# The emulator's controls need its credentials too (they show every callback key).
EMULATOR_AUTH = (EMULATOR_CREDENTIALS["token"], EMULATOR_CREDENTIALS["secret"])


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def local_secrets(instance: Path) -> dict[str, str]:
    """Return this checkout's local secret key and API token, made once and kept."""
    path = instance / "local.env"
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if name and value:
                values[name.strip()] = value.strip()
    wanted = ("CONFHOOK_SECRET_KEY", "CONFHOOK_API_TOKENS", "ADMIN_PASSWORD")
    if any(name not in values for name in wanted):
        values = {"CONFHOOK_SECRET_KEY": secrets.token_urlsafe(32),
                  "CONFHOOK_API_TOKENS": "local-" + secrets.token_urlsafe(18),
                  "ADMIN_PASSWORD": secrets.token_urlsafe(12)}
        instance.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    return values


@dataclass
class Stack:
    """The service and the emulator as child processes on loopback ports."""

    service_port: int
    emulator_port: int
    database_url: str
    secret_key: str
    api_token: str
    admin_password: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    emulator_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    with_emulator: bool = True  # False: one more instance of the service, for the same emulator
    root: Path = ROOT  # the checkout to run
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    @property
    def emulator_url(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CONFHOOK_", "CATAPULT_", "EMULATOR_"))}
        env.update({
            "DATABASE_URL": self.database_url,
            "CONFHOOK_SECRET_KEY": self.secret_key,
            "CONFHOOK_API_TOKENS": self.api_token,
            "CONFHOOK_PUBLIC_URL": self.service_url,
            "CONFHOOK_BIND": f"127.0.0.1:{self.service_port}",
            "CATAPULT_API_URL": self.emulator_url,
            "CATAPULT_USER_ID": EMULATOR_CREDENTIALS["user"],
            "CATAPULT_API_TOKEN": EMULATOR_CREDENTIALS["token"],
            "CATAPULT_API_SECRET": EMULATOR_CREDENTIALS["secret"],
            "CONFHOOK_ADMIN_PASSWORD_HASH": (generate_password_hash(self.admin_password)
                                             if self.admin_password else ""),
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        if self.log_dir is None:
            self.processes.append(subprocess.Popen(argv, cwd=self.root, env=self.env()))
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as out:  # the child keeps its own copy
            self.processes.append(subprocess.Popen(argv, cwd=self.root, env=self.env(), stdout=out,
                                                   stderr=subprocess.STDOUT))

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "migrate"], cwd=self.root,
                       env=self.env(), check=True, stdout=subprocess.DEVNULL)

    def start(self) -> None:
        for port in (self.service_port, *([self.emulator_port] if self.with_emulator else [])):
            if not _port_free(port):
                raise SystemExit(f"port {port} is in use: stop what runs there, or set "
                                 "CONFHOOK_PORT / EMULATOR_PORT")
        self.migrate()
        if self.with_emulator:
            self._spawn("emulator", [
                sys.executable, "-m", "app.emulator", "--port", str(self.emulator_port),
                "--user-id", EMULATOR_CREDENTIALS["user"],
                "--token", EMULATOR_CREDENTIALS["token"],
                "--secret", EMULATOR_CREDENTIALS["secret"], *self.emulator_args])
        self._spawn("service", [sys.executable, "-m", "gunicorn", "-c",
                                "config/gunicorn.conf.py", "wsgi:app"])
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        urls = [f"{self.service_url}/readyz"]
        if self.with_emulator:
            urls.insert(0, f"{self.emulator_url}/_emulator/idle")
        for url in urls:
            while True:
                for proc in self.processes:
                    if proc.poll() is not None:
                        self.stop()
                        raise SystemExit(f"a process exited early ({proc.args[2:4]}): "
                                         "see its output above")
                try:
                    if requests.get(url, timeout=1).status_code < 500:
                        break
                    raise requests.ConnectionError("not ready yet")
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise SystemExit(f"{url} did not answer in {timeout_s:.0f} s") from None
                    time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


# -- checking what was stored against what the emulator delivered -----------------------------

def _canonical(event: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """An event's fields as strings, so a JSON event and its GET form compare equal."""
    return tuple(sorted((k, ("true" if v else "false") if isinstance(v, bool) else str(v))
                        for k, v in event.items() if v is not None))


@dataclass
class Report:
    conferences: int = 0
    members: int = 0
    emitted: int = 0
    delivered: int = 0
    dropped: int = 0
    failed: int = 0
    stored: int = 0
    duplicates_collapsed: int = 0
    fallbacks: int = 0
    by_type: collections.Counter[str] = field(default_factory=collections.Counter)
    missing: list[dict[str, Any]] = field(default_factory=list)
    stored_twice: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stored_twice or self.unmatched)


def stored_events(stack: Stack, conference: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = requests.get(f"{stack.service_url}/api/v1/conferences/{conference}/events",
                            params=params, headers=stack.auth(), timeout=10)
        page.raise_for_status()
        body = page.json()
        events.extend(body["data"])
        cursor = body["nextCursor"]
        if not cursor:
            return events


def verify(stack: Stack, conference_ids: list[str]) -> Report:
    """Compare every event the emulator emitted with what the service stored, over HTTP."""
    report = Report()
    emitted = requests.get(f"{stack.emulator_url}/_emulator/events", auth=EMULATOR_AUTH,
                           timeout=10).json()["data"]
    for cid in conference_ids:
        report.conferences += 1
        stored = stored_events(stack, cid)
        view = requests.get(f"{stack.service_url}/api/v1/conferences/{cid}",
                            headers=stack.auth(), timeout=10).json()
        mine = [e for e in emitted if e["conferenceId"] == view["conferenceId"]]
        report.members += len(view["members"])
        by_content = collections.defaultdict(list)
        for event in stored:
            by_content[_canonical(event["payload"])].append(event)
            report.by_type[event["eventType"]] += 1
            report.duplicates_collapsed += event["deliveries"] - 1
            report.fallbacks += "fallback" in event["channels"]
            if event["match"] != "matched":
                report.unmatched.append(event)
        report.stored += len(stored)
        for record in mine:
            report.emitted += 1
            if record["outcome"] == "dropped":
                report.dropped += 1
                continue
            if record["outcome"] == "failed":
                report.failed += 1
                continue
            report.delivered += 1
            found = by_content.get(_canonical(record["event"]), [])
            if not found:
                report.missing.append(record)
            elif len(found) > 1:
                report.stored_twice.append(record)
    return report


def wait_idle(stack: Stack, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = requests.get(f"{stack.emulator_url}/_emulator/idle", params={"wait": 5},
                            timeout=10).json()
        if body["idle"]:
            return
    raise SystemExit("the emulator still had deliveries pending")


# -- demo -------------------------------------------------------------------------------------

DEMO = [
    ("POST callbacks", {"tag": "standup"}, {}),
    ("GET callbacks", {"tag": "all-hands", "callbackHttpMethod": "GET"}, {}),
    ("slow callback answer, then fallback", {"tag": "sales"}, {"slowCallback": 2}),
    ("callback URL down, fallback used", {"tag": "support"}, {"failCallback": 3}),
    ("provider retries: duplicates", {"tag": "retro"}, {"duplicate": 4}),
    ("events out of order", {"tag": "board"}, {"reorder": 2}),
    ("callback before the 201", {"tag": "race"}, {"early": 1}),
]


def demo(stack: Stack) -> int:
    session = requests.Session()
    session.headers.update(stack.auth())
    conference_ids = []
    for title, body, faults in DEMO:
        requests.post(f"{stack.emulator_url}/_emulator/faults", auth=EMULATOR_AUTH, json=faults,
                      timeout=5).raise_for_status()
        created = session.post(f"{stack.service_url}/api/v1/conferences",
                               json={"from": "+19195551212", **body}, timeout=15)
        if created.status_code != 201:
            print(f"create failed: {created.status_code} {created.text}", file=sys.stderr)
            return 1
        conference = created.json()
        conference_ids.append(conference["id"])
        run = requests.post(f"{stack.emulator_url}/_emulator/scenarios", auth=EMULATOR_AUTH,
                            json={"conferenceId": conference["conferenceId"], "members": 3,
                                  "stepMs": 30}, timeout=5)
        run.raise_for_status()
        wait_idle(stack)
        requests.post(f"{stack.emulator_url}/_emulator/faults", auth=EMULATOR_AUTH,
                      json=dict.fromkeys(faults, 0), timeout=5).raise_for_status()
        print(f"  played: {title:<40} conference {conference['id']}")
    report = verify(stack, conference_ids)
    print_report(report)
    return 0 if report.ok else 1


def print_report(report: Report) -> None:
    print(f"\nconferences: {report.conferences}   members: {report.members}")
    print(f"events emitted by the provider emulator: {report.emitted} "
          f"(delivered {report.delivered}, dropped on purpose {report.dropped}, "
          f"undeliverable {report.failed})")
    print(f"events stored: {report.stored}   duplicate deliveries collapsed: "
          f"{report.duplicates_collapsed}   arrived through the fallback URL: {report.fallbacks}")
    for event_type, n in sorted(report.by_type.items()):
        print(f"  {event_type:<22} {n}")
    if report.ok:
        print("every delivered event is stored exactly once, matched to its conference")
    else:
        print(f"PROBLEM: missing {len(report.missing)}, stored twice "
              f"{len(report.stored_twice)}, not matched {len(report.unmatched)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help="play scenarios end to end, print a summary, then stop")
    args = parser.parse_args(argv)
    # A plain `kill` must stop the children too: turn SIGTERM into an orderly exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    instance = ROOT / "instance"
    values = local_secrets(instance)
    service_port = int(os.environ.get("CONFHOOK_PORT", "8000"))
    emulator_port = int(os.environ.get("EMULATOR_PORT", "8001"))
    database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{instance / 'confhook.db'}"
    if args.demo:
        database_url = os.environ.get("DATABASE_URL") or f"sqlite:///{instance / 'demo.db'}"
    stack = Stack(service_port, emulator_port, database_url,
                  values["CONFHOOK_SECRET_KEY"], values["CONFHOOK_API_TOKENS"],
                  admin_password=values["ADMIN_PASSWORD"],
                  emulator_args=["--retry-delay", "0.5"],
                  # Text logs read better in a terminal; production defaults to JSON lines.
                  extra_env={"CONFHOOK_LOG_FORMAT":
                             os.environ.get("CONFHOOK_LOG_FORMAT", "text")},
                  log_dir=instance / "logs" if args.demo else None)
    with running(stack):
        if args.demo:
            print(f"service on {stack.service_url}, provider emulator on "
                  f"{stack.emulator_url}; playing {len(DEMO)} conferences")
            return demo(stack)
        token = stack.api_token
        print(f"""
confhook is running on {stack.service_url} (SQLite: {database_url.split(':///', 1)[1]})
provider emulator on {stack.emulator_url}, a test tool: its delivery log
  ({stack.emulator_url}/_emulator/deliveries) and other controls take its credentials,
  -u local-token:local-secret
API token for this checkout: {token}
Admin page: {stack.service_url}/admin/ (password: {stack.admin_password})

Create a conference:
  curl -s -X POST {stack.service_url}/api/v1/conferences -H 'Authorization: Bearer {token}' \\
       -H 'Content-Type: application/json' -d '{{"from": "+19195551212", "tag": "demo"}}'
Play a conference on it (members join, mute, hold, audio, leave):
  curl -s -X POST {stack.emulator_url}/_emulator/scenarios -u local-token:local-secret \\
       -H 'Content-Type: application/json' \\
       -d '{{"conferenceId": "<conferenceId from the answer above>"}}'
Read what was stored:
  curl -s {stack.service_url}/api/v1/conferences/<id>/events -H 'Authorization: Bearer {token}'

Ctrl-C stops both.""", flush=True)
        try:
            while all(p.poll() is None for p in stack.processes):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping", flush=True)
            return 0
        print("a process stopped unexpectedly; see its output above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
