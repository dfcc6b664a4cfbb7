"""Withdrawn and embargoed releases in planning: a withdrawn release is never mailed
after its withdrawal (even from a digest planned before it), an embargoed one not
before its embargo ends."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from mailer import archive
from mailer.config import Settings
from mailer.db import Database
from mailer.digest import plan_digest
from mailer.models import Delivery, DeliveryStatus, utcnow
from mailer.send import start_digest
from tests.digest.conftest import add_release, add_subscriber, new_digest


async def _plan(database: Database, settings: Settings, now=None, **kw) -> dict[str, Delivery]:
    async with database.transaction() as session:
        digest = await new_digest(session, "all", **kw)
        await plan_digest(session, settings, digest, now)
        rows = await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
        return {row.email: row for row in rows}


async def test_withdrawn_release_is_not_planned(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        kept = await add_release(session, "Kept")
        pulled = await add_release(session, "Pulled")
        await archive.withdraw_release(session, pulled.id, note=None, now=utcnow())
    deliveries = await _plan(database, settings)
    assert deliveries["ona@example.lt"].release_ids == [kept.id]


async def test_embargoed_release_waits_for_its_time(database: Database, settings: Settings) -> None:
    now = utcnow()
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        embargoed = await add_release(
            session,
            "Figures",
            published_at=now - timedelta(minutes=5),
            embargo_until=now + timedelta(hours=1),
        )
    assert await _plan(database, settings, now) == {}
    later = await _plan(database, settings, now + timedelta(hours=1, seconds=1))
    assert later["ona@example.lt"].release_ids == [embargoed.id]


async def test_withdrawal_takes_the_release_out_of_unsent_digests(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt", topics=["economy", "health"])
        await add_subscriber(session, "jonas@example.lt", topics=["health"])
        budget = await add_release(session, "Budget", topics=["economy"])
        hospital = await add_release(session, "Hospital", topics=["health"])
    digest = await start_digest(database, settings)
    test_send = await start_digest(database, settings, kind="test", test_address="ed@example.lt")
    async with database.session() as session:
        before = {d.email: d for d in await session.scalars(select(Delivery).order_by(Delivery.id))}
    assert sorted(before["ona@example.lt"].release_ids) == sorted([budget.id, hospital.id])
    assert before["jonas@example.lt"].release_ids == [hospital.id]
    assert sorted(before["ed@example.lt"].release_ids) == sorted([budget.id, hospital.id])

    async with database.transaction() as session:
        outcome = await archive.withdraw_release(session, hospital.id, note=None, now=utcnow())
    assert (outcome.deliveries_changed, outcome.deliveries_cancelled) == (2, 1)

    async with database.session() as session:
        after = {d.email: d for d in await session.scalars(select(Delivery))}
    ona, jonas = after["ona@example.lt"], after["jonas@example.lt"]
    assert ona.release_ids == [budget.id] and ona.status == DeliveryStatus.PENDING
    assert ona.content_key != before["ona@example.lt"].content_key
    assert jonas.status == DeliveryStatus.CANCELLED
    assert jonas.last_error == "its only release was withdrawn before sending"
    assert after["ed@example.lt"].release_ids == [budget.id]
    assert {digest.id, test_send.id} == {d.digest_id for d in after.values()}

    # Restored, it is new to the readers who never got it.
    async with database.transaction() as session:
        assert await archive.restore_release(session, hospital.id, now=utcnow())
    again = await _plan(database, settings)
    assert again["jonas@example.lt"].release_ids == [hospital.id]
    assert again["ona@example.lt"].release_ids == [hospital.id]


async def test_a_sent_message_is_left_alone(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        release = await add_release(session, "Sent already")
    deliveries = await _plan(database, settings)
    async with database.transaction() as session:
        delivery = await session.get(Delivery, deliveries["ona@example.lt"].id)
        delivery.status = DeliveryStatus.SENT
    async with database.transaction() as session:
        outcome = await archive.withdraw_release(session, release.id, note=None, now=utcnow())
    assert (outcome.deliveries_changed, outcome.deliveries_cancelled) == (0, 0)
    async with database.session() as session:
        delivery = await session.get(Delivery, deliveries["ona@example.lt"].id)
        assert delivery.status == DeliveryStatus.SENT and delivery.release_ids == [release.id]
    # Still recorded as sent: withdrawn and restored, it is not mailed to her twice.
    async with database.transaction() as session:
        await archive.withdraw_release(session, release.id, note=None, now=utcnow())
        assert await archive.restore_release(session, release.id, now=utcnow())
    assert await _plan(database, settings) == {}
