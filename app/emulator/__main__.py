"""Run the provider emulator: ``python -m app.emulator --host 127.0.0.1 --port 8001``."""

from __future__ import annotations

import argparse
import os
import sys

from werkzeug.serving import run_simple

from app.emulator import EmulatorConfig, create_app


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m app.emulator",
        description="Emulate the provider's v1 conference API and fire real callbacks.")
    parser.add_argument("--host", default=env.get("EMULATOR_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("EMULATOR_PORT", "8001")))
    parser.add_argument("--user-id", default=env.get("EMULATOR_USER_ID", defaults.user_id))
    parser.add_argument("--token", default=env.get("EMULATOR_TOKEN", defaults.token))
    parser.add_argument("--secret", default=env.get("EMULATOR_SECRET", defaults.secret))
    parser.add_argument("--retries", type=int,
                        default=int(env.get("EMULATOR_RETRIES", str(defaults.retries))),
                        help="times a failed delivery (callback then fallback) is retried")
    parser.add_argument("--retry-delay", type=float,
                        default=float(env.get("EMULATOR_RETRY_DELAY",
                                              str(defaults.retry_delay_s))),
                        help="seconds before a retry")
    parser.add_argument("--media-ms", type=int,
                        default=int(env.get("EMULATOR_MEDIA_MS", str(defaults.media_ms))),
                        help="how long audio and speech last before their done event")
    args = parser.parse_args(argv)
    if args.retries < 0 or args.retry_delay < 0 or args.media_ms < 0:
        parser.error("--retries, --retry-delay and --media-ms must not be negative")
    app = create_app(EmulatorConfig(user_id=args.user_id, token=args.token,
                                    secret=args.secret, retries=args.retries,
                                    retry_delay_s=args.retry_delay, media_ms=args.media_ms))
    print(f"provider emulator on http://{args.host}:{args.port} (user {args.user_id})",
          file=sys.stderr, flush=True)
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
