"""The SMTP transport: what arrives is exactly what was composed."""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import pytest

from mailer.transport import Connection, Outcome, RateLimiter, SmtpTarget, wire_format
from tests.support.smtp import SmtpServer


@pytest.mark.parametrize(
    "body",
    [
        b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
        b"Subject: bare newlines\n\nline one\nline two\rline three\n",
        b".Leading dot on the first line\r\n\r\nbody",
    ],
)
async def test_message_arrives_byte_for_byte(smtp_server: SmtpServer, body: bytes) -> None:
    connection = Connection(SmtpTarget("127.0.0.1", smtp_server.port))
    try:
        result = await connection.send("press@example.org", ["reader@example.net"], body)
    finally:
        await connection.close()
    assert result.outcome is Outcome.SENT
    # What was composed, with line endings made CRLF: dots and all, nothing lost.
    expected = re.sub(rb"\r\n|\n|\r", b"\r\n", body)
    expected += b"" if expected.endswith(b"\r\n") else b"\r\n"
    assert smtp_server.messages[0].data == expected
    # The dot-stuffed payload never ends the message early.
    assert b"\r\n.\r\n" not in wire_format(body)[:-5]


async def test_one_connection_carries_many_messages(smtp_server: SmtpServer) -> None:
    connection = Connection(SmtpTarget("127.0.0.1", smtp_server.port))
    try:
        for i in range(20):
            result = await connection.send(
                "press@example.org", [f"r{i}@example.net"], f"Subject: {i}\r\n\r\nx\r\n".encode()
            )
            assert result.outcome is Outcome.SENT
    finally:
        await connection.close()
    assert [m.rcpt_tos[0] for m in smtp_server.messages] == [f"r{i}@example.net" for i in range(20)]


async def test_a_stalled_process_does_not_release_a_burst_afterwards() -> None:
    """A receiving server's per-second limit is about what reaches it: when the
    sending process stalls (a long garbage collection, a busy CPU), the sends whose
    turns passed during the stall must not all start together when it resumes."""
    limiter = RateLimiter(10)
    started: list[float] = []

    async def send_one() -> None:
        await limiter.wait()
        started.append(time.monotonic())

    async def stall() -> None:
        await asyncio.sleep(0.25)
        time.sleep(0.6)  # blocks the event loop, as a stalled process does

    await asyncio.gather(stall(), *(send_one() for _ in range(25)))
    assert len(started) == 25
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # Every start waited its turn after the previous one, stall or not ...
    assert min(gaps) >= 0.1 - 1e-3, gaps
    # ... so no one-second window holds more than the limit.
    assert max(sum(1 for t in started if s <= t < s + 1.0) for s in started) <= 10
