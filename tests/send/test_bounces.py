"""Bounces from a Maildir and from the webhook become suppressions by the rules."""

from __future__ import annotations

import mailbox
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from mailer.bounces import parse_dsn, poll_mailboxes, record_bounce
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.message import build_confirmation_message, parse_verp, verp_address
from mailer.models import Bounce, Delivery
from mailer.send import start_digest
from mailer.smtpstatus import Verdict
from mailer.suppression import is_suppressed
from mailer.tokens import MailTokenKind, MailTokenSigner
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


def test_rfc3464_status_decides_what_a_bounce_means() -> None:
    def verdicts(status: str, action: str = "failed") -> list[tuple[str | None, Verdict, str]]:
        return [
            (r.address, r.kind, r.status)
            for r in parse_dsn(dsn("x@example.net", status, action=action))
        ]

    assert verdicts("5.1.1") == [("x@example.net", Verdict.HARD, "5.1.1")]
    assert verdicts("5.2.1") == [("x@example.net", Verdict.HARD, "5.2.1")]
    assert verdicts("5.2.2") == [("x@example.net", Verdict.SOFT, "5.2.2")]
    assert verdicts("5.7.1") == [("x@example.net", Verdict.POLICY, "5.7.1")]
    assert verdicts("5.3.4") == [("x@example.net", Verdict.FAILED, "5.3.4")]
    assert verdicts("4.2.2", action="delayed") == [("x@example.net", Verdict.SOFT, "4.2.2")]
    assert parse_dsn(dsn("x@example.net", "5.1.1"))[0].message_id == "<orig@example.org>"


def test_the_verp_token_is_signed_and_survives_lowercasing(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, bounces={"address": "bounces@example.org"})
    address = verp_address(settings, 4711)
    assert re.fullmatch(r"bounces\+d4711\.[0-9a-f]{16}@example\.org", address)
    assert parse_verp(settings, address) == 4711
    assert parse_verp(settings, address.upper()) == 4711
    assert parse_verp(settings, address.replace("d4711", "d4712")) is None
    assert parse_verp(settings, "press+d4711@example.org") is None
    other_site = make_settings(tmp_path, sqlite_url, secret_key="another-secret-key-0123456789")
    assert parse_verp(other_site, address) is None
    assert parse_dsn(dsn("gone@example.net", "5.1.1", to=address))[0].tokens == (
        address.split("+")[1].split("@")[0],
    )


def test_a_plain_message_is_not_a_bounce() -> None:
    plain = b"From: someone@example.net\r\nTo: press@example.org\r\nSubject: hi\r\n\r\nHello!\r\n"
    assert parse_dsn(plain) == []


async def _settings(tmp_path: Path, database_url: str, **bounces: object) -> Settings:
    return make_settings(tmp_path, database_url, bounces={"webhook_secret": SECRET, **bounces})


async def _deliveries(database: Database, settings: Settings, count: int) -> list[Delivery]:
    await seed(database, count)
    digest = await start_digest(database, settings)
    async with database.session() as session:
        return list(
            (
                await session.scalars(
                    select(Delivery).where(Delivery.digest_id == digest.id).order_by(Delivery.id)
                )
            ).all()
        )


async def test_hard_bounce_suppresses_and_marks_the_delivery(
    tmp_path: Path, database_url: str
) -> None:
    settings = await _settings(tmp_path, database_url, maildir=str(tmp_path / "bounces"))
    async with AppContext(settings=settings).database() as database:
        first, second = await _deliveries(database, settings, 2)
        box = mailbox.Maildir(tmp_path / "bounces", create=True)
        box.add(dsn(first.email, "5.1.1", to=verp_address(settings, first.id)))
        assert await poll_mailboxes(database, settings) == 1
        assert len(box) == 0, "a processed bounce is removed from the Maildir"
        async with database.session() as session:
            assert await is_suppressed(session, settings, first.email)
            assert not await is_suppressed(session, settings, second.email)
            assert (await session.get(Delivery, first.id)).bounced
            bounce = await session.scalar(select(Bounce))
            assert (bounce.kind, bounce.status_code, bounce.delivery_id) == (
                "hard",
                "5.1.1",
                first.id,
            )


async def test_a_bounce_must_name_the_recipient_of_its_delivery(
    tmp_path: Path, database_url: str
) -> None:
    settings = await _settings(tmp_path, database_url)
    async with AppContext(settings=settings).database() as database:
        first, second = await _deliveries(database, settings, 2)
        # A genuine token of the first delivery, naming the second reader.
        [report] = parse_dsn(dsn(second.email, "5.1.1", to=verp_address(settings, first.id)))
        handled = await record_bounce(database, settings, report)
        assert not handled.consumed and "went to someone else" in handled.summary
        async with database.session() as session:
            assert not await is_suppressed(session, settings, second.email)
            assert not await is_suppressed(session, settings, first.email)


async def test_a_policy_refusal_in_a_dsn_is_recorded_but_does_not_suppress(
    tmp_path: Path, database_url: str
) -> None:
    settings = await _settings(tmp_path, database_url)
    async with AppContext(settings=settings).database() as database:
        [delivery] = await _deliveries(database, settings, 1)
        [report] = parse_dsn(dsn(delivery.email, "5.7.1", to=verp_address(settings, delivery.id)))
        assert (await record_bounce(database, settings, report)).consumed
        async with database.session() as session:
            assert not await is_suppressed(session, settings, delivery.email)
            assert (await session.scalar(select(Bounce.kind))) == "policy"


