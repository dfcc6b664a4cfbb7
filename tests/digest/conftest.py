"""Fixtures for the digest tests: settings with topics, and builders for the rows
a digest is planned from (subscribers, releases with their source links)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.models import (
    Digest,
    DigestStatus,
    Frequency,
    Release,
    ReleaseLink,
    Subscriber,
    SubscriberStatus,
    Topic,
    utcnow,
)
from tests.conftest import make_settings

TOPICS = [
    {"name": "Economy", "keywords": ["budget", "tax"]},
    {"name": "Health", "keywords": ["hospital"]},
    {"name": "Foreign affairs", "keywords": ["embassy"]},
]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url, topics=TOPICS)


async def topic_ids(session: AsyncSession) -> dict[str, int]:
    return {t.slug: t.id for t in (await session.scalars(select(Topic))).all()}


async def add_subscriber(
    session: AsyncSession,
    email: str,
    *,
    name: str | None = None,
    topics: Sequence[str] = (),
    frequency: Frequency = Frequency.DAILY,
    status: SubscriberStatus = SubscriberStatus.CONFIRMED,
    confirmed_at: datetime | None = None,
) -> Subscriber:
    confirmed_at = confirmed_at or utcnow() - timedelta(days=2)
    subscriber = Subscriber(
        email=email,
        email_key=email.lower(),
        name=name,
        status=status,
        frequency=frequency,
        confirmed_at=confirmed_at if status == SubscriberStatus.CONFIRMED else None,
        digest_since=confirmed_at if status == SubscriberStatus.CONFIRMED else None,
    )
    if topics:
        by_slug = {t.slug: t for t in (await session.scalars(select(Topic))).all()}
        subscriber.topics = [by_slug[slug] for slug in topics]
    session.add(subscriber)
    await session.flush()
    return subscriber


_counter = iter(range(1, 1_000_000))


async def add_release(
    session: AsyncSession,
    title: str,
    *,
    published_at: datetime | None = None,
    topics: Sequence[str] = (),
    sources: Sequence[tuple[str, str]] = (),
    summary: str = "The ministry announced the measure today, with details below.",
    first_seen_at: datetime | None = None,
    **fields: Any,
) -> Release:
    number = next(_counter)
    published_at = published_at or utcnow() - timedelta(hours=1)
    url = f"https://gov.example.lt/releases/{number}"
    release = Release(
        title=title,
        published_at=published_at,
        first_seen_at=first_seen_at or published_at,
        canonical_url=url,
        summary=summary,
        text=summary,
        content_hash=f"{number:064d}",
        **fields,
    )
    release.links = [
        ReleaseLink(source_name=name, url=link, guid=f"{number}-{index}")
        for index, (name, link) in enumerate(sources or [("Government", url)])
    ]
    if topics:
        by_slug = {t.slug: t for t in (await session.scalars(select(Topic))).all()}
        release.topics = [by_slug[slug] for slug in topics]
    session.add(release)
    await session.flush()
    return release


async def new_digest(session: AsyncSession, frequency: str = "all", **fields: Any) -> Digest:
    digest = Digest(frequency=frequency, status=DigestStatus.SENDING, **fields)
    session.add(digest)
    await session.flush()
    return digest
