"""How fast the query API answers on big tables, next to a bare primary-key lookup.

Builds (or reuses) a database of 50,000 conferences and 1,000,000 events, then times, through
the API in-process (Flask test client: routing, auth, validation, query, JSON):

- a page of one conference's events,
- a page of events filtered by type and tag,
- one conference's view (with its members and event counts),

each next to a bare primary-key lookup of an event through SQLAlchemy, measured in the same
run. Prints median and p95 per request, and the ratio to the lookup.

    .venv/bin/python -m bench.query [--events 1000000] [--conferences 50000]
        [--database-url sqlite:///instance/bench-query.db] [--samples 300] [--rebuild]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from app import create_app
from app.cli import upgrade_database
from app.models import Conference, Event, Member

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
TYPES = ("conference", "conference-member", "conference-playback", "conference-speak")
TAGS = 1000
START = datetime(2026, 1, 1)


def build(url: str, conferences: int, events: int) -> None:
    """Fill an empty, migrated database: conferences with members and their events."""
    engine = create_engine(url)
    per = events // conferences
    batch_conf: list[dict[str, Any]] = []
    batch_member: list[dict[str, Any]] = []
    batch_event: list[dict[str, Any]] = []
    started = time.perf_counter()
    with engine.begin() as conn:
        if url.startswith("sqlite"):
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
        for c in range(conferences):
            pk = f"cf{c:016x}"
            created = START + timedelta(seconds=c * 60)
            tag = f"tag-{c % TAGS}"
            batch_conf.append({
                "id": pk, "conference_id": f"conf-{c}", "tag": tag,
                "from_number": "+19195551212", "callback_url": "http://h/cb",
                "fallback_url": "http://h/fb", "callback_method": "POST",
                "callback_timeout_ms": 2000, "state": "completed", "created_at": created,
                "updated_at": created, "created_time": created,
                "completed_time": created + timedelta(seconds=per),
                "active_members": 0, "last_event_at": created + timedelta(seconds=per)})
            for m in range(3):
                batch_member.append({
                    "conference_pk": pk, "member_id": f"member-{c}-{m}", "call_id": f"c-{c}-{m}",
                    "state": "completed", "joined_at": created + timedelta(seconds=m + 1),
                    "left_at": created + timedelta(seconds=per - 3 + m), "mute": False,
                    "hold": False})
            for e in range(per):
                at = created + timedelta(seconds=e)
                event_type = TYPES[0] if e in (0, per - 1) else TYPES[1 + e % 3]
                payload = {"eventType": event_type, "conferenceId": f"conf-{c}", "tag": tag,
                           "time": at.isoformat() + "Z"}
                batch_event.append({
                    "conference_pk": pk, "event_type": event_type, "unknown_type": False,
                    "conference_id": f"conf-{c}", "member_id": f"member-{c}-{e % 3}",
                    "call_id": f"c-{c}-{e % 3}", "status": "active", "tag": tag,
                    "active_members": 1, "mute": False, "hold": False, "event_time": at,
                    "occurred_at": at, "payload": payload,
                    "dedup_key": hashlib.sha256(f"{c}/{e}".encode()).hexdigest(),
                    "first_received_at": at, "last_received_at": at, "deliveries": 1,
                    "channels": 1, "method": "POST", "match": "matched"})
            if len(batch_event) >= 20_000 or c == conferences - 1:
                conn.execute(insert(Conference), batch_conf)
                conn.execute(insert(Member), batch_member)
                conn.execute(insert(Event), batch_event)
                batch_conf, batch_member, batch_event = [], [], []
        if not url.startswith("sqlite"):
            conn.exec_driver_sql("ANALYZE")
    if url.startswith("sqlite"):
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    print(f"built {conferences} conferences, {events} events in "
          f"{time.perf_counter() - started:.0f} s")


def timings(fn: Callable[[int], Any], samples: int, rng: random.Random, hi: int
            ) -> list[float]:
    for _ in range(20):
        fn(rng.randrange(hi))
    out = []
    for _ in range(samples):
        arg = rng.randrange(hi)
        started = time.perf_counter()
        fn(arg)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--conferences", type=int, default=50_000)
    parser.add_argument("--database-url",
                        default=f"sqlite:///{ROOT / 'instance' / 'bench-query.db'}")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    url = args.database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if args.rebuild and path.exists():
            path.unlink()
        fresh = not path.exists()
    else:
        engine = create_engine(url)
        with engine.begin() as conn:
            if args.rebuild:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
        fresh = True
    upgrade_database(url)
    probe = create_engine(url)
    with probe.connect() as conn:
        have = conn.scalar(select(func.count()).select_from(Event))
    probe.dispose()
    if fresh or have == 0:
        build(url, args.conferences, args.events)
    elif have != args.events:
        raise SystemExit(f"{url} holds {have} events, not {args.events}: use --rebuild")

    app = create_app({
        "DATABASE_URL": url, "CONFHOOK_SECRET_KEY": "b" * 40,
        "CONFHOOK_PUBLIC_URL": "http://127.0.0.1:8000", "CONFHOOK_API_TOKENS": TOKEN,
        "CATAPULT_USER_ID": "u", "CATAPULT_API_TOKEN": "t", "CATAPULT_API_SECRET": "s"})
    client = app.test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    rng = random.Random(7)
    engine = create_engine(url)
    conn = engine.connect()
    pk_lookup = select(Event).where(Event.id == text(":id")).limit(1)
    per = args.events // args.conferences

    def get(path: str) -> None:
        response = client.get(path, headers=auth)
        assert response.status_code == 200, response.get_data()
        json.loads(response.get_data())

    cases: dict[str, Callable[[int], Any]] = {
        "bare primary-key lookup (SQLAlchemy)":
            lambda i: conn.execute(pk_lookup, {"id": i + 1}).first(),
        "GET one event by id (API)": lambda i: get(f"/api/v1/events/{i + 1}"),
        f"page of a conference's events ({per})":
            lambda i: get(f"/api/v1/conferences/cf{i:016x}/events"),
        "page of events by type and tag (100)":
            lambda i: get(f"/api/v1/events?eventType=conference-member&tag=tag-{i % TAGS}"),
        "one conference view": lambda i: get(f"/api/v1/conferences/cf{i:016x}"),
    }
    his = {"bare primary-key lookup (SQLAlchemy)": args.events,
           "GET one event by id (API)": args.events}
    results = {name: timings(fn, args.samples, rng, his.get(name, args.conferences))
               for name, fn in cases.items()}
    conn.close()
    engine.dispose()
    base = statistics.median(results["bare primary-key lookup (SQLAlchemy)"])
    backend = parsed.get_backend_name()
    print(f"{backend}: {args.conferences} conferences, {args.events} events; "
          f"{args.samples} samples each, in-process")
    print(f"  {'':<40} {'median':>9} {'p95':>9} {'x lookup':>9}")
    for name, values in results.items():
        values.sort()
        median = statistics.median(values)
        p95 = values[int(len(values) * 0.95) - 1]
        print(f"  {name:<40} {median:7.3f}ms {p95:7.3f}ms {median / base:9.1f}")


if __name__ == "__main__":
    main()
