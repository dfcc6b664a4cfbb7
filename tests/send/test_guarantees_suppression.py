"""Guarantee: a suppressed address is never mailed, whenever the suppression arrives.

Planning leaves suppressed addresses out, but a send takes time: the bounce of an
earlier digest, or the soft bounce that reaches the limit, can suppress an address
after its next delivery was queued. A bounce does not unsubscribe anyone (the
subscriber stays confirmed), so the worker's check of the suppression list when it
claims a delivery is the only thing that keeps that mail off the wire.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mailer.bounces import handle_message
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.message import verp_address
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from mailer.send import Worker, digest_progress, start_digest
from tests.send.conftest import seed, write_config
from tests.send.test_bounces import dsn
from tests.support.faulty_smtp import FaultySmtpServer


async def _bounce(database: Database, settings: Settings, earlier: Delivery, status: str) -> str:
    """The recipient's server returns an earlier digest to its signed envelope sender."""
    raw = dsn(earlier.email, status, to=verp_address(settings, earlier.id))
    handled = await handle_message(database, settings, raw)
    assert handled.consumed, handled.summary
    return handled.summary


async def _hard_bounce(database: Database, settings: Settings, earlier: Delivery) -> None:
    assert await _bounce(database, settings, earlier, "5.1.1") == "suppressed (hard bounce)"


async def _soft_bounces_past_the_limit(
    database: Database, settings: Settings, earlier: Delivery
) -> None:
    summaries = [
        await _bounce(database, settings, earlier, "4.2.2")
        for _ in range(settings.bounces.soft_limit)
    ]
    assert summaries[-1].startswith("suppressed"), summaries


async def _earlier_digest_sent(
    database: Database, settings: Settings, readers: int
) -> tuple[list[str], dict[str, Delivery]]:
    """Readers who got one digest already; their deliveries by address."""
    addresses = await seed(database, readers)
    digest = await start_digest(database, settings)
    await Worker(database, settings, poll_interval=0.05).run(until_empty=True)
    async with database.session() as session:
        rows = await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
        sent = {row.email: row for row in rows}
    assert {row.status for row in sent.values()} == {DeliveryStatus.SENT}
    # News for the next digest.
    await seed(database, 0, releases=1)
    return addresses, sent


async def _delivery_of(database: Database, digest_id: int, address: str) -> Delivery:
    async with database.session() as session:
        row = await session.scalar(
            select(Delivery).where(Delivery.digest_id == digest_id, Delivery.email == address)
        )
    assert row is not None
    return row


async def _statuses(database: Database, digest_id: int) -> Counter[str]:
    async with database.session() as session:
        rows = await session.scalars(select(Delivery.status).where(Delivery.digest_id == digest_id))
        return Counter(status.value for status in rows)


@pytest.mark.parametrize(
    "suppression",
    [
        pytest.param(_hard_bounce, id="hard-bounce"),
        pytest.param(_soft_bounces_past_the_limit, id="soft-bounce-limit"),
    ],
)
async def test_address_suppressed_after_planning_is_not_sent_and_its_delivery_is_cancelled(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer, suppression
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses, earlier = await _earlier_digest_sent(database, settings, 3)
        bounced = addresses[1]
        digest = await start_digest(database, settings)
        assert digest.recipient_count == 3
        # The earlier digest to this reader comes back after the next one was planned.
        await suppression(database, settings, earlier[bounced])
        async with database.session() as session:
            subscriber = await session.scalar(select(Subscriber).where(Subscriber.email == bounced))
            # Still confirmed: only the suppression list knows.
            assert subscriber.status is SubscriberStatus.CONFIRMED

        await Worker(database, settings, poll_interval=0.05).run(until_empty=True)

        assert faulty_smtp.handler.attempts[bounced] == 1, "the address reached the server again"
        assert faulty_smtp.handler.delivered() == Counter(
            {addresses[0]: 2, bounced: 1, addresses[2]: 2}
        )
        withdrawn = await _delivery_of(database, digest.id, bounced)
        assert withdrawn.status is DeliveryStatus.CANCELLED
        assert "suppressed" in (withdrawn.last_error or "")
        assert await _statuses(database, digest.id) == Counter({"sent": 2, "cancelled": 1})
        async with database.session() as session:
            progress = await digest_progress(session, digest.id)
            assert progress.status == "done"


async def test_deferred_delivery_suppressed_before_its_retry_is_not_retried(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    # The retry is made due by hand below: left to the clock, a slow run (a loaded
    # machine) would retry within the first run and the message would go out.
    settings = write_config(
        tmp_path, database_url, faulty_smtp.port, retry_base=60, retry_max_interval=120
    )
    async with AppContext(settings=settings).database() as database:
        addresses, earlier = await _earlier_digest_sent(database, settings, 2)
        busy = addresses[0]
        faulty_smtp.handler.plan.defer_times[busy] = 1
        digest = await start_digest(database, settings)
        await Worker(database, settings, poll_interval=0.05).run(until_empty=True)
        assert (await _delivery_of(database, digest.id, busy)).status is DeliveryStatus.DEFERRED
        assert faulty_smtp.handler.attempts[busy] == 2

        await _hard_bounce(database, settings, earlier[busy])
        # The retry falls due (moved by hand rather than waited for).
        async with database.transaction() as session:
            await session.execute(
                update(Delivery)
                .where(Delivery.digest_id == digest.id, Delivery.email == busy)
                .values(next_attempt_at=utcnow() - timedelta(seconds=1))
            )
        await Worker(database, settings, poll_interval=0.05).run(until_empty=True)

        assert faulty_smtp.handler.attempts[busy] == 2, "the suppressed address was retried"
        assert faulty_smtp.handler.delivered()[busy] == 1
        assert (await _delivery_of(database, digest.id, busy)).status is DeliveryStatus.CANCELLED
        async with database.session() as session:
            assert (await session.get(Digest, digest.id)).status is DigestStatus.DONE


async def test_address_suppressed_before_planning_gets_no_delivery_at_all(
    tmp_path: Path, database_url: str, faulty_smtp: FaultySmtpServer
) -> None:
    settings = write_config(tmp_path, database_url, faulty_smtp.port)
    async with AppContext(settings=settings).database() as database:
        addresses, earlier = await _earlier_digest_sent(database, settings, 3)
        bounced = addresses[2]
        await _hard_bounce(database, settings, earlier[bounced])
        digest = await start_digest(database, settings)
        # Left out by planning: not counted as a recipient, no row to withdraw later.
        assert digest.recipient_count == 2
        async with database.session() as session:
            queued = (
                await session.scalars(select(Delivery.email).where(Delivery.digest_id == digest.id))
            ).all()
        assert sorted(queued) == addresses[:2]
        await Worker(database, settings, poll_interval=0.05).run(until_empty=True)
        assert faulty_smtp.handler.attempts[bounced] == 1
        assert await _statuses(database, digest.id) == Counter({"sent": 2})
