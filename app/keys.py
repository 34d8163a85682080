"""Callback URLs and the keys that authenticate deliveries to them.

Each conference's URLs carry a key: an HMAC of the conference id under the secret key, so a
delivery is verified without touching the database. Earlier secrets keep verifying, so the
secret can be rotated without breaking conferences created under the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

CHANNELS = ("callback", "fallback")
SHARED = "shared"


def callback_key(secret: str, subject: str) -> str:
    """Return the URL key for ``subject`` (a conference id, or ``shared``) under ``secret``."""
    digest = hmac.new(secret.encode(), f"confhook-callback:{subject}".encode(errors="replace"),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def key_matches(secrets: Iterable[str], subject: str, key: str) -> bool:
    """Tell whether ``key`` is ``subject``'s key under any of ``secrets`` (current first).

    Every secret is tried, so the time taken does not reveal which one matched.
    """
    ok = False
    offered = key.encode(errors="replace")  # as bytes: any text in a URL compares, no error
    for secret in secrets:
        ok |= hmac.compare_digest(callback_key(secret, subject).encode(), offered)
    return ok


def callback_urls(config: Mapping[str, Any], subject: str) -> tuple[str, str]:
    """Return the (callback, fallback) URLs for ``subject``; they differ only in the channel."""
    key = callback_key(config["CONFHOOK_SECRET_KEY"], subject)
    return (f"{config['CONFHOOK_PUBLIC_URL']}/callbacks/callback/{subject}/{key}",
            f"{config['CONFHOOK_FALLBACK_URL']}/callbacks/fallback/{subject}/{key}")
