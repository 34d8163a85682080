"""Ingest benchmark: the service under gunicorn receiving callback deliveries from wrk.

In one run, with the same gunicorn config (``config/gunicorn.conf.py``) and load for each:

1. the baseline, a bare Flask app that parses each delivery and answers 204 (bench/baseline_app);
2. the durable floor (bench/floor_app): checks the key, parses, runs one ``INSERT … ON
   CONFLICT`` and commits with the service's durability, on the same kind of database;
3. the service's own app with the storing left out (bench/nostore_app): the request path alone;
4. the service (production config, JSON logs to a file) storing every delivery in the database;
5. with ``--instances 2``, two instances of the service on the one database, the same load
   split between them (half the connections each): their combined rate.

For each it prints events/s and p50/p99 latency, then the service's share of the floor (the
figure to hold) and of the baseline, and the CPU time each event cost: in the app's
processes (gunicorn), in the database server's (PostgreSQL; SQLite works inside the app's)
and in wrk's. On a machine whose cores the load, the app and the database share, the rates
follow these costs. Afterwards it checks over the API that every delivery
answered 2xx was stored.
With ``--memory`` it sends ``--events`` deliveries in rounds and prints each worker's RSS after
every round.

    .venv/bin/python -m bench.ingest                                  # SQLite, POST
    .venv/bin/python -m bench.ingest --method GET --duplicates 30
    .venv/bin/python -m bench.ingest --database-url postgresql+psycopg://…/bench
    .venv/bin/python -m bench.ingest --postgres --instances 2   # a throwaway PostgreSQL server
    .venv/bin/python -m bench.ingest --rounds 3 --seconds 10          # medians of 3 rounds
    .venv/bin/python -m bench.ingest --postgres --database-cores 1    # the server on its own CPU
    .venv/bin/python -m bench.ingest --memory --events 100000
    .venv/bin/python -m bench.ingest --rounds 3 --without group-commit   # a layer's worth

Needs wrk (Debian: ``apt-get install wrk``); ``--postgres`` needs PostgreSQL's server
binaries (Debian: ``apt-get install postgresql``), and starts its own server on a free port,
with the server's default durability (``fsync`` and ``synchronous_commit`` on).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import requests

from scripts.local import ROOT, Stack, running
from tests.servers import free_port

LUA = Path(__file__).resolve().parent / "deliveries.lua"


def wrk(url_base: str, targets: list[tuple[str, str]], *, seconds: float, connections: int,
        threads: int, method: str, duplicates: int, run: str) -> dict[str, Any]:
    env = {**os.environ, "BENCH_TARGETS": ",".join(f"{p}|{c}" for p, c in targets),
           "BENCH_METHOD": method, "BENCH_DUPLICATES": str(duplicates), "BENCH_RUN": run,
           "BENCH_TAG": "bench"}
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
            "--timeout", "10s", "-s", str(LUA), url_base]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def wrk_split(url_bases: list[str], targets: list[tuple[str, str]], *, connections: int,
              **load: Any) -> dict[str, Any]:
    """wrk against several instances at once, the connections shared out; rates added up,
    the slowest instance's latencies."""
    results: list[dict[str, Any]] = []
    each = max(1, connections // len(url_bases))

    def one(n: int, base: str) -> None:
        tag = f"{load['run']}i{n}"
        results.append(wrk(base, targets, connections=each, **{**load, "run": tag}))

    threads = [threading.Thread(target=one, args=item) for item in enumerate(url_bases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summed = ("requests", "non2xx", "connect_errors", "read_errors", "timeouts", "rate")
    return {**{k: sum(r[k] for r in results) for k in summed},
            **{k: max(r[k] for r in results) for k in ("p50_us", "p99_us")}}


@contextmanager
def postgres_server(work: Path, cores: set[int] | None = None) -> Iterator[str]:
    """A throwaway PostgreSQL server on a free loopback port, with the default durability;
    yields the database URL. Run as root, the server runs as the ``postgres`` user. With
    ``cores``, the server's processes run on those CPUs only."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not found:
        raise SystemExit("--postgres needs PostgreSQL's server: apt-get install postgresql")
    bindir = found[-1].parent
    data = work / "pgdata"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(work, "postgres")
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres"], check=True, capture_output=True)
    ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*ctl, "-l", str(data / "server.log"), "-w", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True,
                   preexec_fn=None if cores is None else lambda: os.sched_setaffinity(0, cores))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True)


@contextmanager
def served(app: str, port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """Serve the WSGI ``app`` under gunicorn with the service's config; yield its URL."""
    env = {**env, "CONFHOOK_BIND": f"127.0.0.1:{port}"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
                                 app], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{app} did not start: see {log}")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def worker_rss(master_pid: int) -> list[int]:
    """RSS in KiB of each gunicorn worker under ``master_pid``."""
    sizes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == str(master_pid):
            sizes.append(int(fields["VmRSS"].split()[0]))
    return sorted(sizes)


def cpu_seconds() -> dict[str, float]:
    """CPU time so far of the app's processes (gunicorn's), the database server's
    (PostgreSQL's) and wrk's (this process's children that have ended)."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups = {"app": 0.0, "database": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        group = ("database" if name.startswith("postgres") else
                 "app" if b"gunicorn" in command else None)
        if group is not None:
            user, system = fields.split()[11:13]
            groups[group] += (int(user) + int(system)) / ticks
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    groups["load"] = children.ru_utime + children.ru_stime
    return groups


def costed(measure: Any, *args: Any) -> dict[str, Any]:
    """``measure(*args)``'s result, with the CPU time per event (ms) of each group of
    processes."""
    before = cpu_seconds()
    result: dict[str, Any] = measure(*args)
    after = cpu_seconds()
    for group, seconds in after.items():
        result[f"cpu_{group}"] = (seconds - before.get(group, 0.0)) / max(
            result["requests"], 1) * 1000
    return result


def median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each measurement over rounds; requests and errors added up."""
    keys = ("rate", "p50_us", "p99_us", "cpu_app", "cpu_database", "cpu_load")
    summed = ("requests", "non2xx", "connect_errors", "read_errors", "timeouts")
    return {**{k: statistics.median(r[k] for r in results) for k in keys},
            **{k: sum(r[k] for r in results) for k in summed}}


def row(name: str, result: dict[str, Any]) -> str:
    errors = result["non2xx"] + result["connect_errors"] + result["read_errors"] + \
        result["timeouts"]
    return (f"| {name} | {result['rate']:,.0f} | {result['p50_us'] / 1000:.2f} ms | "
            f"{result['p99_us'] / 1000:.2f} ms | {result['requests']:,} | {errors} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--postgres", action="store_true",
                        help="start a throwaway PostgreSQL server and measure on it")
    parser.add_argument("--instances", type=int, choices=(1, 2), default=1,
                        help="2: also measure two instances of the service on one database")
    parser.add_argument("--database-cores", type=int, default=0,
                        help="with --postgres: run the server on this many CPUs of its own, "
                             "the apps and the load on the others (as on a host of its own)")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the three servers in turn this many times; medians")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--method", choices=("POST", "GET"), default="POST")
    parser.add_argument("--duplicates", type=int, default=0, help="percent of repeats")
    parser.add_argument("--conferences", type=int, default=20,
                        help="conferences the events are spread over (1: the worst case)")
    parser.add_argument("--workers", default="", help="CONFHOOK_WORKERS (default: config's)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                        help="CONFHOOK_SQLITE_SYNCHRONOUS")
    parser.add_argument("--server-threads", default="",
                        help="CONFHOOK_THREADS (default: config's)")
    parser.add_argument("--memory", action="store_true",
                        help="send --events deliveries in rounds, print worker RSS")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--without", choices=("group-commit", "file-lock", "delivery-pool",
                                                  "entrance", "statement-cache"),
                        help="also measure the service with this layer taken out "
                             "(bench/variant_app.py)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")

    cpus = sorted(os.sched_getaffinity(0))
    if args.database_cores and (not args.postgres or args.database_cores >= len(cpus)):
        raise SystemExit(f"--database-cores needs --postgres and fewer than the {len(cpus)} "
                         "CPUs this process may use")
    work = Path(tempfile.mkdtemp(prefix="confhook-bench-"))
    try:
        with ExitStack() as database:
            if args.postgres:
                own = set(cpus[len(cpus) - args.database_cores:]) if args.database_cores else None
                args.database_url = database.enter_context(postgres_server(work, own))
                if own:
                    # Everything started from here on (gunicorn, wrk) inherits the rest.
                    os.sched_setaffinity(0, set(cpus) - own)
                    print(f"the database server on CPUs {sorted(own)}, the apps and the load "
                          f"on {sorted(set(cpus) - own)}")
            return _measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args: argparse.Namespace, work: Path) -> int:
    url = args.database_url or f"sqlite:///{work / 'ingest.db'}"
    extra = {"CONFHOOK_LOG_FORMAT": "json", "CONFHOOK_SQLITE_SYNCHRONOUS": args.synchronous}
    if args.workers:
        extra["CONFHOOK_WORKERS"] = args.workers
    if args.server_threads:
        extra["CONFHOOK_THREADS"] = args.server_threads
    load = {"connections": args.connections, "threads": args.threads, "method": args.method,
            "duplicates": args.duplicates}
    print(f"database: {url.split('@')[-1]}; {args.method}, {args.duplicates} % duplicates, "
          f"{args.conferences} conferences, {args.connections} connections, "
          f"{args.seconds:g} s per measurement, {args.rounds} round(s)")

    names = {"baseline": "baseline (parse, 204)",
             "floor": "durable floor (key, parse, one INSERT, commit)",
             "nostore": "confhook, storing left out", "service": "confhook (store)"}
    if args.instances == 2:
        names["pair"] = "confhook, two instances (combined)"
    if args.without:
        names["variant"] = f"confhook without {args.without}"
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    stack = Stack(free_port(), free_port(), url, secrets.token_urlsafe(32),
                  "bench-" + secrets.token_urlsafe(16), extra_env=extra, log_dir=work)
    with running(stack), ExitStack() as servers:
        conferences = []
        for _ in range(args.conferences):
            created = requests.post(f"{stack.service_url}/api/v1/conferences", timeout=15,
                                    json={"from": "+19195551212", "tag": "bench",
                                          "callbackHttpMethod": args.method},
                                    headers=stack.auth())
            created.raise_for_status()
            conferences.append(created.json())
        targets = [("/" + c["callbackUrl"].split("/", 3)[3], c["conferenceId"])
                   for c in conferences]
        run = secrets.token_hex(3)
        answered = 0
        master = stack.processes[-1].pid
        if args.memory:
            warm = wrk(stack.service_url, targets, seconds=args.warmup, run=f"{run}w", **load)
            answered += warm["requests"] - warm["non2xx"]
            print("| after events | RSS of each worker (MiB) |\n|---|---|")
            print(f"| {answered:,} | "
                  f"{', '.join(f'{kib / 1024:.1f}' for kib in worker_rss(master))} |")
            round_no = 0
            while answered < args.events:
                round_no += 1
                result = wrk(stack.service_url, targets, seconds=args.seconds,
                             run=f"{run}m{round_no}", **load)
                answered += result["requests"] - result["non2xx"]
                print(f"| {answered:,} | "
                      f"{', '.join(f'{kib / 1024:.1f}' for kib in worker_rss(master))} |",
                      flush=True)
        else:
            # All three are up at once and measured in turn, round after round, so that the
            # machine's moods fall on each alike. The baseline accepts any key; the app with
            # the storing left out has the service's secret, so the same URLs verify there.
            plain = {k: v for k, v in os.environ.items() if not k.startswith("CONFHOOK_")}
            floor_url = args.database_url or f"sqlite:///{work / 'floor.db'}"
            urls = {
                "baseline": servers.enter_context(served(
                    "bench.baseline_app:app", free_port(), {**plain, **extra},
                    work / "baseline.log")),
                "floor": servers.enter_context(served(
                    "bench.floor_app:app", free_port(),
                    {**plain, **extra, "CONFHOOK_SECRET_KEY": stack.secret_key,
                     "FLOOR_DATABASE_URL": floor_url}, work / "floor.log")),
                "nostore": servers.enter_context(served(
                    "bench.nostore_app:app", free_port(), stack.env(), work / "nostore.log")),
                "service": stack.service_url,
            }
            if args.instances == 2:
                # A second instance, as behind a balancer: same database, secret, URLs.
                second = Stack(free_port(), stack.emulator_port, url, stack.secret_key,
                               stack.api_token, extra_env=extra, with_emulator=False,
                               log_dir=work / "second")
                servers.enter_context(running(second))
                urls["pair"] = f"{stack.service_url} {second.service_url}"
            if args.without:
                urls["variant"] = servers.enter_context(served(
                    "bench.variant_app:app", free_port(),
                    {**stack.env(), "BENCH_WITHOUT": args.without}, work / "variant.log"))
            storing = ("service", "variant", "pair")

            def measure(name: str, seconds: float, tag: str) -> dict[str, Any]:
                bases = urls[name].split()
                if len(bases) > 1:
                    return wrk_split(bases, targets, seconds=seconds, run=tag, **load)
                return wrk(bases[0], targets, seconds=seconds, run=tag, **load)

            for name in urls:
                warm = measure(name, args.warmup, f"{run}{name}w")
                if name in storing:
                    answered += warm["requests"] - warm["non2xx"]
            for round_no in range(args.rounds):
                for name in urls:
                    result = costed(measure, name, args.seconds, f"{run}{name}{round_no}")
                    rounds[name].append(result)
                    if name in storing:
                        answered += result["requests"] - result["non2xx"]
        time.sleep(1)
        stored = distinct = 0
        for conference in conferences:
            view = requests.get(f"{stack.service_url}/api/v1/conferences/{conference['id']}",
                                headers=stack.auth(), timeout=30).json()
            stored += view["events"]["deliveries"] - 1  # less the emulator's "created"
            distinct += view["events"]["total"] - 1

    if not args.memory:
        print("\n| server | events/s | p50 | p99 | requests | errors |\n|---|---|---|---|---|---|")
        for name, label in names.items():
            print(row(label, median(rounds[name])))
        print("\n| server | CPU per event: app | database server | wrk |\n|---|---|---|---|")
        for name, label in names.items():
            cost = median(rounds[name])
            print(f"| {label} | {cost['cpu_app']:.3f} ms | {cost['cpu_database']:.3f} ms | "
                  f"{cost['cpu_load']:.3f} ms |")
        shares = [(s["rate"] / f["rate"], s["rate"] / b["rate"], n["rate"] / b["rate"])
                  for b, f, n, s in zip(rounds["baseline"], rounds["floor"], rounds["nostore"],
                                        rounds["service"], strict=True)]
        if len(shares) > 1:
            print(f"\n(medians of {len(shares)} rounds; service/floor by round: "
                  + ", ".join(f"{a:.2f}" for a, _, _ in shares) + ")")
        floor, share, alone = (statistics.median(s[i] for s in shares) for i in range(3))
        print(f"\nconfhook stores {floor:.2f} of the durable floor's rate; it reaches "
              f"{share:.0%} of the bare baseline's, and without storing {alone:.0%}")
        if args.instances == 2:
            pairs = [p["rate"] / s["rate"] for s, p in zip(rounds["service"], rounds["pair"],
                                                            strict=True)]
            print(f"two instances store {statistics.median(pairs):.2f} times what one does "
                  f"(by round: " + ", ".join(f"{g:.2f}" for g in pairs) + ")")
        if args.without:
            gains = [s["rate"] / v["rate"] for s, v in zip(rounds["service"], rounds["variant"],
                                                           strict=True)]
            print(f"with {args.without}, confhook stores {statistics.median(gains):.2f} times "
                  f"what it stores without it (by round: "
                  + ", ".join(f"{g:.2f}" for g in gains) + ")")
    # wrk counts only the answers it read before its time was up: the server may have stored
    # a few more (answered, but after wrk stopped reading). Fewer would be a loss.
    print(f"deliveries answered 2xx: {answered:,}; stored: {stored:,} "
          f"({distinct:,} distinct events)")
    status = 0
    if stored < answered:
        print(f"LOST: {answered - stored} acknowledged deliveries are not in the database")
        status = 1
    # An error is answered faster than a delivery is stored: a rate with errors in it
    # measures something else (a stand-in app out of step with the intake, say).
    for name, label in names.items():
        errors = sum(result["non2xx"] for result in rounds[name])
        if errors:
            print(f"NOT A MEASUREMENT: {label} answered {errors:,} requests with an error")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
