"""The embedded mail catcher: a loopback SMTP server that files mail instead of sending it.

Design: there is no long-lived catcher daemon. Whichever process sends mail with
``smtp.embedded: true`` (``mailer serve``, ``mailer worker``, ``mailer digest send``)
starts its own catcher on 127.0.0.1 at a free port, inside its own event loop, and
talks real SMTP to it through the same code path used for a real server. So it works
whether or not a ``mailer serve`` is running, several processes never compete for
a port, and what lands in the folder is exactly what a real server would receive.

Each message is written to ``<data_dir>/mail/`` as one ``.eml`` file per recipient,
with ``Return-Path`` and ``Delivered-To`` prepended as a mail server would; the file
is written under a temporary name and renamed, so a reader never sees half a message.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

_counter = itertools.count(1)
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]+")


class MaildropHandler:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        await asyncio.to_thread(self._store, str(envelope.mail_from), envelope.rcpt_tos, content)
        return "250 OK: message filed"

    def _store(self, mail_from: str, recipients: list[str], content: bytes) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        for recipient in recipients:
            trace = f"Return-Path: <{mail_from}>\r\nDelivered-To: {recipient}\r\n".encode()
            name = f"{stamp}-{os.getpid()}-{next(_counter)}-{_UNSAFE.sub('_', recipient)[:80]}"
            temporary = self.folder / f".{name}.tmp"
            temporary.write_bytes(trace + content)
            temporary.rename(self.folder / f"{name}.eml")


class EmbeddedCatcher:
    """A catcher bound to a free loopback port in the running event loop."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> EmbeddedCatcher:
        handler = MaildropHandler(self.folder)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                handler,
                hostname="mailer-catcher",
                data_size_limit=50 * 1024 * 1024,
                enable_SMTPUTF8=True,
            ),
            host="127.0.0.1",
            port=0,
        )
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "catcher not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
