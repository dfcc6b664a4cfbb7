"""SMTP transport: where mail goes, reusable connections, and what a reply means.

One interface for both destinations: ``smtp_target(settings)`` yields the host and
port to talk to, which is either the configured server or, with
``smtp.embedded: true``, a catcher started inside this process (see catcher.py).
Everything above this module speaks SMTP through aiosmtplib either way.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from mailer.catcher import EmbeddedCatcher
from mailer.config import Settings
from mailer.smtpstatus import Verdict, enhanced_code, permanent_verdict

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


class Outcome(enum.StrEnum):
    SENT = "sent"
    # Try again later: a 4xx reply, or the server could not be reached.
    DEFERRED = "deferred"
    # Permanent: a 5xx reply.
    FAILED = "failed"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    message: str = ""
    # True when the refusal is about the recipient (5.1.x, 5.2.1; see smtpstatus.py):
    # the address itself is bad and goes on the suppression list.
    hard_bounce: bool = False
    # True for a 5.7.x refusal (relaying, policy, authentication): about this sender,
    # not the reader; repeated across recipients it pauses the send.
    policy: bool = False
    # True when no session could be had (refused, unreachable, 421 greeting, bad
    # credentials): the server, not the message, failed, so the queue is held.
    connection_error: bool = False
    # True when an open session broke during this message's transaction (dropped,
    # timed out): the message is deferred alone; only a run of these across
    # different messages means the server is in trouble.
    dropped: bool = False

    @property
    def reason(self) -> str:
        return f"{self.code} {self.message}".strip() if self.code else self.message


class TransportError(Exception):
    """A transactional message could not be handed to the SMTP server."""

    def __init__(self, message: str, *, server_unavailable: bool = False):
        super().__init__(message)
        # No session could be had (see SendResult.connection_error): no other
        # message would go through now either.
        self.server_unavailable = server_unavailable


class Message(Protocol):
    envelope_from: str
    recipients: list[str]
    data: bytes


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    security: str = "none"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    ca_file: str | None = None

    def client(self) -> aiosmtplib.SMTP:
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            timeout=self.timeout,
            use_tls=self.security == "tls",
            start_tls=self.security == "starttls",
            tls_context=(
                ssl.create_default_context(cafile=self.ca_file) if self.security != "none" else None
            ),
        )


@asynccontextmanager
async def smtp_target(settings: Settings) -> AsyncIterator[SmtpTarget]:
    smtp = settings.smtp
    timeout = smtp.timeout.total_seconds()
    if not smtp.embedded:
        ca_file = str(settings.resolve(smtp.ca_file)) if smtp.ca_file else None
        yield SmtpTarget(
            smtp.host, smtp.port, smtp.security, smtp.username, smtp.password, timeout, ca_file
        )
        return
    catcher = await EmbeddedCatcher(settings.mail_dir).start()
    try:
        yield SmtpTarget("127.0.0.1", catcher.port, timeout=timeout)
    finally:
        await catcher.stop()


def classify(exc: BaseException) -> SendResult:
    """Map an aiosmtplib exception to what the outbox should do with the delivery."""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError | aiosmtplib.SMTPConnectResponseError):
        # The session, not this message, was refused (bad credentials, a greeting
        # of 554): every message would fail alike, so hold the queue, lose nothing.
        return SendResult(Outcome.DEFERRED, exc.code, exc.message, connection_error=True)
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        # MAIL FROM refused: about this sender, never about the reader. A 4xx there
        # (greylisting, a full queue, "try again later") is as temporary as anywhere.
        if exc.code < 500:
            return SendResult(Outcome.DEFERRED, exc.code, exc.message)
        return SendResult(Outcome.FAILED, exc.code, exc.message, policy=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return _by_code(first.code, first.message, at_recipient=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _by_code(exc.code, exc.message, at_recipient=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not isinstance(
        exc, aiosmtplib.SMTPServerDisconnected
    ):
        return _by_code(exc.code, exc.message, at_recipient=False)
    text = str(exc) or type(exc).__name__
    return SendResult(Outcome.DEFERRED, None, text, connection_error=True)


def _by_code(code: int, message: str, *, at_recipient: bool) -> SendResult:
    if 400 <= code < 500:
        return SendResult(Outcome.DEFERRED, code, message)
    if 500 <= code < 600:
        enhanced = enhanced_code(message)
        if enhanced is None and not at_recipient:
            # A bare 5xx after RCPT was accepted is about the message, not the address.
            return SendResult(Outcome.FAILED, code, message)
        verdict = permanent_verdict(enhanced, code)
        if verdict is Verdict.SOFT:
            # Mailbox full, routing trouble: the address may work again; retry.
            return SendResult(Outcome.DEFERRED, code, message)
        return SendResult(
            Outcome.FAILED,
            code,
            message,
            hard_bounce=verdict is Verdict.HARD,
            policy=verdict is Verdict.POLICY,
        )
    return SendResult(Outcome.DEFERRED, code, message, connection_error=True)


class Connection:
    """One SMTP session, reopened on demand after a drop."""

    def __init__(self, target: SmtpTarget):
        self.target = target
        self._client: aiosmtplib.SMTP | None = None

    async def _ensure(self) -> aiosmtplib.SMTP:
        if self._client is None or not self._client.is_connected:
            client = self.target.client()
            await client.connect()
            if not client.esmtp_extensions:
                # Needed up front to know whether SMTPUTF8 is offered.
                await client.ehlo()
            self._client = client
        return self._client

    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def send(
        self,
        envelope_from: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        wire: bytes | None = None,
    ) -> SendResult:
        """Send ``data``; ``wire``, when given, is it already in wire_format()."""
        addresses = [envelope_from, *recipients]
        try:
            client = await self._ensure()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            refused = classify(exc)
            # Whatever the reply, no message was tried: never fail mail over it.
            return SendResult(
                Outcome.DEFERRED, refused.code, refused.message, connection_error=True
            )
        try:
            options: list[str] = []
            if not all(address.isascii() for address in addresses):
                # Internationalised mailboxes (RFC 6531) need the server's SMTPUTF8.
                if not client.supports_extension("smtputf8"):
                    return SendResult(
                        Outcome.FAILED, None, "server does not support SMTPUTF8 addresses"
                    )
                options.append("SMTPUTF8")
            await self._transaction(client, envelope_from, recipients, data, options, wire)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            result = classify(exc)
            if result.connection_error:
                await self.close()
                lost = f"connection lost during the transaction: {result.reason}"
                return SendResult(Outcome.DEFERRED, result.code, lost, dropped=True)
            await self._reset()
            return result
        return SendResult(Outcome.SENT, 250, "accepted")

    async def _transaction(
        self,
        client: aiosmtplib.SMTP,
        envelope_from: str,
        recipients: Sequence[str],
        data: bytes,
        options: list[str],
        wire: bytes | None = None,
    ) -> None:
        """MAIL, RCPT and DATA through aiosmtplib's command API, with the body sent
        as prepared.

        Why not ``sendmail()``: it rewrites every message with two regular-expression
        passes (line endings, then dot-stuffing) over the whole body. A digest is
        built with CRLF line endings already, so for a 40 KB message those passes
        were the largest CPU cost of a bulk send; here byte counts prove the line
        endings and dot-stuffing is a plain byte replacement (see wire_format).
        """
        encoding = "utf-8" if options else "ascii"
        await client.mail(envelope_from, options=options, encoding=encoding)
        for recipient in recipients:
            await client.rcpt(recipient, encoding=encoding)
        response = await client.execute_command(b"DATA")
        if response.code != 354:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        protocol = client.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the message")
        protocol.write(wire_format(data) if wire is None else wire)
        response = await protocol.read_response(timeout=self.target.timeout)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)

    async def _reset(self) -> None:
        # After a refused transaction the session must be clean for the next message.
        if self._client is not None and self._client.is_connected:
            try:
                await self._client.rset()
            except (TimeoutError, aiosmtplib.SMTPException, OSError):
                await self.close()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if client.is_connected:
                await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()


def wire_format(data: bytes) -> bytes:
    """The DATA payload: CRLF line endings, dot-stuffed (RFC 5321 4.5.2), terminated."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _LINE_ENDINGS.sub(b"\r\n", data)
    # With CRLF endings proven, "a line starts with a dot" is exactly "\n." (plus
    # the first line); bytes.replace does it without a regular-expression scan.
    data = data.replace(b"\n.", b"\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class RateLimiter:
    """Spaces sends evenly so that at most ``per_second`` start in any second.

    A slot schedule instead of a token bucket: it never lets a burst through after
    an idle spell, which is what receiving servers' per-second limits punish. Callers
    wait their turn one at a time and each re-reads the clock after waking, and the
    start times of the last second are kept: a stalled process (a long garbage
    collection, a busy CPU) must not wake several waiters whose slots all passed
    during the stall and let them through together."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._per_window = max(1, int(per_second))
        self._started: deque[float] = deque(maxlen=self._per_window)
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                slot = max(self._next, now)
                if len(self._started) == self._per_window:
                    slot = max(slot, self._started[0] + 1.0)
                if slot <= now:
                    break
                await asyncio.sleep(slot - now)
            self._started.append(now)
            self._next = now + self.interval


async def send_now(settings: Settings, message: Message) -> None:
    """Send one transactional message at once (confirmations, notices, test sends)."""
    async with smtp_target(settings) as target:
        connection = Connection(target)
        try:
            result = await connection.send(message.envelope_from, message.recipients, message.data)
        finally:
            await connection.close()
    if result.outcome is not Outcome.SENT:
        where = (
            "the embedded catcher"
            if settings.smtp.embedded
            else (f"{settings.smtp.host}:{settings.smtp.port}")
        )
        raise TransportError(
            f"{where} did not accept the message: {result.reason}",
            server_unavailable=result.connection_error,
        )
