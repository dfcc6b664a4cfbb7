"""An SMTP server that misbehaves on purpose, for the sending engine's tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.smtp import free_port


@dataclass
class FaultPlan:
    # Recipient -> how many times RCPT is answered 451 before it is accepted.
    defer_times: dict[str, int] = field(default_factory=dict)
    # Recipients refused for good at RCPT (550 5.1.1) and at DATA (554 5.7.1).
    reject_rcpt: set[str] = field(default_factory=set)
    reject_data: set[str] = field(default_factory=set)
    # Recipients for which the connection is dropped once, mid-DATA, before accepting.
    drop_once: set[str] = field(default_factory=set)
    # Recipients for which the connection is dropped at every attempt (a content
    # filter or a size limit enforced by disconnecting).
    drop_always: set[str] = field(default_factory=set)
    # The next this many connections are greeted with 421 and closed (too busy).
    refuse_connections: int = 0
    # Seconds each accepted message takes (to make a send last long enough to kill).
    data_delay: float = 0.0


class FaultyHandler:
    def __init__(self, plan: FaultPlan):
        self.plan = plan
        self.lock = threading.Lock()
        self.accepted: list[tuple[str, bytes, float]] = []
        self.attempts: Counter[str] = Counter()
        self._dropped: set[str] = set()
        # Messages of one recipient domain being received at the same moment.
        self.in_data: Counter[str] = Counter()
        self.most_in_data: Counter[str] = Counter()
        # Connections open at once, by client address and in all, and the most seen.
        self.open_by_client: Counter[str] = Counter()
        self.most_open_by_client: Counter[str] = Counter()
        self.connections_made = 0
        self.refused = 0

    def connection_opened(self, client: str) -> bool:
        """Count a new connection; False when the plan says to refuse it."""
        with self.lock:
            self.connections_made += 1
            if self.plan.refuse_connections > 0:
                self.plan.refuse_connections -= 1
                self.refused += 1
                return False
            self.open_by_client[client] += 1
            self.most_open_by_client[client] = max(
                self.most_open_by_client[client], self.open_by_client[client]
            )
            return True

    def connection_closed(self, client: str) -> None:
        with self.lock:
            self.open_by_client[client] -= 1

    @property
    def most_open(self) -> int:
        """The most connections this server had open at once (all clients are loopback)."""
        with self.lock:
            return max(self.most_open_by_client.values(), default=0)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        with self.lock:
            self.attempts[address] += 1
            left = self.plan.defer_times.get(address, 0)
            if left:
                self.plan.defer_times[address] = left - 1
                return "451 4.3.0 Mailbox busy, try again later"
        if address in self.plan.reject_rcpt:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipient = envelope.rcpt_tos[0]
        if recipient in self.plan.drop_always or (
            recipient in self.plan.drop_once and recipient not in self._dropped
        ):
            self._dropped.add(recipient)
            server.transport.close()
            return "421 4.4.2 Connection dropped"
        if recipient in self.plan.reject_data:
            return "554 5.7.1 Message refused by policy"
        domain = recipient.rpartition("@")[2]
        with self.lock:
            self.in_data[domain] += 1
            self.most_in_data[domain] = max(self.most_in_data[domain], self.in_data[domain])
        try:
            if self.plan.data_delay:
                await asyncio.sleep(self.plan.data_delay)
        finally:
            with self.lock:
                self.in_data[domain] -= 1
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.accepted.append((rcpt, bytes(envelope.content), time.monotonic()))
        return "250 OK queued"

    def delivered(self) -> Counter[str]:
        with self.lock:
            return Counter(rcpt for rcpt, _, _ in self.accepted)


class CountingSMTP(SMTP):
    """aiosmtpd's server, telling the handler when a connection opens and closes,
    and greeting with 421 when the plan refuses the connection."""

    def __init__(self, handler: FaultyHandler, **kwargs: object) -> None:
        super().__init__(handler, **kwargs)
        self._faulty = handler
        self._client = ""
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername")
            self._client = str(peer[0]) if peer else "?"
            self._counted = self._faulty.connection_opened(self._client)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._faulty.connection_closed(self._client)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self._counted:
            await self.push("421 4.7.0 Too many connections, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()


class CountingController(Controller):
    def factory(self) -> SMTP:
        return CountingSMTP(self.handler, **self.SMTP_kwargs)


class FaultySmtpServer:
    def __init__(self, plan: FaultPlan | None = None, port: int = 0):
        self.handler = FaultyHandler(plan or FaultPlan())
        self._port = port
        self.controller: Controller | None = None

    def start(self) -> FaultySmtpServer:
        self._port = self._port or free_port()
        self.controller = CountingController(self.handler, hostname="127.0.0.1", port=self._port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def port(self) -> int:
        return self._port
