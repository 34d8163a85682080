"""Settings from the environment: parsed strictly, failing fast with a clear message.

Nothing under ``app/`` reads ``os.environ``; ``create_app()`` calls :func:`load` once and
the rest of the code reads ``current_app.config``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config.env import number

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_ROOT / 'instance' / 'confhook.db'}"
DEFAULT_CATAPULT_API_URL = "https://api.catapult.inetwork.com"

# The provider documents 10,000 ms as the maximum callbackTimeout and gives no default; its
# own example uses 2,000 ms. We default to that: long enough for a committed insert on a
# loaded database, short enough that the fallback URL takes over quickly when we are down.
DEFAULT_CALLBACK_TIMEOUT_MS = 2000
CALLBACK_TIMEOUT_RANGE = (100, 10_000)

MIN_SECRET_LENGTH = 32
MIN_TOKEN_LENGTH = 16


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def _text(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def _required(env: Mapping[str, str], name: str, problems: list[str]) -> str:
    value = _text(env, name)
    if value is None:
        problems.append(f"{name} is required")
        return ""
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int,
         problems: list[str]) -> int:
    return int(number(env, name, default, lo, hi, int, problems))


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float,
           problems: list[str]) -> float:
    return float(number(env, name, default, lo, hi, float, problems))


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...],
            problems: list[str]) -> str:
    raw = _text(env, name, default)
    assert raw is not None
    value = raw.upper() if choices[0].isupper() else raw.lower()
    if value not in choices:
        problems.append(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return default
    return value


def _base_url(name: str, value: str, problems: list[str]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"{name} must be an absolute http(s) URL, got {value!r}")
    elif parts.query or parts.fragment:
        problems.append(f"{name} must not have a query or fragment")
    return value.rstrip("/")


def _secret_list(raw: str | None, name: str, min_length: int, problems: list[str]) -> list[str]:
    items = [item.strip() for item in (raw or "").split(",") if item.strip()]
    for item in items:
        if len(item) < min_length:
            problems.append(f"each value of {name} must be at least {min_length} characters")
            break
    return items


def load(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the Flask config mapping for ``environ`` (``os.environ`` by default).

    Every problem is collected and reported together, so a deploy fails once, not once per
    missing variable.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []

    secret = _required(env, "CONFHOOK_SECRET_KEY", problems)
    if secret and len(secret) < MIN_SECRET_LENGTH:
        problems.append(f"CONFHOOK_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters")
    old_secrets = _secret_list(env.get("CONFHOOK_OLD_SECRET_KEYS"), "CONFHOOK_OLD_SECRET_KEYS",
                               MIN_SECRET_LENGTH, problems)

    public_url = _required(env, "CONFHOOK_PUBLIC_URL", problems)
    if public_url:
        public_url = _base_url("CONFHOOK_PUBLIC_URL", public_url, problems)
    fallback_url = _text(env, "CONFHOOK_FALLBACK_URL")
    fallback_url = (_base_url("CONFHOOK_FALLBACK_URL", fallback_url, problems)
                    if fallback_url else public_url)

    api_url = _base_url("CATAPULT_API_URL",
                        _text(env, "CATAPULT_API_URL", DEFAULT_CATAPULT_API_URL) or "", problems)

    tokens = _secret_list(env.get("CONFHOOK_API_TOKENS"), "CONFHOOK_API_TOKENS",
                          MIN_TOKEN_LENGTH, problems)
    if not tokens:
        problems.append("CONFHOOK_API_TOKENS is required (comma-separated bearer tokens)")

    # Several hashes (comma-separated) let the password change without locking anyone out.
    admin_hashes = [h.strip() for h in (_text(env, "CONFHOOK_ADMIN_PASSWORD_HASH") or ""
                                        ).split(",") if h.strip()]
    if any(not h.startswith(("scrypt:", "pbkdf2:")) for h in admin_hashes):
        problems.append("CONFHOOK_ADMIN_PASSWORD_HASH must be a hash from "
                        "`flask --app wsgi hash-password`, not the password itself")
    metrics_token = _text(env, "CONFHOOK_METRICS_TOKEN")
    if metrics_token and len(metrics_token) < MIN_TOKEN_LENGTH:
        problems.append(f"CONFHOOK_METRICS_TOKEN must be at least {MIN_TOKEN_LENGTH} characters")
    cookie_secure_raw = (_text(env, "CONFHOOK_COOKIE_SECURE") or "").lower()
    if cookie_secure_raw not in ("", "true", "false"):
        problems.append("CONFHOOK_COOKIE_SECURE must be true or false")
    # Secure cookies whenever the service is reached over TLS, unless told otherwise.
    cookie_secure = (cookie_secure_raw == "true" if cookie_secure_raw
                     else public_url.startswith("https://"))

    proxies = [p.strip() for p in (_text(env, "CONFHOOK_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
                                   or "").split(",") if p.strip()]
    for proxy in proxies:
        if proxy != "*":
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                problems.append(f"CONFHOOK_FORWARDED_ALLOW_IPS: {proxy!r} is not an address "
                                "or a network")

    database_url = _text(env, "DATABASE_URL", DEFAULT_DATABASE_URL)
    assert database_url is not None
    if database_url.startswith("postgres://"):
        problems.append("DATABASE_URL: write postgresql+psycopg://, not postgres://")
    elif not database_url.startswith(("sqlite:", "postgresql")):
        problems.append("DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL")

    config: dict[str, Any] = {
        "SECRET_KEY": secret,
        # Admin sessions signed under an earlier secret stay valid while it is listed.
        "SECRET_KEY_FALLBACKS": old_secrets,
        "CONFHOOK_SECRET_KEY": secret,
        "CONFHOOK_OLD_SECRET_KEYS": old_secrets,
        "DATABASE_URL": database_url,
        "CONFHOOK_SQLITE_SYNCHRONOUS": _choice(env, "CONFHOOK_SQLITE_SYNCHRONOUS", "FULL",
                                               ("FULL", "NORMAL"), problems),
        "CONFHOOK_PUBLIC_URL": public_url,
        "CONFHOOK_FALLBACK_URL": fallback_url,
        "CONFHOOK_CALLBACK_METHOD": _choice(env, "CONFHOOK_CALLBACK_METHOD", "POST",
                                            ("POST", "GET"), problems),
        "CONFHOOK_CALLBACK_TIMEOUT_MS": _int(env, "CONFHOOK_CALLBACK_TIMEOUT_MS",
                                             DEFAULT_CALLBACK_TIMEOUT_MS,
                                             *CALLBACK_TIMEOUT_RANGE, problems),
        "CONFHOOK_API_TOKENS": tokens,
        "CONFHOOK_REJECTION_FLUSH_MS": _int(env, "CONFHOOK_REJECTION_FLUSH_MS", 1000,
                                            0, 60_000, problems),
        "CONFHOOK_SQLITE_BUSY_TIMEOUT_MS": _int(env, "CONFHOOK_SQLITE_BUSY_TIMEOUT_MS", 10_000,
                                                100, 25_000, problems),
        # The provider waits at most 10 s (its largest callbackTimeout) for an answer.
        "CONFHOOK_DELIVERY_WAIT_MS": _int(env, "CONFHOOK_DELIVERY_WAIT_MS", 10_000,
                                          100, 25_000, problems),
        "CONFHOOK_MAX_BODY_BYTES": _int(env, "CONFHOOK_MAX_BODY_BYTES", 64 * 1024,
                                        1024, 16 * 1024 * 1024, problems),
        "CONFHOOK_ADMIN_PASSWORD_HASHES": admin_hashes,
        "CONFHOOK_METRICS_TOKEN": metrics_token,
        "CONFHOOK_FORWARDED_ALLOW_IPS": proxies,
        # Of a worker's threads (CONFHOOK_THREADS, 4), two stay free for deliveries.
        "CONFHOOK_READ_CONCURRENCY": _int(
            env, "CONFHOOK_READ_CONCURRENCY",
            max(1, _int(env, "CONFHOOK_THREADS", 4, 1, 256, problems) - 2), 1, 256, problems),
        "CONFHOOK_ADMIN_IDLE_MINUTES": _int(env, "CONFHOOK_ADMIN_IDLE_MINUTES", 30, 1, 24 * 60,
                                            problems),
        "CONFHOOK_ADMIN_SESSION_HOURS": _int(env, "CONFHOOK_ADMIN_SESSION_HOURS", 12, 1, 24 * 7,
                                             problems),
        # Set by config/gunicorn.conf.py: where every worker keeps its metric samples.
        "PROMETHEUS_MULTIPROC_DIR": _text(env, "PROMETHEUS_MULTIPROC_DIR"),
        "CONFHOOK_LOG_FORMAT": _choice(env, "CONFHOOK_LOG_FORMAT", "json", ("json", "text"),
                                       problems),
        "SESSION_COOKIE_NAME": "confhook_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Strict",
        "SESSION_COOKIE_SECURE": cookie_secure,
        "PERMANENT_SESSION_LIFETIME": 12 * 3600,
        "CATAPULT_API_URL": api_url,
        "CATAPULT_USER_ID": _required(env, "CATAPULT_USER_ID", problems),
        "CATAPULT_API_TOKEN": _required(env, "CATAPULT_API_TOKEN", problems),
        "CATAPULT_API_SECRET": _required(env, "CATAPULT_API_SECRET", problems),
        "CATAPULT_CONNECT_TIMEOUT_S": _float(env, "CATAPULT_CONNECT_TIMEOUT_S", 3.05,
                                             0.1, 60, problems),
        "CATAPULT_READ_TIMEOUT_S": _float(env, "CATAPULT_READ_TIMEOUT_S", 10.0,
                                          0.1, 120, problems),
        "CATAPULT_RETRIES": _int(env, "CATAPULT_RETRIES", 2, 0, 10, problems),
    }
    if problems:
        raise ConfigError("; ".join(problems))
    return config
