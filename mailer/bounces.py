"""Bounces: delivery status notifications turned into suppressions.

A bounce reaches mailer in one of three ways: a Maildir the MTA delivers bounces to,
an IMAP or POP3 mailbox polled by the scheduler, or ``POST /webhooks/bounce`` from a
relay that reports bounces itself. Every path ends in :func:`record_bounce`.

Classification: flufl.bounce knows the many non-standard bounce formats in the wild
and tells permanent from temporary failures; the RFC 3464 ``Status`` field of a
standard DSN decides where it is present (5.x.x hard, 4.x.x soft). The delivery is
found from the VERP envelope address the DSN was sent back to
(``press+d<delivery id>@domain``), else from the original Message-ID.

Hard bounces suppress the address at once. Soft bounces are counted; ``soft_limit``
of them within ``soft_window`` suppress it too.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import imaplib
import logging
import mailbox
import poplib
import re
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from flufl.bounce import all_failures
from sqlalchemy import func, select

from mailer.config import BounceConfig, Settings
from mailer.db import Database
from mailer.message import parse_verp
from mailer.models import Bounce, Delivery, Subscriber, utcnow
from mailer.suppression import email_hash, email_key, suppress

log = logging.getLogger(__name__)

_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})")


@dataclass(frozen=True)
class BounceReport:
    """One failed recipient of one DSN."""

    address: str | None
    kind: str  # "hard" or "soft"
    status: str | None = None
    diagnostic: str | None = None
    delivery_id: int | None = None
    message_id: str | None = None


def parse_dsn(raw: bytes | Message) -> list[BounceReport]:
    """Every failed recipient a bounce message reports (empty if it is not a bounce)."""
    msg = raw if isinstance(raw, Message) else email.message_from_bytes(raw)
    delivery_id = _verp_delivery(msg)
    original_id = _original_message_id(msg)
    reports: dict[str, BounceReport] = {}
    for fields in _delivery_status_blocks(msg):
        action = (fields.get("action") or "").lower()
        status = fields.get("status")
        recipient = _address(fields.get("final-recipient") or fields.get("original-recipient"))
        if action in ("delivered", "relayed", "expanded") or not recipient:
            continue
        match = _STATUS.match(status or "")
        if match and match.group(1) == "2":
            continue
        kind = "soft" if (match and match.group(1) == "4") or action == "delayed" else "hard"
        reports[email_key(recipient)] = BounceReport(
            recipient,
            kind,
            match.group(0).strip() if match else status,
            fields.get("diagnostic-code"),
            delivery_id,
            original_id,
        )
    temporary, permanent = all_failures(msg)
    for kind, found in (("hard", permanent), ("soft", temporary)):
        for address in found:
            text = address.decode(errors="replace") if isinstance(address, bytes) else address
            key = email_key(text)
            if key and key not in reports:
                reports[key] = BounceReport(text, kind, None, None, delivery_id, original_id)
    if not reports and delivery_id is not None and _looks_like_dsn(msg):
        # A bounce whose body names nobody, but whose VERP address names the delivery.
        reports[""] = BounceReport(None, "hard", None, _subject(msg), delivery_id, original_id)
    return list(reports.values())


def _delivery_status_blocks(msg: Message) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        # The stdlib parses message/delivery-status into a list of header blocks.
        groups = payload if isinstance(payload, list) else [email.message_from_string(str(payload))]
        for group in groups[1:] if len(groups) > 1 else groups:
            blocks.append({k.lower(): str(v) for k, v in group.items()})
    return blocks


def _address(field: str | None) -> str | None:
    if not field:
        return None
    value = field.split(";", 1)[-1].strip().strip("<>")
    return value if "@" in value else None


def _verp_delivery(msg: Message) -> int | None:
    for header in ("X-Original-To", "Delivered-To", "To", "Envelope-To"):
        for value in msg.get_all(header) or []:
            for _, address in email.utils.getaddresses([str(value)]):
                delivery_id = parse_verp(address)
                if delivery_id is not None:
                    return delivery_id
    return None


def _original_message_id(msg: Message) -> str | None:
    for part in msg.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if inner is None and isinstance(payload, str):
                inner = email.message_from_string(payload)
            if inner is not None and inner.get("Message-ID"):
                return str(inner["Message-ID"]).strip()
    return None


def _looks_like_dsn(msg: Message) -> bool:
    return (
        msg.get_content_type() == "multipart/report"
        or "mailer-daemon" in str(msg.get("From", "")).lower()
    )


def _subject(msg: Message) -> str:
    return str(msg.get("Subject", ""))[:500]


async def record_bounce(database: Database, settings: Settings, report: BounceReport) -> str:
    """Store one bounce and apply the suppression rules. Returns what was done."""
    config = settings.bounces
    now = utcnow()
    async with database.transaction() as session:
        delivery = None
        if report.delivery_id is not None:
            delivery = await session.get(Delivery, report.delivery_id)
        if delivery is None and report.message_id:
            delivery = await session.scalar(
                select(Delivery).where(Delivery.message_id == report.message_id)
            )
        address = report.address or (delivery.email if delivery else None)
        if not address:
            return "ignored: the bounce names no recipient mailer knows"
        hashed = email_hash(settings, address)
        session.add(
            Bounce(
                delivery_id=delivery.id if delivery else None,
                email_hash=hashed,
                kind=report.kind,
                status_code=report.status,
                diagnostic=(report.diagnostic or "")[:2000] or None,
                received_at=now,
            )
        )
        if delivery is not None:
            delivery.bounced = delivery.bounced or report.kind == "hard"
        if report.kind == "hard":
            await suppress(session, settings, address, "hard-bounce", report.status)
            return "suppressed (hard bounce)"
        subscriber = await session.scalar(
            select(Subscriber).where(Subscriber.email_key == email_key(address))
        )
        if subscriber is not None:
            subscriber.soft_bounces += 1
        await session.flush()
        recent = await session.scalar(
            select(func.count()).where(
                Bounce.email_hash == hashed,
                Bounce.kind == "soft",
                Bounce.received_at >= now - config.soft_window,
            )
        )
        if (recent or 0) >= config.soft_limit:
            await suppress(
                session,
                settings,
                address,
                "soft-bounce",
                f"{recent} soft bounces within {config.soft_window}",
            )
            return f"suppressed ({recent} soft bounces)"
        return f"counted soft bounce ({recent} of {config.soft_limit})"


async def process_message(database: Database, settings: Settings, raw: bytes) -> list[str]:
    return [await record_bounce(database, settings, r) for r in parse_dsn(raw)]


# --- mailboxes ----------------------------------------------------------------------


async def poll_mailboxes(database: Database, settings: Settings) -> int:
    """Read every configured bounce mailbox once. Returns how many messages were read."""
    config = settings.bounces
    read = 0
    if config.maildir:
        read += await _poll_maildir(database, settings, settings.resolve(config.maildir))
    if config.imap is not None:
        messages = await asyncio.to_thread(_fetch_imap, config)
        for raw in messages:
            await process_message(database, settings, raw)
        read += len(messages)
    if config.pop3 is not None:
        messages = await asyncio.to_thread(_fetch_pop3, config)
        for raw in messages:
            await process_message(database, settings, raw)
        read += len(messages)
    return read


async def _poll_maildir(database: Database, settings: Settings, path: Path) -> int:
    box = mailbox.Maildir(path, create=True)
    read = 0
    for key in list(box.iterkeys()):
        try:
            raw = box.get_bytes(key)
        except KeyError:
            continue  # taken by another poller
        await process_message(database, settings, raw)
        # Removed only after it was recorded: a crash in between reads it again,
        # and recording the same bounce twice is harmless.
        box.discard(key)
        read += 1
    return read


def _fetch_imap(config: BounceConfig) -> list[bytes]:
    imap = config.imap
    assert imap is not None
    client_class = imaplib.IMAP4_SSL if imap.security == "tls" else imaplib.IMAP4
    with client_class(imap.host, imap.port) as client:
        if imap.security == "starttls":
            client.starttls()
        client.login(imap.username, imap.password)
        client.select(imap.folder)
        _, data = client.search(None, "UNSEEN")
        messages = []
        for number in data[0].split():
            _, parts = client.fetch(number, "(RFC822)")
            for part in parts:
                if isinstance(part, tuple):
                    messages.append(part[1])
            client.store(number, "+FLAGS", "\\Deleted")
        client.expunge()
    return messages


def _fetch_pop3(config: BounceConfig) -> list[bytes]:
    pop = config.pop3
    assert pop is not None
    client = (
        poplib.POP3_SSL(pop.host, pop.port)
        if pop.security == "tls"
        else poplib.POP3(pop.host, pop.port)
    )
    try:
        if pop.security == "starttls":
            client.stls()
        client.user(pop.username)
        client.pass_(pop.password)
        count, _ = client.stat()
        messages = []
        for number in range(1, count + 1):
            _, lines, _ = client.retr(number)
            messages.append(b"\r\n".join(lines))
            client.dele(number)
    finally:
        client.quit()
    return messages
