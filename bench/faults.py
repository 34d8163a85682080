"""Fault run: kill -9 gunicorn workers while deliveries flow; nothing answered 2xx is lost.

Sends distinct conference events from several threads to the service under gunicorn (the
production config, several workers), and, once a fifth of them were answered (however fast
the machine), kills a random worker with SIGKILL every ``--kill-every`` seconds, the first at
once (gunicorn starts a new one). Each delivery's answer is recorded:

- a 2xx names the stored event in ``X-Confhook-Event``; afterwards every one of them must be
  in the database with the payload that was sent;
- an error or a broken connection is what the provider would retry: the run retries those
  until they are answered 2xx, as the provider's retry or fallback would.

At the end every event sent must be stored exactly once (one row per event), and no row may
exist that was not sent. Exit status 0 only if so.

With ``--stop-database``/``--start-database`` the fault is a database outage instead: the
service must answer 503 (never a 2xx for what it did not store) while the database is down,
and store again once it is back, without a restart. With ``--lock-database SECONDS`` (SQLite)
another process holds the database's write lock that long (``BEGIN EXCLUSIVE``), as a backup
or a stray ``sqlite3`` shell would: deliveries wait up to ``--busy-timeout-ms``, then get 503.
With ``--unwritable SECONDS`` (SQLite) the database's files become unwritable that long, even
to root (``chattr +i``, as a read-only remount or a full disk would make them): every write
fails, so deliveries must get 503, and be stored again once the files are writable. With
``--full-disk`` (SQLite) the database lives on a file system of its own (a tmpfs), which
another file fills up mid-run for ``--outage`` seconds: writes fail with SQLITE_FULL, as on a
real full disk, until that file is deleted. With ``--reload-every SECONDS`` the master gets
``SIGHUP`` (``systemctl reload``) that often instead: new workers load the app while the old
ones go on answering, so no delivery may wait long; the run prints the slowest answers.
With ``--dead-host SECONDS`` (PostgreSQL on this machine; root and ``tc``) the database's host
dies mid-run with the service's connections open: nothing from the server's port arrives
any more. After SECONDS a standby takes the address (new connections are answered again),
while the connections opened before stay dead for good. A server frozen without closing
anything (a storage stall, a paused VM) is ``--stop-database "pkill -STOP -x postgres"
--start-database "pkill -CONT -x postgres"``. Either way a delivery must be answered within
``--delivery-wait-ms``, a 503 while the database does not answer. Every fault begins once a
fifth of the deliveries were answered, so that it falls among them however fast the machine.

    .venv/bin/python -m bench.faults                           # SQLite
    .venv/bin/python -m bench.faults --database-url postgresql+psycopg://…/faults
    .venv/bin/python -m bench.faults --database-url postgresql+psycopg://…/faults \
        --stop-database "pg_ctl -D DATA stop -m fast" --start-database "pg_ctl -D DATA start"
    .venv/bin/python -m bench.faults --lock-database 5 --busy-timeout-ms 1000
    .venv/bin/python -m bench.faults --unwritable 3                  # needs root and chattr
    .venv/bin/python -m bench.faults --full-disk --outage 3          # needs root (mount)
    .venv/bin/python -m bench.faults --reload-every 8 --workers 2
    .venv/bin/python -m bench.faults --database-url postgresql+psycopg://…/faults \
        --dead-host 5 --delivery-wait-ms 2000                     # needs root and tc
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy.engine import make_url

from scripts.local import Stack, running
from tests.netfault import Blackhole
from tests.servers import free_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--senders", type=int, default=12)
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--workers", default="3")
    parser.add_argument("--stop-database", metavar="COMMAND",
                        help="instead of killing workers: run this to stop the database "
                             "once, mid-run (e.g. pg_ctl … stop -m fast)")
    parser.add_argument("--start-database", metavar="COMMAND",
                        help="and this to start it again after --outage seconds")
    parser.add_argument("--outage", type=float, default=5.0)
    parser.add_argument("--lock-database", type=float, metavar="SECONDS",
                        help="instead of killing workers: hold SQLite's write lock from "
                             "another process this long, once, mid-run")
    parser.add_argument("--unwritable", type=float, metavar="SECONDS",
                        help="instead of killing workers: make SQLite's database files "
                             "immutable (chattr +i, needs root) this long, once, mid-run")
    parser.add_argument("--reload-every", type=float, metavar="SECONDS",
                        help="reload gunicorn (SIGHUP to the master) this often, no kills")
    parser.add_argument("--full-disk", action="store_true",
                        help="instead of killing workers: keep SQLite's database on a tmpfs "
                             "of its own (needs root) and fill it up, once, for --outage s")
    parser.add_argument("--dead-host", type=float, metavar="SECONDS",
                        help="instead of killing workers: the PostgreSQL server's port on "
                             "this machine falls silent (tc, needs root), once, mid-run; "
                             "after SECONDS new connections get answers, old ones never")
    parser.add_argument("--busy-timeout-ms", default="",
                        help="CONFHOOK_SQLITE_BUSY_TIMEOUT_MS (default: the service's)")
    parser.add_argument("--delivery-wait-ms", default="",
                        help="CONFHOOK_DELIVERY_WAIT_MS (default: the service's)")
    args = parser.parse_args(argv)
    if (args.lock_database or args.unwritable or args.full_disk) and args.database_url:
        parser.error("--lock-database, --unwritable and --full-disk are for SQLite")
    if args.dead_host and not (args.database_url or "").startswith("postgresql"):
        parser.error("--dead-host is for PostgreSQL")

    # A stop (timeout, Ctrl-C) still undoes the fault: the finally blocks run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = Path(tempfile.mkdtemp(prefix="confhook-faults-"))
    with own_disk(work / "disk" if args.full_disk else None) as disk:
        return run(args, work, disk or work)


@contextmanager
def own_disk(path: Path | None) -> Iterator[Path | None]:
    """A tmpfs of its own at ``path`` (root only), for the database to fill up; or nothing."""
    if path is None:
        yield None
        return
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "confhook-faults", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True)


def fill(path: Path) -> None:
    """Write ``path`` until its file system is full (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 4096, 512):
            zeros = b"\0" * chunk
            try:
                while True:
                    os.write(fd, zeros)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


