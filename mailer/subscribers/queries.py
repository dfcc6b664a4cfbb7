"""Reading subscribers: topics, views, statuses, search and counts."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.models import (
    Subscriber,
    SubscriberStatus,
    SubscriberTopic,
    Suppression,
    Topic,
)
from mailer.subscribers.values import (
    _CHUNK,
    SHOWN_STATUSES,
    InvalidField,
    SubscriberView,
    TopicView,
    matches_status,
    shown_status,
)
from mailer.suppression import (
    email_hash,
    email_key,
)
from mailer.tokens import (
    Purpose,
    make_token,
)
from mailer.topics import UnknownTopics, resolve_topics

log = logging.getLogger(__name__)


# --- topics ---------------------------------------------------------------------------


async def active_topics(database: Database) -> list[TopicView]:
    """The topics a subscriber can choose, in configuration order."""
    async with database.session() as session:
        rows = await session.execute(
            select(Topic.slug, Topic.name).where(Topic.active.is_(True)).order_by(Topic.id)
        )
        return [TopicView(slug, name) for slug, name in rows]


async def _resolve_topics(session: AsyncSession, wanted: Iterable[str]) -> list[int]:
    """Topic ids for slugs or names (case-insensitive); unknown ones are an InvalidField."""
    try:
        return await resolve_topics(session, wanted)
    except UnknownTopics as exc:
        raise InvalidField("topics", f"There is no topic {exc.labels[0]!r}.") from None


async def _set_topics(session: AsyncSession, subscriber_id: int, topic_ids: Sequence[int]) -> None:
    await session.execute(
        delete(SubscriberTopic).where(SubscriberTopic.subscriber_id == subscriber_id)
    )
    if topic_ids:
        await session.execute(
            insert(SubscriberTopic),
            [{"subscriber_id": subscriber_id, "topic_id": t} for t in topic_ids],
        )


async def _topic_slugs(
    session: AsyncSession, subscriber_ids: Sequence[int]
) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    for start in range(0, len(subscriber_ids), _CHUNK):
        chunk = subscriber_ids[start : start + _CHUNK]
        rows = await session.execute(
            select(SubscriberTopic.subscriber_id, Topic.slug)
            .join(Topic, Topic.id == SubscriberTopic.topic_id)
            .where(SubscriberTopic.subscriber_id.in_(chunk))
            .order_by(SubscriberTopic.subscriber_id, Topic.id)
        )
        for subscriber_id, slug in rows:
            result.setdefault(subscriber_id, []).append(slug)
    return result


async def suppressions_for(
    session: AsyncSession, settings: Settings, subscribers: Iterable[tuple[int, str]]
) -> dict[int, tuple[str, str | None]]:
    """(reason, details) of the suppressed ones among a few (id, address) pairs."""
    by_hash = {
        email_hash(settings, address): subscriber_id for subscriber_id, address in subscribers
    }
    found: dict[int, tuple[str, str | None]] = {}
    hashes = list(by_hash)
    for start in range(0, len(hashes), _CHUNK):
        rows = await session.execute(
            select(Suppression.email_hash, Suppression.reason, Suppression.details).where(
                Suppression.email_hash.in_(hashes[start : start + _CHUNK])
            )
        )
        found.update({by_hash[hashed]: (reason, details) for hashed, reason, details in rows})
    return found


async def subscriber_ids_with_status(
    session: AsyncSession, settings: Settings, wanted: str
) -> list[int]:
    """Ids of every subscriber whose shown status is ``wanted`` (one of SHOWN_STATUSES),
    newest first. Addresses are hashed here: the list keeps only keyed hashes."""
    reasons = dict(
        (hashed, reason)
        for hashed, reason in await session.execute(
            select(Suppression.email_hash, Suppression.reason)
        )
    )
    if not reasons and wanted in ("suppressed", "bounced"):
        return []
    query = select(Subscriber.id, Subscriber.email, Subscriber.status).order_by(
        Subscriber.created_at.desc(), Subscriber.id.desc()
    )
    if wanted in {s.value for s in SubscriberStatus}:
        # A shown status of the subscription itself implies that subscription status.
        query = query.where(Subscriber.status == SubscriberStatus(wanted))
    wanted_statuses = ("suppressed", "bounced") if wanted == "suppressed" else (wanted,)
    return [
        subscriber_id
        for subscriber_id, address, status in await session.execute(query)
        if shown_status(status, reasons.get(email_hash(settings, address)) if reasons else None)
        in wanted_statuses
    ]


async def _suppressions(
    session: AsyncSession, settings: Settings, views: Sequence[SubscriberView]
) -> list[SubscriberView]:
    """The views with their suppression reasons (the list holds only keyed hashes,
    so each address is hashed here; one query reads the whole list)."""
    if not views:
        return []
    rows = await session.execute(
        select(Suppression.email_hash, Suppression.reason, Suppression.details)
    )
    reasons = {hashed: (reason, details) for hashed, reason, details in rows}
    if not reasons:
        return list(views)
    found = []
    for view in views:
        reason, details = reasons.get(email_hash(settings, view.email), (None, None))
        found.append(replace(view, suppression=reason, suppression_details=details))
    return found


_VIEW_COLUMNS = (
    Subscriber.id,
    Subscriber.email,
    Subscriber.name,
    Subscriber.status,
    Subscriber.frequency,
    Subscriber.created_at,
    Subscriber.confirmed_at,
    Subscriber.unsubscribed_at,
    Subscriber.link_key,
)


def _view(row: Any, slugs: Sequence[str]) -> SubscriberView:
    return SubscriberView(
        id=row.id,
        email=row.email,
        name=row.name,
        status=row.status,
        frequency=row.frequency,
        topics=tuple(slugs),
        created_at=row.created_at,
        confirmed_at=row.confirmed_at,
        unsubscribed_at=row.unsubscribed_at,
        link_key=row.link_key,
    )


async def link_key_of(database: Database, subscriber_id: int) -> str | None:
    """The key a subscriber's mailed links are signed with; None when they are gone."""
    async with database.session() as session:
        return await session.scalar(
            select(Subscriber.link_key).where(Subscriber.id == subscriber_id)
        )


