"""The outbox against a real (and deliberately faulty) SMTP server."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

from sqlalchemy import select

from mailer.context import AppContext
from mailer.message import delivery_of_message_id
from mailer.models import (
    Bounce,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestKind,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
)
from mailer.send import Worker, digest_progress, outbox_backlog, set_digest_state, start_digest
from mailer.suppression import is_suppressed
from mailer.tokens import MailTokenSigner
from tests.send.conftest import deliver_all, seed, write_config
from tests.send.conftest import statuses as _statuses
from tests.support.faulty_smtp import FaultySmtpServer


async def test_every_recipient_gets_exactly_one_message(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 40)
        digest = await start_digest(database, settings)
        assert digest.recipient_count == 40
        stats = await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        assert stats.sent == 40
        assert faulty_smtp.handler.delivered() == Counter({a: 1 for a in addresses})
        assert await _statuses(database, digest.id) == Counter({"sent": 40})
        async with database.session() as session:
            progress = await digest_progress(session, digest.id)
            assert progress.status == "done"
            ids = set((await session.scalars(select(Delivery.id))).all())
        # Each message's Message-ID names its own delivery, signed (bounces quoting
        # it are matched without the Message-ID being stored).
        signer = MailTokenSigner(settings)
        named = [
            delivery_of_message_id(signer, message_from_bytes(data)["Message-ID"])
            for _, data, _ in faulty_smtp.handler.accepted
        ]
        assert sorted(named) == sorted(ids) and len(ids) == 40
        # A second send right away finds nothing new: no release goes out twice.
        again = await start_digest(database, settings)
        assert again.recipient_count == 0 and again.status == DigestStatus.DONE


async def test_4xx_is_deferred_with_backoff_then_delivered(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 5)
        faulty_smtp.handler.plan.defer_times[addresses[0]] = 2
        digest = await start_digest(database, settings)
        await deliver_all(database, settings)
        assert faulty_smtp.handler.delivered()[addresses[0]] == 1
        assert faulty_smtp.handler.attempts[addresses[0]] == 3
        async with database.session() as session:
            row = await session.scalar(select(Delivery).where(Delivery.email == addresses[0]))
        assert row.status == DeliveryStatus.SENT and row.attempts == 3
        assert await _statuses(database, digest.id) == Counter({"sent": 5})


async def test_4xx_past_the_retry_window_fails(
    tmp_path: Path, sqlite_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, sqlite_url, faulty_smtp.port, retry_for=0.5)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 2)
        faulty_smtp.handler.plan.defer_times[addresses[0]] = 1000
        digest = await start_digest(database, settings)
        await deliver_all(database, settings)
        async with database.session() as session:
            row = await session.scalar(select(Delivery).where(Delivery.email == addresses[0]))
        assert row.status == DeliveryStatus.FAILED
        assert "gave up after" in row.last_error and "451" in row.last_error
        assert (await _statuses(database, digest.id))["sent"] == 1


async def test_5xx_fails_and_only_address_refusals_suppress(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 4)
        unknown_user, policy_refusal = addresses[0], addresses[1]
        faulty_smtp.handler.plan.reject_rcpt.add(unknown_user)
        faulty_smtp.handler.plan.reject_data.add(policy_refusal)
        digest = await start_digest(database, settings)
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        assert await _statuses(database, digest.id) == Counter({"sent": 2, "failed": 2})
        async with database.session() as session:
            assert await is_suppressed(session, settings, unknown_user)
            assert not await is_suppressed(session, settings, policy_refusal)
            bounce = await session.scalar(select(Bounce))
            assert bounce.kind == "hard" and bounce.status_code == "550"
            failed = await session.scalar(select(Delivery).where(Delivery.email == unknown_user))
            assert failed.bounced and "5.1.1" in failed.last_error
        # The suppressed address is left out of the next send.
        await seed(database, 0, releases=1)
        next_digest = await start_digest(database, settings)
        assert next_digest.recipient_count == 3


async def test_connection_dropped_mid_data_is_retried_once(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 6)
        faulty_smtp.handler.plan.drop_once.add(addresses[2])
        digest = await start_digest(database, settings)
        await deliver_all(database, settings)
        assert faulty_smtp.handler.delivered() == Counter({a: 1 for a in addresses})
        assert await _statuses(database, digest.id) == Counter({"sent": 6})


async def test_server_down_then_up_loses_nothing(tmp_path: Path, database_url: str) -> None:
    server = FaultySmtpServer().start()
    port = server.port
    server.stop()  # down before the send starts
    settings = write_config(tmp_path, database_url, port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 10)
        digest = await start_digest(database, settings)
        # `--until-empty` gives up for now and leaves everything deferred, not failed.
        stats = await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        assert stats.sent == 0
        assert await _statuses(database, digest.id) == Counter({"deferred": 10})

        # A long-running worker (as in `mailer serve`) resumes when the server is back.
        worker = Worker(database, settings, poll_interval=0.1)
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        revived = FaultySmtpServer(port=port).start()
        try:
            for _ in range(300):
                if (await _statuses(database, digest.id))["sent"] == 10:
                    break
                await asyncio.sleep(0.1)
            worker.stop()
            await asyncio.wait_for(running, timeout=30)
            assert revived.handler.delivered() == Counter({a: 1 for a in addresses})
            assert await _statuses(database, digest.id) == Counter({"sent": 10})
        finally:
            revived.stop()


async def test_many_permanent_failures_pause_the_send(
    tmp_path: Path, sqlite_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(
        tmp_path, sqlite_url, faulty_smtp.port, pause_after_failures=5, connections=1
    )
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 30)
        faulty_smtp.handler.plan.reject_data.update(addresses)
        digest = await start_digest(database, settings)
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        async with database.session() as session:
            progress = await digest_progress(session, digest.id)
        assert progress.status == "paused"
        # The refusals are 554 5.7.1 (policy): the reason says what the relay objects to.
        assert "5 recipients in a row were refused" in progress.pause_reason
        assert "refuses the mail by policy (554 5.7.1" in progress.pause_reason
        # The rest waits, untouched, for an operator.
        assert progress.counts.get("pending", 0) > 0
        assert progress.counts["failed"] < 30

        faulty_smtp.handler.plan.reject_data.clear()
        await set_digest_state(database, digest.id, "resume")
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        statuses = await _statuses(database, digest.id)
        assert statuses["sent"] + statuses["failed"] == 30 and statuses["sent"] > 0


async def test_rate_limit_is_held(
    tmp_path: Path, sqlite_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, sqlite_url, faulty_smtp.port, rate_limit=20)
    async with AppContext(settings=settings).database() as database:
        await seed(database, 45)
        await start_digest(database, settings)
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
    times = sorted(t for _, _, t in faulty_smtp.handler.accepted)
    assert len(times) == 45
    # In no one-second window did more than the limit (plus the message that opens
    # the window) arrive.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 21, busiest


async def test_unsubscribed_after_queueing_is_not_sent(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 3)
        digest = await start_digest(database, settings)
        async with database.transaction() as session:
            subscriber = await session.scalar(
                select(Subscriber).where(Subscriber.email_key == addresses[1])
            )
            subscriber.status = SubscriberStatus.UNSUBSCRIBED
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        assert addresses[1] not in faulty_smtp.handler.delivered()
        assert await _statuses(database, digest.id) == Counter({"sent": 2, "cancelled": 1})


async def test_pause_resume_cancel(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        await seed(database, 8)
        digest = await start_digest(database, settings)
        await set_digest_state(database, digest.id, "pause")
        stats = await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        assert stats.sent == 0
        await set_digest_state(database, digest.id, "resume")
        await set_digest_state(database, digest.id, "cancel")
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
        assert faulty_smtp.handler.delivered() == Counter()
        assert await _statuses(database, digest.id) == Counter({"cancelled": 8})
        async with database.session() as session:
            assert (await session.get(Digest, digest.id)).status == DigestStatus.CANCELLED


async def test_per_domain_connection_limit_is_held(
    tmp_path: Path, sqlite_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(
        tmp_path, sqlite_url, faulty_smtp.port, connections=4, per_domain_connections=1
    )
    faulty_smtp.handler.plan.data_delay = 0.02
    async with AppContext(settings=settings).database() as database:
        await seed(database, 12, domain="slow.example")
        async with database.transaction() as session:
            for i in range(12):
                session.add(
                    Subscriber(
                        email=f"other{i}@fast.example",
                        email_key=f"other{i}@fast.example",
                        status=SubscriberStatus.CONFIRMED,
                        digest_since=datetime(2000, 1, 1, tzinfo=UTC),
                    )
                )
        await start_digest(database, settings)
        await Worker(database, settings, poll_interval=0.1).run(until_empty=True)
    assert sum(faulty_smtp.handler.delivered().values()) == 24
    assert faulty_smtp.handler.most_in_data["slow.example"] == 1
    assert faulty_smtp.handler.most_in_data["fast.example"] == 1


async def test_planning_plans_everyone_once(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses = await seed(database, 10, releases=2)
        digest = await start_digest(database, settings)
        assert digest.recipient_count == 10
        async with database.session() as session:
            rows = (await session.execute(select(Delivery.email, Delivery.release_ids))).all()
        assert sorted(email for email, _ in rows) == addresses
        assert all(len(ids) == 2 for _, ids in rows)


async def test_what_is_left_counts_a_paused_sends_claimed_rows_as_paused(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    """Claimed rows keep their status until their result is written; the backlog
    counts them as in flight only in a running send, and a paused send's claimed
    rows as paused, not out of another send's pending rows."""
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        await seed(database, 4)
        paused = await start_digest(database, settings)
        assert len(await Worker(database, settings, digest_id=paused.id).claim(2)) == 2
        await set_digest_state(database, paused.id, "pause")
        running = await start_digest(
            database, settings, kind=DigestKind.TEST, test_address="editor@example.org"
        )
        async with database.session() as session:
            left = await outbox_backlog(session)
            only_running = await outbox_backlog(session, running.id)
        assert (left.paused, left.pending, left.sending, left.deferred) == (4, 1, 0, 0)
        assert (only_running.paused, only_running.pending, only_running.sending) == (0, 1, 0)
        claimed = await Worker(database, settings, digest_id=running.id).claim(5)
        async with database.session() as session:
            left = await outbox_backlog(session)
        assert [c.email for c in claimed] == ["editor@example.org"]
        assert (left.paused, left.pending, left.sending) == (4, 0, 1)


async def test_a_claim_skips_rows_another_worker_holds_however_many(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    """A second worker gets only rows the first does not hold, also when the first
    holds more rows than the second asks for, and sees work left while there is."""
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        await seed(database, 10)
        await start_digest(database, settings)
        first, second = Worker(database, settings), Worker(database, settings)
        held = {c.id for c in await first.claim(7)}
        assert len(held) == 7
        two = {c.id for c in await second.claim(2)}
        assert len(two) == 2 and not two & held
        assert await second._work_due()
        last = {c.id for c in await second.claim(5)}
        assert len(last) == 1 and not last & (held | two)
        assert not await second._work_due()
        assert await second.claim(5) == []
