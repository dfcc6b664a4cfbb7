"""Which proxy may name the client, and a loud warning when it does not.

The client address matters for the per-IP signup and sign-in limits and for the
consent record. Behind a reverse proxy every connection comes from the proxy, so
the proxy must pass the real client in ``X-Forwarded-For``; that header is read
only from the addresses in ``site.trusted_proxies`` (anyone else could forge it).
uvicorn's ProxyHeadersMiddleware does the reading (rightmost untrusted hop).

A proxy that does not set the header (a bare TLS terminator) would silently put
every reader into one rate-limit bucket: the first few signups of the hour would
lock everyone else out. That case is logged as a warning (once per process, with
what to change).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

log = logging.getLogger(__name__)


def _networks(entries: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


class TrustedProxyMiddleware:
    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self._inner = ProxyHeadersMiddleware(app, trusted_hosts=list(trusted) or ["0.0.0.0/32"])
        self._trusted = _networks(trusted)
        self._warned = False

    def _from_trusted_proxy(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self._trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._from_trusted_proxy(scope):
            if not any(name == b"x-forwarded-for" for name, _ in scope["headers"]):
                self._note_missing_header(scope["client"][0])
        await self._inner(scope, receive, send)  # type: ignore[arg-type]

    def _note_missing_header(self, proxy: str) -> None:
        if self._warned:
            return
        self._warned = True
        log.warning(
            "a request came through the trusted proxy %s without X-Forwarded-For: every "
            "such request counts as one client for the signup and sign-in rate limits. "
            "Make the proxy set X-Forwarded-For, or remove %s from site.trusted_proxies "
            "if it is not a proxy (see docs/production.md).",
            proxy,
            proxy,
        )