async def test_soft_bounces_suppress_only_past_the_limit(tmp_path: Path, database_url: str) -> None:
    settings = await _settings(tmp_path, database_url, soft_limit=3)
    # A bounce of a one-off message (a confirmation request) carries a token signed
    # for its recipient.
    returned_to = build_confirmation_message(
        settings, "full@example.net", None, "https://x/confirm/t"
    ).envelope_from
    assert returned_to.startswith("press+t.")
    async with AppContext(settings=settings).database() as database:
        for expected in (False, False, True):
            for report in parse_dsn(dsn("full@example.net", "4.2.2", to=returned_to)):
                await record_bounce(database, settings, report)
            async with database.session() as session:
                assert await is_suppressed(session, settings, "full@example.net") is expected
        # The token is the recipient's own: it proves nothing about anyone else.
        for report in parse_dsn(dsn("other@example.net", "5.1.1", to=returned_to)):
            assert not (await record_bounce(database, settings, report)).consumed


async def test_webhook_needs_the_secret_and_matching_reports(
    tmp_path: Path, database_url: str
) -> None:
    settings = await _settings(tmp_path, database_url)
    async with AppContext(settings=settings).database() as database:
        first, second, third = await _deliveries(database, settings, 3)
    # The Message-ID mailer gave the third message (it names its delivery, signed),
    # and one with the same shape that this site did not sign.
    signed = MailTokenSigner(settings).token(MailTokenKind.DELIVERY, third.id)
    third_message_id = f"<1700000000.{signed}@example.org>"
    forged_message_id = f"<1700000000.d{third.id}.0123456789abcdef@example.org>"
    app = create_app(AppContext(settings=settings), run_background=False)
    with TestClient(app) as client:
        payload = {
            "email": first.email,
            "kind": "hard",
            "status": "5.1.1",
            "envelope_from": verp_address(settings, first.id),
        }
        assert client.post("/webhooks/bounce", json=payload).status_code == 401
        wrong = client.post(
            "/webhooks/bounce", json=payload, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {SECRET}"}
        ok = client.post("/webhooks/bounce", json=payload, headers=auth)
        assert ok.status_code == 200 and (ok.json()["recorded"], ok.json()["ignored"]) == (1, 0)
        forged = client.post(
            "/webhooks/bounce",
            json={"email": third.email, "kind": "hard", "message_id": forged_message_id},
            headers=auth,
        )
        assert (forged.json()["recorded"], forged.json()["ignored"]) == (0, 1)
        by_message_id = client.post(
            "/webhooks/bounce",
            json={"email": third.email, "kind": "hard", "message_id": third_message_id},
            headers=auth,
        )
        assert by_message_id.json()["recorded"] == 1
        unproven = client.post(
            "/webhooks/bounce", json={"email": second.email, "kind": "hard"}, headers=auth
        )
        assert unproven.status_code == 422 and "envelope_from" in unproven.json()["error"]
        forged = client.post(
            "/webhooks/bounce",
            json={
                "email": second.email,
                "kind": "hard",
                "envelope_from": f"press+d{second.id}@example.org",
            },
            headers=auth,
        )
        assert forged.status_code == 200 and forged.json()["ignored"] == 1
        policy = client.post(
            "/webhooks/bounce",
            json={
                **payload,
                "email": second.email,
                "status": "5.7.1",
                "envelope_from": verp_address(settings, second.id),
            },
            headers=auth,
        )
        assert policy.json()["recorded"] == 1
        raw_forged = client.post(
            "/webhooks/bounce",
            content=dsn(second.email, "5.1.1"),
            headers={**auth, "Content-Type": "message/rfc822"},
        )
        assert raw_forged.status_code == 200 and raw_forged.json()["ignored"] == 1
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
            assert await is_suppressed(session, settings, first.email)
            assert await is_suppressed(session, settings, third.email)
            assert not await is_suppressed(session, settings, second.email)


async def test_webhook_is_off_without_a_secret(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url)
    with TestClient(create_app(AppContext(settings=settings), run_background=False)) as client:
        response = client.post("/webhooks/bounce", json={"email": "a@b.c", "kind": "hard"})
        assert response.status_code == 404


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
async def test_bounce_mailbox_keeps_what_is_not_a_bounce(
    tmp_path: Path, sqlite_url: str, protocol: str
) -> None:
    settings = make_settings(tmp_path, sqlite_url)
    returned_to = build_confirmation_message(
        settings, "gone@example.net", None, "https://x/confirm/t"
    ).envelope_from
    out_of_office = b"From: someone@example.net\r\nSubject: out of office\r\n\r\nAway.\r\n"
    forged = dsn("victim@example.net", "5.1.1")
    box = Mailbox(
        "bounces",
        "pass-w0rd",
        [dsn("gone@example.net", "5.1.1", to=returned_to), out_of_office, forged],
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
            assert await poll_mailboxes(database, settings) == 3
            async with database.session() as session:
                assert await is_suppressed(session, settings, "gone@example.net")
                assert not await is_suppressed(session, settings, "victim@example.net")
                assert await session.scalar(select(func.count()).select_from(Bounce)) == 1
            if protocol == "imap":
                # Moved to a folder for people; the bounce itself is gone.
                assert box.messages == []
                assert box.folders == {"Other mail": [out_of_office, forged]}
            else:
                # POP3 has no folders: mail for people stays, and is not read again.
                assert box.messages == [out_of_office, forged]
                assert await poll_mailboxes(database, settings) == 0
