"""In-memory rate limits for the public forms.

Per process, which is what the issue asks for: a second ``mailer serve`` behind a
load balancer would keep its own counts (each instance then allows the limit).
A sliding window of hit times per key; written by hand because the limiter
libraries on PyPI either want Redis or a framework integration, and this is
thirty lines with an injectable clock, which keeps the tests deterministic.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

# Above this many tracked keys, idle ones are swept on the next hit; a flood of
# distinct keys beyond it evicts the oldest, so memory stays bounded.
MAX_KEYS = 100_000


class RateLimiter:
    def __init__(
        self,
        limit: int,
        window: timedelta,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ):
        self.limit = limit
        self.window = window.total_seconds()
        self.clock = clock
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> int | None:
        """Count one attempt for ``key``. None when allowed; otherwise the whole
        seconds until the next attempt would be (for Retry-After), not counted."""
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._sweep(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return max(1, math.ceil(hits[0] + self.window - now))
        hits.append(now)
        return None

    def _sweep(self, now: float) -> None:
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window]:
            del self._hits[key]
        while len(self._hits) >= self.max_keys:
            # dicts keep insertion order: the first key is the longest-tracked one.
            del self._hits[next(iter(self._hits))]


def client_key(host: str | None) -> str:
    """The rate-limit identity of a client address: IPv6 clients get a whole /64,
    because one subscriber line usually holds a /64 and can rotate through it."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
