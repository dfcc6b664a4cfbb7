"""Per-destination scheduling, after Postfix's queue manager: mail is grouped by
recipient domain, each SMTP session carries one domain's messages at a time, and
at most ``smtp.per_domain_connections`` sessions carry one domain at once.

The limit holds for every delivery process on one machine that shares a
``data_dir`` (``digest send --workers N``, ``mailer worker`` units, the worker in
``mailer serve``): a session holds a *slot*, an exclusive ``flock`` on
``<data_dir>/slots/<domain>.<n>`` for n below the limit, for as long as it is open
for that domain. The kernel drops the lock when the process dies, so a crash
never leaks a slot. Processes on other machines keep their own slots: N machines
may open up to N times the limit.

Hand-written because no library offers counting, crash-safe, cross-process
semaphores keyed by name; flock is the same primitive journal.py uses.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

_PLAIN_DOMAIN = re.compile(r"[a-z0-9][a-z0-9.-]{0,190}")


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class DomainSlot:
    """One held slot: a connection may carry ``domain``'s mail while it is held."""

    def __init__(self, domain: str, fd: int):
        self.domain = domain
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


class DomainSlots:
    def __init__(self, folder: Path, per_domain: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.per_domain = per_domain

    def _stem(self, domain: str) -> str:
        if _PLAIN_DOMAIN.fullmatch(domain):
            return domain
        # IDN, address literals, anything unsafe as a file name.
        return "h-" + hashlib.sha256(domain.encode()).hexdigest()[:32]

    def try_acquire(self, domain: str) -> DomainSlot | None:
        """A free slot for ``domain``, or None while every slot is held (by this
        process or another one)."""
        stem = self._stem(domain)
        for index in range(self.per_domain):
            fd = os.open(self.folder / f"{stem}.{index}", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return DomainSlot(domain, fd)
        return None


class DomainQueues(Generic[T]):
    """Claimed messages waiting for a session, one FIFO per domain, domains served
    in the order their first message arrived."""

    def __init__(self) -> None:
        self._waiting: OrderedDict[str, deque[T]] = OrderedDict()
        # When each domain last had a slot here, or started waiting for one.
        self._served_at: dict[str, float] = {}
        self._size = 0
        self._changed = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return self._size

    def put(self, domain: str, item: T) -> None:
        queue = self._waiting.get(domain)
        if queue is None:
            queue = self._waiting[domain] = deque()
            self._served_at.setdefault(domain, time.monotonic())
        queue.append(item)
        self._size += 1
        self._changed.set()

    def pop(self, domain: str) -> T | None:
        queue = self._waiting.get(domain)
        if not queue:
            return None
        self._size -= 1
        self._served_at[domain] = time.monotonic()
        item = queue.popleft()
        if not queue:
            del self._waiting[domain]
        return item

    def domains(self) -> list[str]:
        return list(self._waiting)

    def served(self, domain: str) -> None:
        self._served_at[domain] = time.monotonic()

    def starved(self, longer_than: float, busy: Iterable[str]) -> list[str]:
        """Domains with waiting messages that have not had a slot here for a while
        (other processes hold all of them)."""
        now, busy = time.monotonic(), set(busy)
        return [
            domain
            for domain in self._waiting
            if domain not in busy and now - self._served_at.get(domain, now) > longer_than
        ]

    def take_all(self, domain: str | None = None) -> list[T]:
        """Remove and return every waiting message (of one domain, or all)."""
        names = [domain] if domain is not None else list(self._waiting)
        taken: list[T] = []
        for name in names:
            taken.extend(self._waiting.pop(name, ()))
            self._served_at.pop(name, None)
        self._size -= len(taken)
        return taken

    def close(self) -> None:
        """No more messages will come: senders finish what waits, then return."""
        self.closed = True
        self._changed.set()

    async def wait(self, seconds: float) -> None:
        """Until a message arrives, the queues close, or ``seconds`` pass."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), seconds)
        except TimeoutError:
            pass
