from __future__ import annotations

import pytest

from config import settings

BASE = {
    "CONFHOOK_SECRET_KEY": "s" * 40,
    "CONFHOOK_PUBLIC_URL": "https://hooks.example.com/",
    "CONFHOOK_API_TOKENS": "a" * 20,
    "CATAPULT_USER_ID": "u-1",
    "CATAPULT_API_TOKEN": "t",
    "CATAPULT_API_SECRET": "s",
}


def test_defaults_fill_what_is_optional() -> None:
    config = settings.load(BASE)
    assert config["CONFHOOK_PUBLIC_URL"] == "https://hooks.example.com"
    assert config["CONFHOOK_FALLBACK_URL"] == "https://hooks.example.com"
    assert config["CONFHOOK_CALLBACK_METHOD"] == "POST"
    assert config["CONFHOOK_CALLBACK_TIMEOUT_MS"] == settings.DEFAULT_CALLBACK_TIMEOUT_MS
    assert config["CATAPULT_API_URL"] == settings.DEFAULT_CATAPULT_API_URL
    assert config["DATABASE_URL"].startswith("sqlite:///")
    assert config["CONFHOOK_SQLITE_SYNCHRONOUS"] == "FULL"


def test_every_missing_setting_is_named_at_once() -> None:
    with pytest.raises(settings.ConfigError) as info:
        settings.load({})
    message = str(info.value)
    for name in ("CONFHOOK_SECRET_KEY", "CONFHOOK_PUBLIC_URL", "CONFHOOK_API_TOKENS",
                 "CATAPULT_USER_ID", "CATAPULT_API_TOKEN", "CATAPULT_API_SECRET"):
        assert name in message


@pytest.mark.parametrize(("name", "value", "complaint"), [
    ("CONFHOOK_SECRET_KEY", "short", "at least 32"),
    ("CONFHOOK_PUBLIC_URL", "hooks.example.com", "absolute http(s) URL"),
    ("CONFHOOK_PUBLIC_URL", "https://h.example.com/?a=1", "query"),
    ("CONFHOOK_FALLBACK_URL", "ftp://x", "absolute http(s) URL"),
    ("CONFHOOK_CALLBACK_METHOD", "PUT", "one of POST, GET"),
    ("CONFHOOK_CALLBACK_TIMEOUT_MS", "fast", "must be an integer"),
    ("CONFHOOK_CALLBACK_TIMEOUT_MS", "20000", "between 100 and 10000"),
    ("CONFHOOK_API_TOKENS", "short", "at least 16"),
    ("DATABASE_URL", "postgres://x/y", "postgresql+psycopg://"),
    ("DATABASE_URL", "mysql://x/y", "sqlite:/// or postgresql"),
    ("CATAPULT_READ_TIMEOUT_S", "-1", "between"),
    ("CONFHOOK_SQLITE_SYNCHRONOUS", "OFF", "one of FULL, NORMAL"),
    ("CONFHOOK_DELIVERY_WAIT_MS", "50", "between 100 and 25000"),
    ("CONFHOOK_SQLITE_BUSY_TIMEOUT_MS", "60000", "between 100 and 25000"),
    ("CONFHOOK_LOG_FORMAT", "xml", "one of json, text"),
    ("CONFHOOK_METRICS_TOKEN", "short", "at least 16"),
    ("CONFHOOK_ADMIN_PASSWORD_HASH", "scrypt:1$a$b,hunter2", "not the password itself"),
])
def test_malformed_setting_fails_fast_with_its_name(name: str, value: str,
                                                    complaint: str) -> None:
    with pytest.raises(settings.ConfigError) as info:
        settings.load({**BASE, name: value})
    assert name in str(info.value)
    assert complaint in str(info.value)


def test_method_is_case_insensitive_and_fallback_url_is_its_own() -> None:
    config = settings.load({**BASE, "CONFHOOK_CALLBACK_METHOD": "get",
                            "CONFHOOK_FALLBACK_URL": "https://backup.example.com"})
    assert config["CONFHOOK_CALLBACK_METHOD"] == "GET"
    assert config["CONFHOOK_FALLBACK_URL"] == "https://backup.example.com"


def test_app_refuses_to_start_without_settings() -> None:
    from app import create_app

    with pytest.raises(settings.ConfigError):
        create_app({})
