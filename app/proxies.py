"""The client's address: from ``X-Forwarded-For`` only when the peer is a trusted proxy.

One WSGI layer, outermost, sets ``REMOTE_ADDR`` to the client's address for every part of the
app (sign-in limits, logs), by one rule: walking ``X-Forwarded-For`` from the right, past every
hop that is itself a trusted proxy (``CONFHOOK_FORWARDED_ALLOW_IPS``, the setting gunicorn
reads too). A peer that is not trusted is the client, whatever it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


class TrustedProxies:
    """WSGI middleware: ``REMOTE_ADDR`` becomes the client behind trusted proxies."""

    def __init__(self, inner: WSGIApp, trusted: Sequence[str]) -> None:
        self.inner = inner
        self.any = "*" in trusted
        self.networks: list[Network] = [ipaddress.ip_network(t, strict=False)
                                        for t in trusted if t != "*"]

    def trusts(self, text: str | None) -> bool:
        if self.any:
            return True
        address = _address(text or "")
        return address is not None and any(address in n for n in self.networks)

    def client(self, peer: str | None, forwarded: str) -> str | None:
        if not forwarded or not self.trusts(peer):
            return peer
        client = peer
        for hop in reversed([h for h in forwarded.split(",") if h.strip()]):
            address = _address(hop)
            if address is None:
                break  # not an address: nothing further left of it can be believed
            client = str(address)
            if not self.trusts(client):
                break
        return client

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR")
        client = self.client(peer, environ.get("HTTP_X_FORWARDED_FOR", ""))
        if client != peer:
            environ["confhook.peer"] = peer
            environ["REMOTE_ADDR"] = client
        return self.inner(environ, start_response)
