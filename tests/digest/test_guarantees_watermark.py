"""Never twice with a watermark per reader: what a reader gets over several sends,
and that a send stores rows per reader and per content, not per reader and release."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from mailer.config import Settings
from mailer.db import Database
from mailer.digest import explain_digest, plan_digest, queued_to
from mailer.models import (
    ContentGroup,
    Delivery,
    Release,
    Subscriber,
    SubscriberStatus,
    Topic,
    Watermark,
    utcnow,
)
from tests.digest.conftest import add_release, add_subscriber, new_digest


async def _send(database: Database, settings: Settings, now=None) -> dict[str, list[int]]:
    """Plan a send to everyone; what each reader's message carries."""
    async with database.transaction() as session:
        digest = await new_digest(session)
        await plan_digest(session, settings, digest, now)
        rows = await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
        return {row.email: row.release_ids for row in rows}


def _with_digest(settings: Settings, **changes) -> Settings:
    return settings.model_copy(update={"digest": settings.digest.model_copy(update=changes)})


async def test_a_send_stores_a_row_per_reader_and_per_content_not_per_release(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        releases = [
            await add_release(session, f"Release {n}", topics=["economy" if n % 2 else "health"])
            for n in range(6)
        ]
        for n in range(12):
            topics = [["economy"], ["health"], []][n % 3]
            await add_subscriber(session, f"reader{n}@example.org", topics=topics)
    sent = await _send(database, settings)
    assert len(sent) == 12
    assert {len(ids) for ids in sent.values()} == {3, 6}
    async with database.session() as session:
        groups = (await session.scalars(select(ContentGroup))).all()
        marks = set((await session.scalars(select(Watermark.through_release_id))).all())
    # Three topic choices, three contents, each shared by four readers.
    assert sorted(g.recipients for g in groups) == [4, 4, 4]
    assert marks == {max(r.id for r in releases)}


async def test_a_release_collected_late_still_reaches_readers_already_sent_to(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        first = await add_release(session, "First", published_at=now - timedelta(hours=2))
    assert await _send(database, settings) == {"ona@example.lt": [first.id]}
    # Published before that send, collected after it (a slow source).
    async with database.transaction() as session:
        late = await add_release(
            session, "Slow source", published_at=now - timedelta(hours=3), first_seen_at=now
        )
    assert await _send(database, settings) == {"ona@example.lt": [late.id]}
    assert await _send(database, settings) == {}


async def test_releases_left_out_by_max_items_come_next_time_and_only_once(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt", confirmed_at=now - timedelta(days=3))
        older = [
            await add_release(session, f"Release {n}", published_at=now - timedelta(hours=10 - n))
            for n in range(5)
        ]
    three = _with_digest(settings, max_items=3)
    newest_first = [r.id for r in reversed(older)]
    assert await _send(database, three) == {"ona@example.lt": newest_first[:3]}
    async with database.transaction() as session:
        newer = await add_release(session, "Newer", published_at=now - timedelta(minutes=5))
    # The newest first; the two left out last time fill the rest.
    assert await _send(database, three) == {"ona@example.lt": [newer.id, *newest_first[3:]]}
    assert await _send(database, three) == {}


async def test_a_merged_copy_of_a_sent_release_is_not_sent_even_if_it_survives(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        original = await add_release(session, "Tax", topics=["economy"])
    assert await _send(database, settings) == {"ona@example.lt": [original.id]}
    async with database.transaction() as session:
        copy = await add_release(session, "Tax (republished)", topics=["economy"])
        other = await add_release(session, "Hospital", topics=["health"])
        # The older release is folded into the newer copy.
        await session.execute(
            update(Release).where(Release.id == original.id).values(merged_into_id=copy.id)
        )
    assert await _send(database, settings) == {"ona@example.lt": [other.id]}


async def test_topic_choice_and_its_rule_for_releases_already_decided(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        reader = await add_subscriber(session, "ona@example.lt", topics=["health"])
        budget = await add_release(session, "Budget", topics=["economy"])
    # Nothing for her topics: no message, but the budget is decided for her.
    assert await _send(database, settings) == {}
    async with database.transaction() as session:
        economy = await session.scalar(select(Topic).where(Topic.slug == "economy"))
        subscriber = await session.get(Subscriber, reader.id)
        subscriber.topics = [*subscriber.topics, economy]
        tax = await add_release(session, "Tax", topics=["economy"])
    # A topic added later applies to what arrives from then on.
    assert await _send(database, settings) == {"ona@example.lt": [tax.id]}
    assert budget.id not in (await _send(database, settings)).get("ona@example.lt", [])


async def test_a_plan_that_fails_moves_no_watermark(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        release = await add_release(session, "Budget")

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        async with database.transaction() as session:
            digest = await new_digest(session)
            assert await plan_digest(session, settings, digest) == 1
            raise Crash  # the process dies before the plan commits
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Watermark)) == 0
        assert await session.scalar(select(func.count()).select_from(Delivery)) == 0
    assert await _send(database, settings) == {"ona@example.lt": [release.id]}


async def test_a_committed_plan_survives_a_crash_before_sending_and_is_not_repeated(
    database: Database, settings: Settings
) -> None:
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        release = await add_release(session, "Budget")
    assert await _send(database, settings) == {"ona@example.lt": [release.id]}
    # The process died before any worker sent it: the delivery waits in the outbox,
    # and a new plan (after a restart) does not queue the release again.
    assert await _send(database, settings) == {}
    async with database.session() as session:
        waiting = (await session.scalars(select(Delivery))).all()
    assert [(d.email, d.status.value, d.release_ids) for d in waiting] == [
        ("ona@example.lt", "pending", [release.id])
    ]


async def test_confirming_again_starts_afresh(database: Database, settings: Settings) -> None:
    now = utcnow()
    async with database.transaction() as session:
        reader = await add_subscriber(
            session, "ona@example.lt", confirmed_at=now - timedelta(days=3)
        )
        await add_release(session, "Before", published_at=now - timedelta(days=2))
    assert len((await _send(database, settings, now - timedelta(days=1)))["ona@example.lt"]) == 1
    async with database.transaction() as session:
        await add_release(
            session,
            "While she was away",
            published_at=now - timedelta(hours=12),
            first_seen_at=now - timedelta(hours=12),
        )
        subscriber = await session.get(Subscriber, reader.id)
        subscriber.status = SubscriberStatus.CONFIRMED
        subscriber.digest_since = now - timedelta(hours=1)
        back = await add_release(session, "After", published_at=now - timedelta(minutes=30))
    assert await _send(database, settings, now) == {"ona@example.lt": [back.id]}


async def test_dry_run_holds_no_write_lock(database: Database, settings: Settings) -> None:
    """Previews and confirm pages plan in a read session: they answer while another
    transaction writes (SQLite allows one writer at a time; on PostgreSQL a real
    plan's lock on releases would wait for the writer)."""
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        await add_release(session, "Budget")
    async with database.transaction() as session:
        await add_release(session, "Being written")
        # A dry run that waited for the writer would wait forever: fail instead.
        report = await asyncio.wait_for(explain_digest(database, settings), timeout=60)
    assert report.recipients == 1
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(ContentGroup)) == 0


async def test_queued_to_counts_readers_from_the_content_groups(
    database: Database, settings: Settings
) -> None:
    """The admin's "Queued to" for a release: every message that carried it or a
    copy merged into it, without a row per reader and release."""
    async with database.transaction() as session:
        await add_subscriber(session, "ona@example.lt", topics=["economy"])
        await add_subscriber(session, "jonas@example.lt")
        await add_subscriber(session, "ruta@example.lt", topics=["health"])
        budget = await add_release(session, "Budget", topics=["economy"])
    await _send(database, settings)
    async with database.transaction() as session:
        copy = await add_release(session, "Budget (copy)", topics=["economy"])
        await session.execute(
            update(Release).where(Release.id == budget.id).values(merged_into_id=copy.id)
        )
    await _send(database, settings)
    async with database.session() as session:
        assert await queued_to(session, copy) == 2
        assert await queued_to(session, await session.get(Release, budget.id)) == 2
