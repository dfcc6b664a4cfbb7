"""Guarantee: a reader gets every release collected since they confirmed, going by
when mailer collected it, not by the date the publisher printed on it.

A slow source (a page checked once a day, a feed that lags, an institution that
back-dates its releases) delivers releases whose publication date is before the
reader confirmed although mailer only saw them afterwards. Those are news to the
reader and must be planned; a release mailer already had before the reader
confirmed is the archive and must not be.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from mailer.config import Settings
from mailer.db import Database
from mailer.digest import plan_digest
from mailer.models import Delivery, Subscriber, utcnow
from tests.digest.conftest import add_release, add_subscriber, new_digest


async def _planned(database: Database, settings: Settings, now: datetime) -> dict[str, list[int]]:
    async with database.transaction() as session:
        digest = await new_digest(session)
        await plan_digest(session, settings, digest, now=now)
    async with database.session() as session:
        rows = await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
        return {row.email: list(row.release_ids) for row in rows}


async def test_release_published_before_confirmation_but_collected_after_is_planned(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    confirmed = now - timedelta(days=1)
    async with database.transaction() as session:
        await add_subscriber(session, "reader@example.org", confirmed_at=confirmed)
        slow = await add_release(
            session,
            "Ministry's release, found a day and a half late",
            published_at=confirmed - timedelta(hours=12),
            first_seen_at=confirmed + timedelta(hours=2),
        )
    assert await _planned(database, settings, now) == {"reader@example.org": [slow.id]}


async def test_release_collected_before_confirmation_is_not_planned(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    confirmed = now - timedelta(days=1)
    async with database.transaction() as session:
        await add_subscriber(session, "reader@example.org", confirmed_at=confirmed)
        # Already in mailer's archive when the reader confirmed, though its
        # (embargoed) publication date is later.
        await add_release(
            session,
            "Embargoed until after the reader confirmed",
            published_at=confirmed + timedelta(hours=3),
            first_seen_at=confirmed - timedelta(hours=1),
        )
        await add_release(
            session,
            "Collected the day before",
            published_at=confirmed - timedelta(hours=20),
            first_seen_at=confirmed - timedelta(hours=20),
        )
    assert await _planned(database, settings, now) == {}


async def test_release_collected_at_the_moment_of_confirmation_is_planned(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    confirmed = now - timedelta(hours=5)
    async with database.transaction() as session:
        await add_subscriber(session, "reader@example.org", confirmed_at=confirmed)
        same_moment = await add_release(
            session,
            "Collected in the very second the reader confirmed",
            published_at=confirmed - timedelta(days=2),
            first_seen_at=confirmed,
        )
    assert await _planned(database, settings, now) == {"reader@example.org": [same_moment.id]}


async def test_releases_collected_while_the_signup_was_pending_are_not_planned(
    database: Database, settings: Settings
) -> None:
    """The first digest starts at confirmation, not at the signup before it."""
    now = utcnow()
    confirmed = now - timedelta(days=1)
    async with database.transaction() as session:
        reader = await add_subscriber(session, "reader@example.org", confirmed_at=confirmed)
        await session.execute(
            update(Subscriber)
            .where(Subscriber.id == reader.id)
            .values(created_at=confirmed - timedelta(days=2))
        )
        await add_release(
            session,
            "Collected while the confirmation mail waited unread",
            published_at=confirmed - timedelta(days=1),
            first_seen_at=confirmed - timedelta(days=1),
        )
        later = await add_release(
            session, "Collected after confirmation", first_seen_at=now - timedelta(hours=1)
        )
    assert await _planned(database, settings, now) == {"reader@example.org": [later.id]}


async def test_each_reader_gets_what_was_collected_after_their_own_confirmation(
    database: Database, settings: Settings
) -> None:
    now = utcnow()
    async with database.transaction() as session:
        await add_subscriber(session, "early@example.org", confirmed_at=now - timedelta(days=10))
        await add_subscriber(session, "late@example.org", confirmed_at=now - timedelta(days=1))
        # Published and collected between the two confirmations.
        between = await add_release(
            session,
            "Collected between the two signups",
            published_at=now - timedelta(days=5),
            first_seen_at=now - timedelta(days=5),
        )
        # A slow source: published before the late reader confirmed, collected after.
        slow = await add_release(
            session,
            "Back-dated release",
            published_at=now - timedelta(days=3),
            first_seen_at=now - timedelta(hours=6),
        )
    planned = await _planned(database, settings, now)
    assert planned == {
        "early@example.org": [slow.id, between.id],
        "late@example.org": [slow.id],
    }
