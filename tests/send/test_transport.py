"""The SMTP transport: what arrives is exactly what was composed."""

from __future__ import annotations

import re

import pytest

from mailer.transport import Connection, Outcome, SmtpTarget, wire_format
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
