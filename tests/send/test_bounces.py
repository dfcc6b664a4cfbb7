"""Bounces from a Maildir and from the webhook become suppressions by the rules."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from mailer.bounces import parse_dsn, poll_mailboxes, record_bounce
from mailer.config import Settings
from mailer.context import AppContext
from mailer.models import Bounce, Delivery
from mailer.send import start_digest
from mailer.suppression import is_suppressed
from mailer.web.app import create_app
from tests.conftest import make_settings
from tests.send.conftest import seed
from tests.support.mailboxes import Mailbox, MailboxServer

SECRET = "webhook-secret-0123456789"


def dsn(
    recipient: str,
    status: str,
    *,
    to: str = "press@example.org",
    action: str = "failed",
    message_id: str = "<orig@example.org>",
) -> bytes:
    """A bounce as Postfix writes it (RFC 3464 multipart/report)."""
    return f"""\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {status[0]}50 {status} mailbox problem

--B
Content-Type: text/rfc822-headers

Message-ID: {message_id}
From: Press Office <press@example.org>
Subject: Digest

--B--
""".replace("\n", "\r\n").encode()


def test_rfc3464_status_decides_hard_or_soft() -> None:
    hard = parse_dsn(dsn("gone@example.net", "5.1.1"))
    assert [(r.address, r.kind, r.status) for r in hard] == [("gone@example.net", "hard", "5.1.1")]
    soft = parse_dsn(dsn("full@example.net", "4.2.2", action="delayed"))
    assert [(r.address, r.kind) for r in soft] == [("full@example.net", "soft")]
    assert soft[0].message_id == "<orig@example.org>"


def test_verp_address_names_the_delivery() -> None:
    reports = parse_dsn(dsn("gone@example.net", "5.1.1", to="press+d4711@example.org"))
    assert reports[0].delivery_id == 4711


def test_a_plain_message_is_not_a_bounce() -> None:
    plain = b"From: someone@example.net\r\nTo: press@example.org\r\nSubject: hi\r\n\r\nHello!\r\n"
    assert parse_dsn(plain) == []


async def _settings(tmp_path: Path, database_url: str, **bounces: object) -> Settings:
    return make_settings(tmp_path, database_url, bounces={"webhook_secret": SECRET, **bounces})


async def test_hard_bounce_suppresses_and_marks_the_delivery(
    tmp_path: Path, database_url: str
) -> None:
    settings = await _settings(tmp_path, database_url, maildir=str(tmp_path / "bounces"))
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 2)
        digest = await start_digest(database, settings)
        async with database.session() as session:
            delivery = await session.scalar(
                select(Delivery).where(
                    Delivery.digest_id == digest.id, Delivery.email == addresses[0]
                )
            )
        box = mailbox.Maildir(tmp_path / "bounces", create=True)
        box.add(dsn(addresses[0], "5.1.1", to=f"press+d{delivery.id}@example.org"))
        assert await poll_mailboxes(database, settings) == 1
        assert len(box) == 0, "a processed bounce is removed from the Maildir"
        async with database.session() as session:
            assert await is_suppressed(session, settings, addresses[0])
            assert not await is_suppressed(session, settings, addresses[1])
            assert (await session.get(Delivery, delivery.id)).bounced
            bounce = await session.scalar(select(Bounce))
            assert (bounce.kind, bounce.status_code, bounce.delivery_id) == (
                "hard",
                "5.1.1",
                delivery.id,
            )


async def test_soft_bounces_suppress_only_past_the_limit(tmp_path: Path, database_url: str) -> None:
    settings = await _settings(tmp_path, database_url, soft_limit=3)
    async with AppContext(settings=settings).database() as database:
        for expected in (False, False, True):
            for report in parse_dsn(dsn("full@example.net", "4.2.2")):
                await record_bounce(database, settings, report)
            async with database.session() as session:
                assert await is_suppressed(session, settings, "full@example.net") is expected


async def test_webhook_needs_the_secret_and_accepts_json_and_dsn(
    tmp_path: Path, database_url: str
) -> None:
    settings = await _settings(tmp_path, database_url)
    app = create_app(AppContext(settings=settings), run_background=False)
    with TestClient(app) as client:
        payload = {"email": "gone@example.net", "kind": "hard", "status": "5.1.1"}
        assert client.post("/webhooks/bounce", json=payload).status_code == 401
        wrong = client.post(
            "/webhooks/bounce", json=payload, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {SECRET}"}
        ok = client.post("/webhooks/bounce", json=payload, headers=auth)
        assert ok.status_code == 200 and ok.json()["recorded"] == 1
        raw = client.post(
            "/webhooks/bounce",
            content=dsn("other@example.net", "5.1.1"),
            headers={**auth, "Content-Type": "message/rfc822"},
        )
        assert raw.status_code == 200 and raw.json()["recorded"] == 1
        bad = client.post("/webhooks/bounce", json={"email": "x", "kind": "maybe"}, headers=auth)
        assert bad.status_code == 422 and "error" in bad.json()
        garbage = client.post(
            "/webhooks/bounce",
            content=b"\x00\xff not json",
            headers={**auth, "Content-Type": "application/json"},
        )
        assert garbage.status_code == 422
    async with AppContext(settings=settings).database() as database:
        async with database.session() as session:
            assert await is_suppressed(session, settings, "gone@example.net")
            assert await is_suppressed(session, settings, "other@example.net")


async def test_webhook_is_off_without_a_secret(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url)
    with TestClient(create_app(AppContext(settings=settings), run_background=False)) as client:
        response = client.post("/webhooks/bounce", json={"email": "a@b.c", "kind": "hard"})
        assert response.status_code == 404


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
async def test_bounce_mailbox_is_polled_and_emptied(
    tmp_path: Path, sqlite_url: str, protocol: str
) -> None:
    box = Mailbox(
        "bounces",
        "pass-w0rd",
        [
            dsn("gone@example.net", "5.1.1"),
            b"From: someone@example.net\r\nSubject: out of office\r\n\r\nAway.\r\n",
        ],
    )
    with MailboxServer(protocol, box) as server:
        mailbox = {
            "host": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "username": "bounces",
            "password": "pass-w0rd",
        }
        settings = make_settings(tmp_path, sqlite_url, bounces={protocol: mailbox})
        async with AppContext(settings=settings).database() as database:
            assert await poll_mailboxes(database, settings) == 2
            async with database.session() as session:
                assert await is_suppressed(session, settings, "gone@example.net")
                assert await session.scalar(select(func.count()).select_from(Bounce)) == 1
        # Read messages are removed from the mailbox, so nothing is counted twice.
        assert box.messages == []
