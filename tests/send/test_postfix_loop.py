"""The bounce loop against a real Postfix on loopback (see tests/support/postfix.py).

mailer sends through Postfix, Postfix returns DSNs to the signed envelope sender
and delivers them into a Maildir, and mailer polls that Maildir: the way
docs/production.md sets it up.
"""

from __future__ import annotations

import email
import logging
import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.bounces import poll_mailboxes
from mailer.config import Settings
from mailer.context import AppContext
from mailer.models import (
    Bounce,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
)
from mailer.send import start_digest
from mailer.suppression import is_suppressed
from tests.conftest import IN_CI, make_settings
from tests.send.conftest import deliver_all, seed
from tests.send.test_bounces import dsn
from tests.support.postfix import DOMAIN, PostfixServer, postfix_available


@pytest.fixture(scope="module")
def postfix_server() -> Iterator[PostfixServer]:
    problem = postfix_available()
    if problem:
        if IN_CI:
            pytest.fail(f"a real Postfix is required under CI: {problem}")
        pytest.skip(problem)
    server = PostfixServer().start()
    yield server
    server.stop()


@pytest.fixture
def postfix(postfix_server: PostfixServer) -> PostfixServer:
    postfix_server.empty_maildirs()
    return postfix_server


def _settings(
    tmp_path: Path, database_url: str, postfix: PostfixServer, *, port: int | None = None, **bounces
) -> Settings:
    return make_settings(
        tmp_path,
        database_url,
        sender={"from": f"Press Office <press@{DOMAIN}>", "list_id": f"press.{DOMAIN}"},
        smtp={
            "embedded": False,
            "host": "127.0.0.1",
            "port": port or postfix.trusted_port,
            "retry_base": 0.2,
            "retry_max_interval": 0.5,
        },
        bounces=bounces,
    )


