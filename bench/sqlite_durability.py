"""What SQLite's durability setting costs on the delivery path, measured in one run.

Delivers N distinct conference-member events in-process (Flask test client, no network) to a
fresh SQLite database with CONFHOOK_SQLITE_SYNCHRONOUS=FULL, then NORMAL, and to a baseline
app that only parses the JSON and answers 204. Prints deliveries/s and ratios.

    .venv/bin/python -m bench.sqlite_durability [--events 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from flask import Flask, Response, request

from app import create_app
from app.cli import upgrade_database
from app.keys import callback_key

SECRET = "bench-secret-key-0123456789-abcdefghijkl"


def events(n: int) -> list[dict[str, object]]:
    return [{"eventType": "conference-member", "conferenceId": "conf-bench",
             "memberId": f"m-{i % 20}", "callId": f"c-{i % 20}", "state": "active",
             "activeMembers": i % 20 + 1, "mute": bool(i % 2), "hold": False,
             "time": f"2024-05-01T10:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z"}
            for i in range(n)]


def timed(app: Flask, path: str, batch: list[dict[str, object]]) -> float:
    client = app.test_client()
    started = time.perf_counter()
    for event in batch:
        response = client.post(path, json=event)
        assert response.status_code == 204, response.get_data()
    return time.perf_counter() - started


def service(folder: Path, synchronous: str) -> Flask:
    url = f"sqlite:///{folder / f'{synchronous}.db'}"
    upgrade_database(url)
    return create_app({
        "DATABASE_URL": url, "CONFHOOK_SQLITE_SYNCHRONOUS": synchronous,
        "CONFHOOK_SECRET_KEY": SECRET, "CONFHOOK_PUBLIC_URL": "http://127.0.0.1:8000",
        "CONFHOOK_API_TOKENS": "bench-token-0123456789", "CATAPULT_USER_ID": "u",
        "CATAPULT_API_TOKEN": "t", "CATAPULT_API_SECRET": "s",
    })


def baseline() -> Flask:
    app = Flask("baseline")

    @app.post("/callbacks/callback/shared/<key>")
    def parse_only(key: str) -> Response:
        request.get_json()
        return Response(status=204)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=3000)
    args = parser.parse_args()
    batch = events(args.events)
    path = f"/callbacks/callback/shared/{callback_key(SECRET, 'shared')}"
    with tempfile.TemporaryDirectory() as folder:
        results = {"baseline (parse, 204)": timed(baseline(), path, batch)}
        for mode in ("FULL", "NORMAL"):
            results[f"stored, synchronous={mode}"] = timed(service(Path(folder), mode), path,
                                                            batch)
    base = results["baseline (parse, 204)"]
    print(f"{args.events} distinct deliveries, in-process, one thread")
    for name, seconds in results.items():
        print(f"  {name:<28} {args.events / seconds:8.0f}/s  {seconds / args.events * 1e3:6.3f} ms"
              f"  x{seconds / base:5.1f} baseline")


if __name__ == "__main__":
    main()
