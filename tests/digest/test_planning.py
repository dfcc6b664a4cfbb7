"""Who gets which releases: topics, frequencies, nothing-new, never-twice, merges."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

from sqlalchemy import func, select, update

from mailer.config import Settings
from mailer.db import Database
from mailer.digest import plan_digest
from mailer.models import (
    ContentGroup,
    Delivery,
    DeliveryStatus,
    Frequency,
    Release,
    Subscriber,
    SubscriberStatus,
    Watermark,
    utcnow,
)
from mailer.suppression import suppress
from tests.digest.conftest import add_release, add_subscriber, new_digest


async def _deliveries(database: Database, digest_id: int) -> dict[str, Delivery]:
    async with database.session() as session:
        rows = await session.scalars(select(Delivery).where(Delivery.digest_id == digest_id))
        return {row.email: row for row in rows}


async def _plan(database: Database, settings: Settings, frequency: str = "all", **kw) -> int:
    async with database.transaction() as session:
        digest = await new_digest(session, frequency, **kw)
        await plan_digest(session, settings, digest)
        return digest.id


def _with_digest(settings: Settings, **changes) -> Settings:
    return settings.model_copy(update={"digest": settings.digest.model_copy(update=changes)})


async def test_subscribers_get_new_releases_of_their_topics_newest_first(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        economy = await add_release(
            session, "Budget", published_at=now - timedelta(hours=3), topics=["economy"]
        )
        health = await add_release(
            session, "Hospital", published_at=now - timedelta(hours=2), topics=["health"]
        )
        foreign = await add_release(
            session, "Embassy", published_at=now - timedelta(hours=1), topics=["foreign-affairs"]
        )
        both = await add_release(
            session,
            "Hospital tax",
            published_at=now - timedelta(minutes=30),
            topics=["economy", "health"],
        )
        await add_subscriber(session, "one@example.org", topics=["economy"])
        await add_subscriber(session, "two@example.org", topics=["economy", "health"])
        await add_subscriber(session, "all@example.org")

    async with database.transaction() as session:
        digest = await new_digest(session)
        count = await plan_digest(session, settings, digest, now=now)
        assert digest.recipient_count == 3
    assert count == 3

    deliveries = await _deliveries(database, digest.id)
    assert deliveries["one@example.org"].release_ids == [both.id, economy.id]
    assert deliveries["two@example.org"].release_ids == [both.id, health.id, economy.id]
    assert deliveries["all@example.org"].release_ids == [both.id, foreign.id, health.id, economy.id]
    one = deliveries["one@example.org"]
    assert one.status == DeliveryStatus.PENDING
    assert one.next_attempt_at is None
    expected_key = hashlib.sha256(f"{economy.id},{both.id}".encode()).hexdigest()
    assert one.content_key == expected_key

    async with database.session() as session:
        # One content group per distinct message, not a row per reader and release.
        groups = (
            await session.scalars(select(ContentGroup).where(ContentGroup.digest_id == digest.id))
        ).all()
        assert sorted(g.release_ids for g in groups) == sorted(
            d.release_ids for d in deliveries.values()
        )
        assert [g.recipients for g in groups] == [1, 1, 1]
        stamps = (await session.scalars(select(Watermark.last_digest_at))).all()
        assert stamps == [now, now, now]


async def test_frequency_picks_the_subscribers(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        await add_release(session, "Budget news")
        await add_subscriber(session, "daily@example.org", frequency=Frequency.DAILY)
        await add_subscriber(session, "weekly@example.org", frequency=Frequency.WEEKLY)
        await add_subscriber(session, "now@example.org", frequency=Frequency.IMMEDIATELY)

    weekly = await _deliveries(database, await _plan(database, settings, "weekly"))
    assert set(weekly) == {"weekly@example.org"}
    immediately = await _deliveries(database, await _plan(database, settings, "immediately"))
    assert set(immediately) == {"now@example.org"}
    everyone_else = await _deliveries(database, await _plan(database, settings, "all"))
    assert set(everyone_else) == {"daily@example.org"}


async def test_nothing_new_means_no_email(database: Database, settings: Settings) -> None:
    now = utcnow()
    async with database.transaction() as session:
        confirmed = now - timedelta(days=1)
        await add_release(session, "Before signing up", published_at=confirmed - timedelta(hours=1))
        await add_release(session, "Left out by an editor", excluded=True)
        await add_release(session, "Economy only", topics=["economy"])
        await add_subscriber(
            session, "health@example.org", topics=["health"], confirmed_at=confirmed
        )
        await add_subscriber(session, "pending@example.org", status=SubscriberStatus.PENDING)
        await add_subscriber(session, "gone@example.org", status=SubscriberStatus.UNSUBSCRIBED)

    async with database.transaction() as session:
        digest = await new_digest(session)
        assert await plan_digest(session, settings, digest, now=now) == 0
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Delivery)) == 0
        assert await session.scalar(select(func.count()).select_from(ContentGroup)) == 0


async def test_a_release_is_never_queued_twice_to_a_subscriber(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        first = await add_release(session, "First", published_at=utcnow() - timedelta(hours=2))
        await add_subscriber(session, "reader@example.org", frequency=Frequency.DAILY)

    daily = await _deliveries(database, await _plan(database, settings, "daily"))
    assert daily["reader@example.org"].release_ids == [first.id]
    # A manual send overlapping the daily schedule: nothing new, so no message.
    assert await _deliveries(database, await _plan(database, settings, "all")) == {}

    async with database.transaction() as session:
        second = await add_release(session, "Second", published_at=utcnow() - timedelta(hours=1))
    again = await _deliveries(database, await _plan(database, settings, "all"))
    assert again["reader@example.org"].release_ids == [second.id]


async def test_a_send_with_nothing_for_a_reader_keeps_when_they_last_got_one(
    database: Database, settings: Settings
) -> None:
    """Readers planned before are updated in place, new ones inserted: the date of a
    reader's last digest (shown in their data export) survives a send that gives
    them nothing, and a reader who never got one has none."""
    first_send = utcnow() - timedelta(minutes=10)
    async with database.transaction() as session:
        await add_release(
            session, "Budget", published_at=first_send - timedelta(hours=1), topics=["economy"]
        )
        await add_subscriber(session, "economy@example.org", topics=["economy"])
        await add_subscriber(session, "health@example.org", topics=["health"])
        digest = await new_digest(session)
        assert await plan_digest(session, settings, digest, now=first_send) == 1

    second_send = utcnow()
    async with database.transaction() as session:
        await add_release(session, "Hospital", topics=["health"])
        # Confirmed after Budget was collected: nothing for them yet.
        await add_subscriber(session, "late@example.org", topics=["economy"], confirmed_at=utcnow())
        digest = await new_digest(session)
        assert await plan_digest(session, settings, digest, now=second_send) == 1

    async with database.session() as session:
        rows = await session.execute(
            select(Subscriber.email, Watermark.last_digest_at, Watermark.planned_at).join(
                Watermark, Watermark.subscriber_id == Subscriber.id
            )
        )
        marks = {email: (last, planned) for email, last, planned in rows}
    assert marks == {
        "economy@example.org": (first_send, second_send),
        "health@example.org": (second_send, second_send),
        "late@example.org": (None, second_send),
    }


async def test_concurrent_planners_split_rather_than_duplicate(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        releases = [await add_release(session, f"Release {n}") for n in range(3)]
        for n in range(5):
            await add_subscriber(session, f"reader{n}@example.org", frequency=Frequency.DAILY)

    await asyncio.gather(_plan(database, settings, "daily"), _plan(database, settings, "all"))

    async with database.session() as session:
        deliveries = (await session.scalars(select(Delivery))).all()
    per_subscriber: dict[int, list[int]] = {}
    for delivery in deliveries:
        per_subscriber.setdefault(delivery.subscriber_id, []).extend(delivery.release_ids)
    assert len(per_subscriber) == 5
    for received in per_subscriber.values():
        assert sorted(received) == sorted(r.id for r in releases)


async def test_merged_releases_are_sent_once(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        original = await add_release(session, "Ministry: new tax", topics=["economy"])
        await add_subscriber(session, "early@example.org")
    await _plan(database, settings)

    # An aggregator republishes it; dedupe keeps the newer copy and folds the
    # original into it. Whoever received the original must not get it again.
    async with database.transaction() as session:
        survivor = await add_release(
            session,
            "Ministry: new tax (republished)",
            topics=["economy"],
            sources=[
                ("Government", "https://gov.example.lt/tax"),
                ("Aggregator", "https://agg.example.com/tax"),
            ],
        )
        await session.execute(
            update(Release).where(Release.id == original.id).values(merged_into_id=survivor.id)
        )
        await add_subscriber(session, "late@example.org", confirmed_at=utcnow() - timedelta(days=1))

    deliveries = await _deliveries(database, await _plan(database, settings))
    assert set(deliveries) == {"late@example.org"}
    assert deliveries["late@example.org"].release_ids == [survivor.id]


async def test_merged_away_release_is_never_sent(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        survivor = await add_release(session, "Survivor")
        duplicate = await add_release(session, "Duplicate")
        duplicate.merged_into_id = survivor.id
        await add_subscriber(session, "reader@example.org")
    deliveries = await _deliveries(database, await _plan(database, settings))
    assert deliveries["reader@example.org"].release_ids == [survivor.id]


async def test_at_most_max_items_and_nothing_older_than_max_age(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        await add_subscriber(session, "reader@example.org", confirmed_at=now - timedelta(days=60))
        recent = [
            await add_release(session, f"Recent {n}", published_at=now - timedelta(hours=n + 1))
            for n in range(4)
        ]
        # Collected just now, but published long ago (a new source's archive).
        await add_release(
            session, "Archive", published_at=now - timedelta(days=30), first_seen_at=now
        )
    limited = _with_digest(settings, max_items=3, max_age=timedelta(days=14))
    deliveries = await _deliveries(database, await _plan(database, limited))
    assert deliveries["reader@example.org"].release_ids == [r.id for r in recent[:3]]


async def test_release_not_yet_collected_at_planning_time_waits(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        await add_subscriber(session, "reader@example.org")
        await add_release(
            session,
            "Seen later",
            published_at=now - timedelta(hours=1),
            first_seen_at=now + timedelta(minutes=5),
        )
        digest = await new_digest(session)
        assert await plan_digest(session, settings, digest, now=now) == 0


async def test_suppressed_address_gets_nothing(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        await add_release(session, "Budget")
        await add_subscriber(session, "Blocked@Example.org")
        await add_subscriber(session, "open@example.org")
        await suppress(session, settings, "blocked@example.org", "complaint")
    deliveries = await _deliveries(database, await _plan(database, settings))
    assert set(deliveries) == {"open@example.org"}


async def test_test_send_goes_to_one_address_and_records_nothing(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        old = await add_release(session, "Old", published_at=utcnow() - timedelta(days=90))
        new = await add_release(session, "New")
        await add_subscriber(session, "reader@example.org")
    digest_id = await _plan(database, settings, kind="test", test_address="editor@example.org")
    deliveries = await _deliveries(database, digest_id)
    assert set(deliveries) == {"editor@example.org"}
    assert deliveries["editor@example.org"].subscriber_id is None
    assert deliveries["editor@example.org"].release_ids == [new.id, old.id]
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Watermark)) == 0
    # The real send afterwards still has the new release for the subscriber.
    real = await _deliveries(database, await _plan(database, settings))
    assert real["reader@example.org"].release_ids == [new.id]
