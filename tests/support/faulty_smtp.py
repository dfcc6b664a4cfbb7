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
        if recipient in self.plan.drop_once and recipient not in self._dropped:
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


class FaultySmtpServer:
    def __init__(self, plan: FaultPlan | None = None, port: int = 0):
        self.handler = FaultyHandler(plan or FaultPlan())
        self._port = port
        self.controller: Controller | None = None

    def start(self) -> FaultySmtpServer:
        self._port = self._port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self._port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def port(self) -> int:
        return self._port