def link_for(settings: Settings, purpose: Purpose, subscriber: SubscriberView) -> str:
    """The signed token of a preferences or unsubscribe link for this subscription."""
    return make_token(settings, purpose, subscriber.id, subscriber.link_key)


async def _load_view(session: AsyncSession, subscriber_id: int) -> SubscriberView | None:
    row = (
        await session.execute(select(*_VIEW_COLUMNS).where(Subscriber.id == subscriber_id))
    ).one_or_none()
    if row is None:
        return None
    slugs = await _topic_slugs(session, [subscriber_id])
    return _view(row, slugs.get(subscriber_id, []))


async def get_subscriber(
    database: Database, subscriber_id: int, settings: Settings | None = None
) -> SubscriberView | None:
    """One subscriber; with ``settings``, its suppression reason too."""
    async with database.session() as session:
        view = await _load_view(session, subscriber_id)
        if view is None or settings is None:
            return view
        return (await _suppressions(session, settings, [view]))[0]


async def find_subscriber(
    database: Database, address: str, settings: Settings | None = None
) -> SubscriberView | None:
    """The subscriber with this address; with ``settings``, its suppression reason too."""
    async with database.session() as session:
        subscriber_id = await session.scalar(
            select(Subscriber.id).where(Subscriber.email_key == email_key(address))
        )
        view = None if subscriber_id is None else await _load_view(session, subscriber_id)
        if view is None or settings is None:
            return view
        return (await _suppressions(session, settings, [view]))[0]


async def list_subscribers(
    database: Database,
    *,
    status: SubscriberStatus | str | None = None,
    settings: Settings | None = None,
) -> list[SubscriberView]:
    """Every subscriber (optionally of one of SHOWN_STATUSES), oldest first. With
    ``settings`` each view carries its suppression reason, and a status is the one
    shown to operators: "confirmed" then leaves out confirmed readers who bounced."""
    wanted = status.value if isinstance(status, SubscriberStatus) else status
    if wanted is not None and wanted not in SHOWN_STATUSES:
        choices = ", ".join(SHOWN_STATUSES)
        raise InvalidField("status", f"{wanted!r} is not a status (one of {choices}).")
    if settings is None and wanted in ("suppressed", "bounced"):
        raise InvalidField("status", f"listing {wanted} subscribers needs the settings")
    async with database.session() as session:
        query = select(*_VIEW_COLUMNS).order_by(Subscriber.id)
        if wanted in {s.value for s in SubscriberStatus}:
            query = query.where(Subscriber.status == SubscriberStatus(wanted))
        rows = (await session.execute(query)).all()
        slugs = await _topic_slugs(session, [r.id for r in rows]) if rows else {}
        views = [_view(r, slugs.get(r.id, [])) for r in rows]
        if settings is None:
            return views
        views = await _suppressions(session, settings, views)
    return [v for v in views if wanted is None or matches_status(v, wanted)]


async def count_by_status(database: Database) -> dict[str, int]:
    async with database.session() as session:
        rows = await session.execute(
            select(Subscriber.status, func.count()).group_by(Subscriber.status)
        )
        counts = {status.value: 0 for status in SubscriberStatus}
        counts.update({status.value: n for status, n in rows})
        return counts
