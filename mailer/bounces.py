"""Bounces and unsubscribe requests by mail: turned into suppressions, and only those.

A bounce reaches mailer in one of three ways: a Maildir the MTA delivers bounces to,
an IMAP or POP3 mailbox polled by the scheduler, or ``POST /webhooks/bounce`` from a
relay that reports bounces itself. Every path ends in :func:`record_bounce`.

Only bounces of mail that mailer itself sent count. Every message leaves with a
signed envelope sender (``bounces+d<delivery>.<signature>@…``, see tokens.py), which
is where a bounce is sent back to; a bounce counts only when that token is valid
and the failed recipient it reports is the recipient of that very delivery. (The
original Message-ID, which carries 64 random bits, is accepted as proof too, for
relays that report bounces with it.) Anything else, a forged bounce that names a
reader, a reply, an auto-reply, is logged and left alone: it never suppresses, and
mail that was not consumed is never deleted (it is moved to ``other_mail_folder``).

The same mailbox receives the mailto unsubscribe of List-Unsubscribe
(``bounces+u<subscriber>.<signature>@…``): such a message unsubscribes at once and
is answered with nothing, as RFC 2369 clients (Outlook) expect.

Classification: flufl.bounce knows the many non-standard bounce formats in the wild
and tells permanent from temporary failures; the RFC 3464 ``Status`` field of a
standard DSN decides where it is present, by the rules in smtpstatus.py. Hard
bounces suppress the address at once; soft bounces are counted and ``soft_limit`` of
them within ``soft_window`` suppress it too; policy and other failures suppress
nothing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import imaplib
import logging
import mailbox
import os
import poplib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from flufl.bounce import all_failures
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import BounceConfig, MailboxConfig, Settings
from mailer.db import Database, execute_past_moved_rows
from mailer.message import delivery_of_message_id
from mailer.models import Bounce, Delivery, Subscriber, utcnow
from mailer.smtpstatus import Verdict, enhanced_code, permanent_verdict
from mailer.subscribers import NotFound, Origin, link_key_of, unsubscribe
from mailer.suppression import email_hash, email_key, suppress
from mailer.tokens import MailTokenKind, MailTokenSigner, address_extension

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it tries at INFO (about 20 lines per message);
# mailer logs one line per message handled instead.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)

# Where an MTA records the address a message was delivered to (Postfix: X-Original-To
# and Delivered-To); To and Envelope-To for relays and mailboxes that lack them.
_RECIPIENT_HEADERS = ("X-Original-To", "Delivered-To", "Envelope-To", "To")


@dataclass(frozen=True)
class BounceReport:
    """One failed recipient of one bounce."""

    address: str | None
    kind: Verdict
    status: str | None = None
    diagnostic: str | None = None
    # Extensions of the addresses the bounce was sent to: a VERP token, if genuine.
    tokens: tuple[str, ...] = ()
    message_id: str | None = None


@dataclass(frozen=True)
class Handled:
    """What became of one bounce or one message: ``consumed`` ones may be deleted."""

    consumed: bool
    summary: str


def parse_dsn(raw: bytes | Message) -> list[BounceReport]:
    """Every failed recipient a bounce message reports (empty if it is not a bounce)."""
    msg = raw if isinstance(raw, Message) else email.message_from_bytes(raw)
    tokens = recipient_tokens(msg)
    original_id = _original_message_id(msg)
    reports: dict[str, BounceReport] = {}
    for fields in _delivery_status_blocks(msg):
        action = (fields.get("action") or "").lower()
        status = fields.get("status")
        recipient = _address(fields.get("final-recipient") or fields.get("original-recipient"))
        if action in ("delivered", "relayed", "expanded") or not recipient:
            continue
        code = enhanced_code(status)
        if code and code.startswith("2."):
            continue
        if (code and code.startswith("4.")) or action == "delayed":
            kind = Verdict.SOFT
        else:
            kind = permanent_verdict(code)
        reports[email_key(recipient)] = BounceReport(
            recipient,
            kind,
            code or status,
            fields.get("diagnostic-code"),
            tokens,
            original_id,
        )
    temporary, permanent = all_failures(msg)
    for kind, found in ((Verdict.HARD, permanent), (Verdict.SOFT, temporary)):
        for address in found:
            text = address.decode(errors="replace") if isinstance(address, bytes) else address
            key = email_key(text)
            if key and key not in reports:
                reports[key] = BounceReport(text, kind, None, None, tokens, original_id)
    return list(reports.values())


def recipient_tokens(msg: Message) -> tuple[str, ...]:
    """The address extensions (``+…``) of the addresses a message was delivered to."""
    found: list[str] = []
    for header in _RECIPIENT_HEADERS:
        for value in msg.get_all(header) or []:
            for _, address in email.utils.getaddresses([str(value)]):
                extension = address_extension(address)
                if extension and extension not in found:
                    found.append(extension)
    return tuple(found)


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


# --- recording ------------------------------------------------------------------------


async def _matching_delivery(
    session: AsyncSession, settings: Settings, report: BounceReport
) -> tuple[bool, Delivery | None, str]:
    """Whether the bounce is about mail mailer sent to the address it names: (genuine,
    the delivery if it was a digest's, why not when it is not)."""
    address = report.address
    if not address:
        return False, None, "it names no failed recipient"
    signer = MailTokenSigner(settings)
    problem = "it was not sent back to an address mailer signed, nor names a Message-ID of mailer's"
    for extension in report.tokens:
        token = signer.read(extension)
        if token is None:
            continue
        if token.kind is MailTokenKind.RECIPIENT:
            if signer.recipient_matches(token, address):
                return True, None, ""
            problem = f"it names {address}, but the message it returns went to someone else"
        elif token.kind is MailTokenKind.DELIVERY:
            assert token.number is not None
            delivery = await session.get(Delivery, token.number)
            if delivery is None:
                problem = f"delivery {token.number} no longer exists"
            elif not _went_to(delivery, address):
                problem = f"it names {address}, but delivery {delivery.id} went to someone else"
            else:
                return True, delivery, ""
    number = delivery_of_message_id(signer, report.message_id) if report.message_id else None
    if number is not None:
        delivery = await session.get(Delivery, number)
        if delivery is not None and _went_to(delivery, address):
            return True, delivery, ""
    return False, None, problem


def _went_to(delivery: Delivery, address: str) -> bool:
    sent_to = delivery.email
    return sent_to is not None and email_key(sent_to) == email_key(address)


async def record_bounce(database: Database, settings: Settings, report: BounceReport) -> Handled:
    """Store one bounce of mailer's own mail and apply the suppression rules; ignore
    (and log) a bounce that is not provably about a message mailer sent to that
    address. Returns whether it was recorded and what was done."""
    now = utcnow()
    described = f"{report.kind.value} bounce for {report.address or '(no recipient)'}" + (
        f" ({report.status})" if report.status else ""
    )
    async with database.transaction() as session:
        genuine, delivery, problem = await _matching_delivery(session, settings, report)
        if not genuine:
            log.warning("ignored a %s: %s", described, problem)
            return Handled(False, f"ignored: {problem}")
        assert report.address is not None
        address = report.address
        hashed = email_hash(settings, address)
        session.add(
            Bounce(
                delivery_id=delivery.id if delivery else None,
                email_hash=hashed,
                kind=report.kind.value,
                status_code=(report.status or "")[:20] or None,
                diagnostic=(report.diagnostic or "")[:2000] or None,
                received_at=now,
            )
        )
        if report.kind is Verdict.HARD:
            if delivery is not None:
                # By statement, not through the loaded row: a bounce can arrive before
                # the worker has recorded the message sent, which moves the row.
                await execute_past_moved_rows(
                    session,
                    update(Delivery)
                    .where(Delivery.id == delivery.id)
                    .values(bounced=True)
                    .execution_options(synchronize_session=False),
                )
            await suppress(session, settings, address, "hard-bounce", report.status)
            outcome = "suppressed (hard bounce)"
        elif report.kind is Verdict.SOFT:
            outcome = await _count_soft_bounce(session, settings, address, hashed, now)
        elif report.kind is Verdict.POLICY:
            outcome = "recorded, not suppressed (refused by policy: a problem of the sender)"
        else:
            outcome = "recorded, not suppressed (the message, not the address, failed)"
    where = f"delivery {delivery.id}" if delivery else "a one-off message"
    log.info("%s, %s: %s", described, where, outcome)
    return Handled(True, outcome)


async def _count_soft_bounce(
    session: AsyncSession, settings: Settings, address: str, hashed: str, now: object
) -> str:
    config = settings.bounces
    subscriber = await session.scalar(
        select(Subscriber).where(Subscriber.email_key == email_key(address))
    )
    if subscriber is not None:
        subscriber.soft_bounces += 1
    await session.flush()
    recent = await session.scalar(
        select(func.count()).where(
            Bounce.email_hash == hashed,
            Bounce.kind == Verdict.SOFT.value,
            Bounce.received_at >= now - config.soft_window,  # type: ignore[operator]
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


async def _unsubscribe_by_mail(
    database: Database, settings: Settings, msg: Message
) -> Handled | None:
    """The List-Unsubscribe mailto: a message to ``…+u<id>.<signature>@…``."""
    signer = MailTokenSigner(settings)
    for extension in recipient_tokens(msg):
        token = signer.read(extension)
        if token is None or token.kind is not MailTokenKind.UNSUBSCRIBE:
            continue
        assert token.number is not None
        link_key = await link_key_of(database, token.number)
        if link_key is None or not signer.link_key_matches(token, link_key):
            # Forged, or kept from a reader since erased: never act on whoever holds
            # that id now.
            log.info("unsubscribe request by mail to a stale or forged address: kept, not acted on")
            return Handled(False, "an unsubscribe request to a stale or forged address")
        try:
            changed = await unsubscribe(
                database, settings, token.number, origin=Origin(actor="mail"), method="mailto"
            )
        except NotFound:
            outcome = f"subscriber {token.number} no longer exists"
        else:
            outcome = "unsubscribed" if changed else "was already unsubscribed"
        log.info("unsubscribe request by mail for subscriber %d: %s", token.number, outcome)
        return Handled(True, outcome)
    return None


async def handle_message(database: Database, settings: Settings, raw: bytes) -> Handled:
    """One message from the bounce mailbox: an unsubscribe request, a bounce of
    mailer's mail, or something for people (not consumed: never to be deleted)."""
    msg = email.message_from_bytes(raw)
    unsubscribed = await _unsubscribe_by_mail(database, settings, msg)
    if unsubscribed is not None:
        return unsubscribed
    reports = parse_dsn(msg)
    results = [await record_bounce(database, settings, report) for report in reports]
    if any(result.consumed for result in results):
        return Handled(True, "; ".join(result.summary for result in results))
    sender = str(msg.get("From", "(no sender)"))[:200]
    subject = str(msg.get("Subject", "(no subject)"))[:200]
    what = "a bounce that is not about mailer's own mail" if reports else "not a bounce"
    return Handled(False, f"{what}: from {sender}, subject {subject!r}")


# --- mailboxes ----------------------------------------------------------------------


async def poll_mailboxes(database: Database, settings: Settings) -> int:
    """Read every configured bounce mailbox once. Returns how many messages were read."""
    config = settings.bounces
    loop = asyncio.get_running_loop()

    def handle(raw: bytes, where: str) -> bool:
        """From the IMAP/POP3 thread: handle one message on the event loop."""
        done = asyncio.run_coroutine_threadsafe(handle_message(database, settings, raw), loop)
        return _report(done.result(), where)

    read = 0
    if config.maildir:
        read += await _poll_maildir(database, settings, settings.resolve(config.maildir))
    if config.imap is not None:
        read += await asyncio.to_thread(_poll_imap, config, config.imap, handle)
    if config.pop3 is not None:
        read += await asyncio.to_thread(_poll_pop3, config.pop3, handle)
    return read


def _report(handled: Handled, kept_in: str) -> bool:
    if not handled.consumed:
        log.info("kept mail for people (%s) %s", handled.summary, kept_in)
    return handled.consumed


async def _poll_maildir(database: Database, settings: Settings, path: Path) -> int:
    box = mailbox.Maildir(path, create=True)
    folder = settings.bounces.other_mail_folder
    read = 0
    # Files are handled directly rather than through mailbox.Maildir: mail for people
    # is moved with one rename (atomic, byte for byte), never rewritten.
    for subdir in ("new", "cur"):
        for name in sorted(os.listdir(path / subdir)):
            if name.startswith("."):
                continue
            file = path / subdir / name
            try:
                raw = file.read_bytes()
            except FileNotFoundError:
                continue  # taken by another reader meanwhile
            read += 1
            handled = await handle_message(database, settings, raw)
            if _report(handled, f"in the Maildir folder {folder!r}"):
                # Removed only after it was recorded: a crash in between reads it
                # again, and recording the same bounce twice is harmless.
                file.unlink(missing_ok=True)
                continue
            if folder not in box.list_folders():
                box.add_folder(folder)
            os.rename(file, path / f".{folder}" / subdir / name)
    return read


def _imap_quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _poll_imap(
    config: BounceConfig, imap: MailboxConfig, handle: Callable[[bytes, str], bool]
) -> int:
    client_class = imaplib.IMAP4_SSL if imap.security == "tls" else imaplib.IMAP4
    folder = _imap_quote(config.other_mail_folder)
    read = 0
    with client_class(imap.host, imap.port) as client:
        if imap.security == "starttls":
            client.starttls()
        client.login(imap.username, imap.password)
        client.select(_imap_quote(imap.folder))
        _, data = client.search(None, "ALL")
        folder_ready = False
        for number in data[0].split():
            # BODY.PEEK leaves \Seen alone: mail kept for people stays unread.
            _, parts = client.fetch(number, "(BODY.PEEK[])")
            raw = next((part[1] for part in parts if isinstance(part, tuple)), None)
            if raw is None:
                continue
            read += 1
            if handle(raw, f"in the IMAP folder {config.other_mail_folder!r}"):
                client.store(number, "+FLAGS", "\\Deleted")
                continue
            if not folder_ready:
                client.create(folder)  # fails harmlessly when it exists
                folder_ready = True
            status, answer = client.copy(number, folder)
            if status == "OK":
                client.store(number, "+FLAGS", "\\Deleted")
            else:
                log.warning(
                    "could not move a message to the IMAP folder %s (%s); it stays in %s",
                    folder,
                    answer,
                    imap.folder,
                )
        client.expunge()
    return read


# POP3 has no folders: mail for people stays on the server; its unique ids are
# remembered so that it is read (and logged) once per process, not at every poll.
_POP3_KEPT: set[tuple[str, str, bytes]] = set()


def _poll_pop3(pop: MailboxConfig, handle: Callable[[bytes, str], bool]) -> int:
    client = (
        poplib.POP3_SSL(pop.host, pop.port)
        if pop.security == "tls"
        else poplib.POP3(pop.host, pop.port)
    )
    read = 0
    try:
        if pop.security == "starttls":
            client.stls()
        client.user(pop.username)
        client.pass_(pop.password)
        try:
            listing = client.uidl()[1]
            unique_ids = dict(line.split(b" ", 1) for line in listing)
        except poplib.error_proto:
            unique_ids = {}
        count, _ = client.stat()
        for number in range(1, count + 1):
            unique_id = unique_ids.get(str(number).encode())
            key = (f"{pop.host}:{pop.port}", pop.username, unique_id or b"")
            if unique_id and key in _POP3_KEPT:
                continue
            _, lines, _ = client.retr(number)
            read += 1
            if handle(b"\r\n".join(lines), "on the POP3 server"):
                client.dele(number)
            elif unique_id:
                _POP3_KEPT.add(key)
    finally:
        client.quit()
    return read