def run(args: argparse.Namespace, work: Path, disk: Path) -> int:
    url = args.database_url or f"sqlite:///{disk / 'faults.db'}"
    extra_env = {"CONFHOOK_WORKERS": args.workers, "CONFHOOK_THREADS": "4"}
    if args.busy_timeout_ms:
        extra_env["CONFHOOK_SQLITE_BUSY_TIMEOUT_MS"] = args.busy_timeout_ms
    if args.delivery_wait_ms:
        extra_env["CONFHOOK_DELIVERY_WAIT_MS"] = args.delivery_wait_ms
    stack = Stack(free_port(), free_port(), url, secrets.token_urlsafe(32),
                  "faults-" + secrets.token_urlsafe(16), log_dir=work, extra_env=extra_env)
    with running(stack):
        conference = requests.post(f"{stack.service_url}/api/v1/conferences", timeout=15,
                                   json={"from": "+19195551212", "tag": "faults"},
                                   headers=stack.auth()).json()
        cid = conference["conferenceId"]
        bodies = [{"eventType": "conference-speak", "conferenceId": cid, "tag": "faults",
                   "status": "started", "n": n,
                   "time": f"2026-11-24T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:"
                           f"{n % 60:02d}.{n % 1000:03d}Z"} for n in range(args.events)]
        acknowledged: dict[int, int] = {}  # body index -> stored event id
        failures: list[int] = []
        kills = reloads = 0
        took: list[float] = []
        stop = threading.Event()
        master = stack.processes[-1].pid

        outages: list[float] = []
        open_connections: list[int] = []

        def after_a_fifth() -> bool:
            """Wait until a fifth of the deliveries were answered, so that the fault falls
            among them, some before and some after; False if the run ended first."""
            while sum(statuses.values()) < args.events // 5:
                if stop.wait(0.01):
                    return False
            return True

        def outage() -> None:
            if not after_a_fifth():
                return
            began = time.monotonic()
            subprocess.run(args.stop_database, shell=True, check=True,
                           capture_output=True)
            stop.wait(args.outage)
            subprocess.run(args.start_database, shell=True, check=True,
                           capture_output=True)
            outages.append(time.monotonic() - began)

        def lock() -> None:
            if not after_a_fifth():
                return
            holder = sqlite3.connect(disk / "faults.db", isolation_level=None, timeout=30)
            # SQLite's busy handler is not fair: under load the writers could starve this
            # connection for the whole run. So it gets in between two batches through the
            # writers' own file lock, then lets them go on to meet SQLite's lock.
            with open(disk / "faults.db-writer.lock", "a+b") as queue:
                fcntl.flock(queue.fileno(), fcntl.LOCK_EX)
                began = time.monotonic()
                holder.execute("BEGIN EXCLUSIVE")
            stop.wait(args.lock_database)
            holder.execute("ROLLBACK")
            holder.close()
            outages.append(time.monotonic() - began)

        def unwritable() -> None:
            if not after_a_fifth():
                return
            # The database and its write-ahead log. (Not the -shm index: SQLite maps it into
            # memory, and an immutable mapped file kills the process with SIGBUS, which no
            # disk does: SQLite allocates that file's pages before mapping them.)
            files = [str(disk / name) for name in ("faults.db", "faults.db-wal")]
            subprocess.run(["chattr", "+i", *files], check=True)
            began = time.monotonic()
            try:
                stop.wait(args.unwritable)
            finally:
                subprocess.run(["chattr", "-i", *files], check=True)
            outages.append(time.monotonic() - began)

        def full_disk() -> None:
            if not after_a_fifth():
                return
            filler = disk / "filler"
            fill(filler)
            began = time.monotonic()
            try:
                stop.wait(args.outage)
            finally:
                filler.unlink()  # space comes back
            outages.append(time.monotonic() - began)

        def dead_host() -> None:
            if not after_a_fifth():
                return
            hole = Blackhole(make_url(url).port or 5432)
            hole.start()
            began = time.monotonic()
            try:
                open_connections.append(hole.silence_open_connections())
                stop.wait(args.dead_host)
                hole.restore_port()
                outages.append(time.monotonic() - began)
                stop.wait()
            finally:
                hole.stop()

        def killer() -> None:
            nonlocal kills, reloads
            if args.stop_database:
                outage()
                return
            if args.dead_host:
                dead_host()
                return
            if args.lock_database:
                lock()
                return
            if args.unwritable:
                unwritable()
                return
            if args.full_disk:
                full_disk()
                return
            if args.reload_every:
                while not stop.wait(args.reload_every):
                    os.kill(master, signal.SIGHUP)
                    reloads += 1
                return
            # The first kill among the deliveries, on a fast machine too; then one every
            # --kill-every seconds.
            if not after_a_fifth():
                return
            while True:
                pids = worker_pids(master)
                if pids:
                    os.kill(random.choice(pids), signal.SIGKILL)
                    kills += 1
                if stop.wait(args.kill_every):
                    return

        statuses: dict[int, int] = {}

        def send(index: int) -> tuple[int, int | None]:
            sent = time.monotonic()
            try:
                response = requests.post(conference["callbackUrl"], json=bodies[index],
                                         timeout=10)
            except requests.RequestException:
                took.append(time.monotonic() - sent)
                return index, None
            took.append(time.monotonic() - sent)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 204:
                return index, int(response.headers["X-Confhook-Event"].split(";")[0])
            return index, None

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        started = time.monotonic()
        with ThreadPoolExecutor(args.senders) as pool:
            for index, event_id in pool.map(send, range(args.events)):
                if event_id is None:
                    failures.append(index)
                else:
                    acknowledged[index] = event_id
        elapsed = time.monotonic() - started
        stop.set()
        thread.join()
        if outages:
            during = (f"another process held the database's lock for {outages[0]:.1f} s"
                      if args.lock_database else
                      f"the database's files were unwritable for {outages[0]:.1f} s"
                      if args.unwritable else
                      f"the database's disk was full for {outages[0]:.1f} s"
                      if args.full_disk else
                      f"the database's host was dead for {outages[0]:.1f} s, and its "
                      f"{open_connections[0]} connections for good"
                      if args.dead_host else
                      f"the database was down for {outages[0]:.1f} s")
        elif args.reload_every:
            during = f"gunicorn reloaded {reloads} times"
        else:
            during = f"{kills} workers were killed"
        print(f"{args.events} deliveries in {elapsed:.1f} s while {during}: "
              f"{len(acknowledged)} answered 204, {len(failures)} failed or cut off "
              f"({statuses.get(503, 0)} of them 503)")
        slowest = sorted(took)[-3:]
        print(f"slowest answers: {', '.join(f'{t:.2f} s' for t in reversed(slowest))}; "
              f"{sum(t > 2.0 for t in took)} took over 2 s (our default callbackTimeout)")

        # The provider retries what was not acknowledged.
        retried = 0
        pending = list(failures)
        for _ in range(20):
            if not pending:
                break
            time.sleep(0.5)
            again = []
            for index in pending:
                index, event_id = send(index)
                if event_id is None:
                    again.append(index)
                else:
                    acknowledged[index] = event_id
                    retried += 1
            pending = again

        lost = []
        mismatched = []
        for index, event_id in acknowledged.items():
            response = requests.get(f"{stack.service_url}/api/v1/events/{event_id}",
                                    headers=stack.auth(), timeout=10)
            if response.status_code != 200:
                lost.append(index)
            elif response.json()["payload"] != bodies[index]:
                mismatched.append(index)
        stored = requests.get(f"{stack.service_url}/api/v1/conferences/{conference['id']}",
                              headers=stack.auth(), timeout=10).json()["events"]
        speak_rows = stored["byType"].get("conference-speak", 0)
        print(f"retried {retried} until answered; still unanswered: {len(pending)}")
        print(f"acknowledged and not found: {len(lost)}; found with another payload: "
              f"{len(mismatched)}; rows stored: {speak_rows} for {args.events} events")
        ok = not lost and not mismatched and not pending and speak_rows == args.events
    print("OK: nothing acknowledged was lost, every event stored once" if ok else "FAILED")
    return 0 if ok else 1


def worker_pids(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{master}\n" in status:
                pids.append(int(entry.name))
    return pids


if __name__ == "__main__":
    sys.exit(main())