def _send_raw(postfix: PostfixServer, sender: str, recipient: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", postfix.trusted_port, timeout=30) as client:
        client.sendmail(sender, [recipient], message)


async def test_a_bounce_after_acceptance_suppresses_and_a_reply_survives(
    tmp_path: Path, database_url: str, postfix: PostfixServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The setup the issue was found with: no bounces.address, so bounces come back
    # to press+<token>@ and share the Maildir with replies from readers.
    settings = _settings(tmp_path, database_url, postfix, maildir=str(postfix.press_maildir))
    async with AppContext(settings=settings).database() as database:
        [address] = await seed(database, 1, domain="example.net")
        digest = await start_digest(database, settings)
        await deliver_all(database, settings)
        async with database.session() as session:
            delivery = await session.scalar(select(Delivery).where(Delivery.digest_id == digest.id))
            assert delivery.status is DeliveryStatus.SENT, "Postfix accepted the message"
        reply = (
            f"From: {address}\r\nTo: press@{DOMAIN}\r\nSubject: Re: your release\r\n"
            "Message-ID: <reply-1@example.net>\r\n\r\nCould you send the photos?\r\n"
        ).encode()
        _send_raw(postfix, address, f"press@{DOMAIN}", reply)
        postfix.wait_for_mail(postfix.press_maildir, 2)

        caplog.set_level(logging.INFO)
        assert await poll_mailboxes(database, settings) == 2
        async with database.session() as session:
            assert await is_suppressed(session, settings, address)
            bounce = await session.scalar(select(Bounce))
            assert (bounce.kind, bounce.status_code, bounce.delivery_id) == (
                "hard",
                "5.1.1",
                delivery.id,
            )
            assert (await session.get(Delivery, delivery.id)).bounced
        # One log line per message handled, and none of flufl.bounce's chatter.
        lines = sorted(r.message for r in caplog.records if r.name == "mailer.bounces")
        assert len(lines) == 2, lines
        assert lines[0].startswith("hard bounce for reader00000@example.net (5.1.1), delivery")
        assert lines[1].startswith("kept mail for people (not a bounce")
        assert not [r for r in caplog.records if r.name.startswith("flufl")]

    # The DSN was consumed; the reply was moved, byte for byte, to a folder for people.
    assert list((postfix.press_maildir / "new").iterdir()) == []
    kept = list((postfix.press_maildir / ".Other mail" / "new").iterdir())
    assert len(kept) == 1
    assert b"Could you send the photos?" in kept[0].read_bytes()
    assert kept[0].read_bytes().endswith(b"Could you send the photos?\n")

    # A second poll finds nothing new and touches nothing.
    async with AppContext(settings=settings).database() as database:
        assert await poll_mailboxes(database, settings) == 0
    assert len(list((postfix.press_maildir / ".Other mail" / "new").iterdir())) == 1


async def test_a_forged_dsn_does_not_suppress(
    tmp_path: Path, database_url: str, postfix: PostfixServer
) -> None:
    bounces = f"bounces@{DOMAIN}"
    settings = _settings(
        tmp_path, database_url, postfix, address=bounces, maildir=str(postfix.bounce_maildir)
    )
    async with AppContext(settings=settings).database() as database:
        [address] = await seed(database, 1, domain="example.net")
        digest = await start_digest(database, settings)
        async with database.session() as session:
            delivery_id = await session.scalar(
                select(Delivery.id).where(Delivery.digest_id == digest.id)
            )
        # Addressed to the bounce address itself, to the old guessable VERP form,
        # and to a well-formed token with a made-up signature.
        for to in (
            bounces,
            f"bounces+d{delivery_id}@{DOMAIN}",
            f"bounces+d{delivery_id}.0123456789abcdef@{DOMAIN}",
        ):
            _send_raw(postfix, "someone@evil.example", to, dsn(address, "5.1.1", to=to))
        postfix.wait_for_mail(postfix.bounce_maildir, 3)
        assert await poll_mailboxes(database, settings) == 3
        async with database.session() as session:
            assert not await is_suppressed(session, settings, address)
            assert await session.scalar(select(Bounce.id)) is None
    kept = list((postfix.bounce_maildir / ".Other mail" / "new").iterdir())
    assert len(kept) == 3, "forged bounces are kept for people to look at, never deleted"


async def test_the_mailto_unsubscribe_unsubscribes_without_mail_to_the_reader(
    tmp_path: Path, database_url: str, postfix: PostfixServer
) -> None:
    settings = _settings(
        tmp_path,
        database_url,
        postfix,
        address=f"bounces@{DOMAIN}",
        maildir=str(postfix.bounce_maildir),
    )
    async with AppContext(settings=settings).database() as database:
        [address] = await seed(database, 1, domain=DOMAIN)  # reader00000@news.test
        await start_digest(database, settings)
        await deliver_all(database, settings)
        [received] = postfix.wait_for_mail(postfix.reader_maildir, 1)
        digest = email.message_from_bytes(received.read_bytes())
        links = str(digest["List-Unsubscribe"])
        mailto = re.search(r"<mailto:([^?>]+)\?subject=unsubscribe>", links)
        assert mailto, links
        assert mailto.group(1).startswith("bounces+u") and mailto.group(1).endswith(DOMAIN)
        # Outlook sends the request as a plain message; addresses may arrive in any
        # case (MTAs fold them): the token must survive that.
        request = (
            f"From: {address}\r\nTo: {mailto.group(1).upper()}\r\nSubject: unsubscribe\r\n\r\n"
        ).encode()
        _send_raw(postfix, address, mailto.group(1).upper(), request)
        postfix.wait_for_mail(postfix.bounce_maildir, 1)
        assert await poll_mailboxes(database, settings) == 1
        async with database.session() as session:
            subscriber = await session.scalar(select(Subscriber))
            assert subscriber.status is SubscriberStatus.UNSUBSCRIBED
            assert await is_suppressed(session, settings, address)
    assert list((postfix.bounce_maildir / "new").iterdir()) == [], "the request was consumed"
    postfix.flush()
    assert len(list((postfix.reader_maildir / "new").iterdir())) == 1, "no confirmation mail"


async def test_a_relay_refusal_fails_without_suppressing_and_pauses_the_send(
    tmp_path: Path, database_url: str, postfix: PostfixServer
) -> None:
    settings = _settings(tmp_path, database_url, postfix, port=postfix.untrusted_port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 12, domain="example.net")
        digest = await start_digest(database, settings)
        await deliver_all(database, settings)
        async with database.session() as session:
            for address in addresses:
                assert not await is_suppressed(session, settings, address)
            failed = (
                await session.scalars(
                    select(Delivery).where(Delivery.status == DeliveryStatus.FAILED)
                )
            ).all()
            assert failed and all("5.7.1" in d.last_error and not d.bounced for d in failed)
            paused = await session.get(Digest, digest.id)
            assert paused.status is DigestStatus.PAUSED
            assert "the relay refuses to relay for this host" in paused.pause_reason
            assert "554 5.7.1" in paused.pause_reason
            assert len(failed) < len(addresses), "the send paused instead of failing everyone"
