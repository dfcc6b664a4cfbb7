"""Data access requests: a subscriber's data export, erasure and removal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database, execute_past_moved_rows
from mailer.engagement import forget_reader, reader_activity
from mailer.models import (
    Bounce,
    ConsentEvent,
    Delivery,
    Release,
    Subscriber,
    SubscriberTopic,
    Topic,
    Watermark,
    utcnow,
)
from mailer.subscribers.optin import _cancel_pending_deliveries, _locked_subscriber, operator_audit
from mailer.subscribers.queries import get_subscriber
from mailer.subscribers.values import NotFound, Origin, SubscriberView, _iso
from mailer.suppression import (
    email_hash,
    email_key,
    is_suppressed,
    suppress,
)

log = logging.getLogger(__name__)


# How many of a subscriber's newest deliveries the operator's record shows.
RECORD_DELIVERIES = 200


@dataclass(frozen=True)
class SubscriberRecord:
    """What an operator sees of one subscriber: the subscription, the consent
    history (oldest first) and the newest deliveries."""

    subscriber: SubscriberView
    consents: list[ConsentEvent]
    deliveries: list[Delivery]


async def subscriber_record(
    database: Database, settings: Settings, subscriber_id: int
) -> SubscriberRecord:
    """One subscriber with its consent history and newest deliveries; NotFound when
    there is none (erased subscribers are gone)."""
    view = await get_subscriber(database, subscriber_id, settings)
    if view is None:
        raise NotFound("There is no such subscriber (erased subscribers are gone).")
    async with database.session() as session:
        consents = (
            await session.scalars(
                select(ConsentEvent)
                .where(ConsentEvent.subscriber_id == subscriber_id)
                .order_by(ConsentEvent.at, ConsentEvent.id)
            )
        ).all()
        deliveries = (
            await session.scalars(
                select(Delivery)
                .where(Delivery.subscriber_id == subscriber_id)
                .order_by(Delivery.id.desc())
                .limit(RECORD_DELIVERIES)
            )
        ).all()
    return SubscriberRecord(view, list(consents), list(deliveries))


# --- data access requests: export and erasure -------------------------------------------


async def export_data(database: Database, settings: Settings, subscriber_id: int) -> dict[str, Any]:
    """Everything held about one subscriber, as JSON-ready data (GDPR art. 15/20)."""
    async with database.session() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
        watermark = await session.get(Watermark, subscriber_id)
        if subscriber is None:
            raise NotFound("This subscriber no longer exists.")
        topics = (
            await session.execute(
                select(Topic.slug, Topic.name)
                .join(SubscriberTopic, SubscriberTopic.topic_id == Topic.id)
                .where(SubscriberTopic.subscriber_id == subscriber_id)
                .order_by(Topic.id)
            )
        ).all()
        consents = (
            await session.scalars(
                select(ConsentEvent)
                .where(ConsentEvent.subscriber_id == subscriber_id)
                .order_by(ConsentEvent.id)
            )
        ).all()
        deliveries = (
            await session.scalars(
                select(Delivery)
                .where(Delivery.subscriber_id == subscriber_id)
                .order_by(Delivery.id)
            )
        ).all()
        # What their messages carried (for as long as retention.deliveries keeps them).
        received_ids = sorted({int(i) for d in deliveries for i in d.release_ids})
        received = (
            await session.execute(
                select(Release.id, Release.title, Release.published_at, Release.canonical_url)
                .where(Release.id.in_(received_ids))
                .order_by(Release.published_at, Release.id)
            )
        ).all()
        address_hash = email_hash(settings, subscriber.email)
        bounces = (
            await session.scalars(
                select(Bounce).where(Bounce.email_hash == address_hash).order_by(Bounce.id)
            )
        ).all()
        suppressed = await is_suppressed(session, settings, subscriber.email)
        # Stored only under tracking.individual; empty lists otherwise.
        activity = await reader_activity(session, subscriber_id)
    return {
        "exported_at": utcnow().isoformat(),
        "site": settings.site.name,
        "subscriber": {
            "email": subscriber.email,
            "name": subscriber.name,
            "status": subscriber.status.value,
            "frequency": subscriber.frequency.value,
            "topics": [{"slug": s, "name": n} for s, n in topics] or "all",
            "created_at": _iso(subscriber.created_at),
            "confirmed_at": _iso(subscriber.confirmed_at),
            "unsubscribed_at": _iso(subscriber.unsubscribed_at),
            "confirmation_sent_at": _iso(subscriber.confirmation_sent_at),
            "digest_since": _iso(subscriber.digest_since),
            "last_digest_at": _iso(watermark.last_digest_at if watermark else None),
            "soft_bounces": subscriber.soft_bounces,
            "suppressed": suppressed,
        },
        "consent_records": [
            {
                "action": c.action,
                "at": _iso(c.at),
                "ip": c.ip,
                "user_agent": c.user_agent,
                "form_url": c.form_url,
                "wording_version": c.wording_version,
                "details": c.details,
            }
            for c in consents
        ],
        "emails": [
            {
                "to": d.email,
                "status": d.status.value,
                "queued_at": _iso(d.queued_at),
                "sent_at": _iso(d.sent_at),
                "release_ids": d.release_ids,
                "bounced": d.bounced,
            }
            for d in deliveries
        ],
        "releases_received": [
            {"id": rid, "title": title, "published_at": _iso(published), "url": url}
            for rid, title, published, url in received
        ],
        "bounces": [
            {
                "kind": b.kind,
                "status_code": b.status_code,
                "diagnostic": b.diagnostic,
                "received_at": _iso(b.received_at),
            }
            for b in bounces
        ],
        "clicks": activity["clicks"],
        "opens": activity["opens"],
    }


async def erase(
    database: Database,
    settings: Settings,
    subscriber_id: int,
    *,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> None:
    """Erase a subscriber (GDPR art. 17) and keep only a keyed hash to suppress them.

    The subscriber row goes (topics and the record of releases sent go with it);
    consent records stay as proof that consent was given and withdrawn, but lose
    their personal fields (IP, browser, form URL, free-form details). Queued mail is
    cancelled and the address removed from the outbox rows; bounce diagnostics,
    which quote the address, are blanked. Clicks and opens recorded under individual
    tracking are deleted (the send's reports count them no more).
    """
    now = now or utcnow()
    async with database.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None:
            raise NotFound("This subscriber no longer exists.")
        await _erase_row(session, settings, subscriber, origin, now)


async def _erase_row(
    session: AsyncSession,
    settings: Settings,
    subscriber: Subscriber,
    origin: Origin | None,
    now: datetime,
) -> None:
    address = subscriber.email
    subscriber_id = subscriber.id
    await suppress(session, settings, address, "erased")
    await session.execute(
        update(ConsentEvent)
        .where(ConsentEvent.subscriber_id == subscriber_id)
        .values(ip=None, user_agent=None, form_url=None, details={})
    )
    await _cancel_pending_deliveries(session, subscriber_id, now)
    await execute_past_moved_rows(
        session,
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id)
        .values(test_address=None, subscriber_id=None),
    )
    await session.execute(
        update(Bounce)
        .where(Bounce.email_hash == email_hash(settings, address))
        .values(diagnostic=None)
    )
    await session.execute(delete(Watermark).where(Watermark.subscriber_id == subscriber_id))
    await forget_reader(session, subscriber_id)
    await session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    # No subscriber to point to any more: the record says only that an erasure happened.
    actor = {"actor": origin.actor} if origin and origin.actor else {}
    await session.execute(
        insert(ConsentEvent),
        [{"subscriber_id": None, "action": "erase", "at": now, "details": actor}],
    )
    session.expunge(subscriber)
    # The log keeps the id only: the address itself is what was erased.
    await operator_audit(session, origin, "subscriber.erase", subscriber_id, {}, now)


async def remove(
    database: Database,
    settings: Settings,
    address: str,
    *,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> bool:
    """Erase the subscriber with this address (see :func:`erase`); False if there is none.

    Removing also suppresses the address, so a stale list or import cannot bring
    it back; ``add --resubscribe`` or a new confirmed signup lifts that."""
    now = now or utcnow()
    async with database.transaction() as session:
        subscriber = await _locked_subscriber(session, email_key(address))
        if subscriber is None:
            return False
        await _erase_row(session, settings, subscriber, origin, now)
        return True
