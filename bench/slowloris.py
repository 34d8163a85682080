"""Slow clients against the delivery path: gunicorn alone, and behind nginx as the README ships it.

Opens ``--slow`` connections that send a request head one header line per second and never
finish, then times ``--deliveries`` ordinary deliveries sent meanwhile. Prints the worst
delivery time and the failures, first straight to gunicorn, then through nginx configured as in
the README (request buffering, ``client_header_timeout``/``client_body_timeout`` 10 s).

    .venv/bin/python -m bench.slowloris [--slow 200]

Needs nginx (Debian: ``apt-get install nginx-light``).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path

import requests

from scripts.local import Stack, running
from tests.servers import free_port

NGINX = """pid {work}/nginx.pid; error_log {work}/nginx.err; worker_processes 1; daemon on;
events {{ worker_connections 4096; }}
http {{
  access_log off; client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  upstream confhook {{ server 127.0.0.1:{upstream}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 64k; client_header_timeout 10s; client_body_timeout 10s;
    location / {{
      proxy_pass http://confhook; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_read_timeout 15s;
    }}
  }}
}}
"""


def attack(port: int, path: str, count: int) -> tuple[list[socket.socket], threading.Event]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n".encode())
        socks.append(sock)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(1):
            for sock in socks:
                with suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")

    threading.Thread(target=drip, daemon=True).start()
    return socks, stop


def deliveries(port: int, path: str, conference_id: str, count: int, start: int
               ) -> tuple[float, int]:
    worst, failed = 0.0, 0
    for n in range(start, start + count):
        began = time.perf_counter()
        try:
            response = requests.post(f"http://127.0.0.1:{port}{path}", timeout=20, json={
                "eventType": "conference-speak", "conferenceId": conference_id,
                "status": "started", "time": f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z"})
            ok = response.status_code == 204
        except requests.RequestException:
            ok = False
        worst = max(worst, time.perf_counter() - began)
        failed += not ok
    return worst, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--deliveries", type=int, default=20)
    args = parser.parse_args(argv)
    if shutil.which("nginx") is None:
        raise SystemExit("nginx is missing: apt-get install nginx-light")
    work = Path(tempfile.mkdtemp(prefix="confhook-slow-"))
    stack = Stack(free_port(), free_port(), f"sqlite:///{work / 'slow.db'}",
                  secrets.token_urlsafe(32), "slow-" + secrets.token_urlsafe(16), log_dir=work)
    nginx_port = free_port()
    with running(stack):
        (work / "nginx.conf").write_text(NGINX.format(work=work, upstream=stack.service_port,
                                                      port=nginx_port))
        subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work)], check=True)
        try:
            conference = requests.post(f"{stack.service_url}/api/v1/conferences", timeout=15,
                                       json={"from": "+19195551212"},
                                       headers=stack.auth()).json()
            path = "/" + conference["callbackUrl"].split("/", 3)[3]
            print(f"{args.slow} slow connections, {args.deliveries} deliveries meanwhile\n")
            print("| path | worst delivery | failed |\n|---|---|---|")
            for name, port, start in (("straight to gunicorn", stack.service_port, 0),
                                      ("through nginx", nginx_port, 1000)):
                socks, stop = attack(port, path, args.slow)
                time.sleep(1.5)
                worst, failed = deliveries(port, path, conference["conferenceId"],
                                           args.deliveries, start)
                stop.set()
                for sock in socks:
                    sock.close()
                print(f"| {name} | {worst * 1000:,.0f} ms | {failed} |", flush=True)
                time.sleep(2)
        finally:
            subprocess.run(["nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-s",
                            "stop"], check=False, capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
