"""The one door for mail about a subscription: the confirmation link and the notices
("already subscribed"). Nothing here raises an SMTP error to its caller.

A mail is queued before it is tried, in the transaction that makes it due, and the
queue is the subscriber's own row:

* a confirmation is owed while the row is pending with a nonce and no
  ``confirmation_sent_at`` (what a signup, an operator's add or an import writes);
* a notice is owed while ``notice_due`` names it (what a signup of an address that
  is already confirmed writes).

:func:`send_due_mail` then tries to send it at once; when the server is down or
refuses, the row stays as it was and :func:`retry_queued_mail` (``mailer serve``
runs it every few minutes) sends it later. The caller gets a :class:`MailOutcome`
either way: sent, or queued with the reason.

Why the row and not a queue table or the digest outbox: the row is written in the
same transaction as the change that makes the mail due, so the two cannot disagree
or be half-written; erasing the subscriber takes the queued mail (and the address in
it) along; a bulk import of a million pending readers queues a million
confirmations without a million more rows; and the message is composed when it is
sent, from the current nonce and links, so a queued mail never carries a link that
a later signup has replaced. The outbox (``deliveries``) belongs to a send of a
digest, with its pacing, pausing and progress counts, none of which a confirmation
has.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, or_, select, update

from mailer.config import Settings
from mailer.db import Database
from mailer.message import (
    ComposedMessage,
    MessageError,
    build_confirmation_message,
    build_notice_message,
)
from mailer.models import ConsentEvent, Subscriber, SubscriberStatus, utcnow
from mailer.subscribers.values import MailOutcome
from mailer.tokens import Purpose, link
from mailer.transport import TransportError, send_now

log = logging.getLogger(__name__)

CONFIRMATION = "confirmation"
ALREADY_SUBSCRIBED = "already-subscribed"


def confirmation_allowed(last_sent: datetime | None, settings: Settings, now: datetime) -> bool:
    """At most one mail per address per ``signup.confirmation_interval``."""
    return last_sent is None or now - last_sent >= settings.signup.confirmation_interval


async def send_due_mail(
    database: Database, settings: Settings, subscriber_id: int, *, now: datetime | None = None
) -> MailOutcome | None:
    """Send the mail this subscriber is owed, if any: the confirmation link to a
    pending subscriber, or the queued notice to a confirmed one. None when nothing is
    due (already sent within ``signup.confirmation_interval``, or nothing queued).

    The send is claimed first by stamping ``confirmation_sent_at`` (and taking the
    notice off the row) in a conditional update, so two processes (a signup and the
    retry job, or two signups) never both mail an address. If the message cannot be
    sent, the row is put back as it was: the mail stays queued and the outcome says
    why.
    """
    now = now or utcnow()
    async with database.transaction() as session:
        row = (
            await session.execute(
                select(
                    Subscriber.email,
                    Subscriber.name,
                    Subscriber.status,
                    Subscriber.confirm_nonce,
                    Subscriber.confirmation_sent_at,
                    Subscriber.notice_due,
                    Subscriber.link_key,
                ).where(Subscriber.id == subscriber_id)
            )
        ).one_or_none()
        if row is None or not confirmation_allowed(row.confirmation_sent_at, settings, now):
            return None
        if row.status is SubscriberStatus.PENDING and row.confirm_nonce is not None:
            kind = CONFIRMATION
        elif row.status is SubscriberStatus.CONFIRMED and row.notice_due:
            kind = row.notice_due
        else:
            return None
        previous = row.confirmation_sent_at
        claimed = await session.execute(
            update(Subscriber)
            .where(
                Subscriber.id == subscriber_id,
                Subscriber.confirmation_sent_at.is_(None)
                if previous is None
                else Subscriber.confirmation_sent_at == previous,
            )
            .values(
                confirmation_sent_at=now,
                notice_due=None if kind != CONFIRMATION else Subscriber.notice_due,
            )
        )
        if claimed.rowcount != 1:
            return None
    try:
        await send_now(settings, _compose(settings, subscriber_id, kind, row))
    except (TransportError, MessageError) as exc:
        unavailable = isinstance(exc, TransportError) and exc.server_unavailable
        async with database.transaction() as session:
            await session.execute(
                update(Subscriber)
                .where(Subscriber.id == subscriber_id, Subscriber.confirmation_sent_at == now)
                .values(
                    confirmation_sent_at=previous,
                    notice_due=Subscriber.notice_due if kind == CONFIRMATION else kind,
                )
            )
        # A message that cannot be composed is a site template or key problem: logged
        # as an error for the operator, and retried once it is fixed.
        log.log(
            logging.WARNING if isinstance(exc, TransportError) else logging.ERROR,
            "%s for subscriber %d not sent, will retry: %s",
            kind,
            subscriber_id,
            exc,
        )
        return MailOutcome(kind, sent=False, reason=str(exc), server_unavailable=unavailable)
    return MailOutcome(kind, sent=True)


def _compose(settings: Settings, subscriber_id: int, kind: str, row: Row[Any]) -> ComposedMessage:
    manage_url = link(settings, Purpose.MANAGE, subscriber_id, row.link_key)
    if kind == CONFIRMATION:
        # No name: whoever filled in the form typed it, not necessarily the owner
        # of the address, and it must not put words (or links) in our mail.
        confirm_url = link(settings, Purpose.CONFIRM, subscriber_id, row.confirm_nonce)
        return build_confirmation_message(settings, row.email, None, confirm_url, manage_url)
    return build_notice_message(
        settings,
        row.email,
        row.name,
        kind,
        manage_url=manage_url,
        unsubscribe_url=link(settings, Purpose.UNSUBSCRIBE, subscriber_id, row.link_key),
    )


async def retry_queued_mail(
    database: Database, settings: Settings, *, now: datetime | None = None, limit: int = 200
) -> int:
    """Send the mails that never went out (the server was down, or a pending import);
    returns how many were sent. Stops when the server cannot be reached, so an
    outage costs one attempt per run; a mail refused for its own reasons (its
    recipient, its content) stays queued without holding up the others. Only
    confirmations of requests younger than ``signup.confirm_ttl`` are retried: an
    older request has expired anyway."""
    now = now or utcnow()
    latest_request = (
        select(func.max(ConsentEvent.at))
        .where(
            ConsentEvent.subscriber_id == Subscriber.id,
            ConsentEvent.action.in_(("signup", "import", "admin-add")),
        )
        .scalar_subquery()
    )
    async with database.session() as session:
        ids = (
            await session.scalars(
                select(Subscriber.id)
                .where(
                    or_(
                        (Subscriber.status == SubscriberStatus.PENDING)
                        & Subscriber.confirm_nonce.is_not(None)
                        & Subscriber.confirmation_sent_at.is_(None)
                        & (latest_request >= now - settings.signup.confirm_ttl),
                        (Subscriber.status == SubscriberStatus.CONFIRMED)
                        & Subscriber.notice_due.is_not(None),
                    ),
                )
                .order_by(Subscriber.id)
                .limit(limit)
            )
        ).all()
    sent = 0
    for subscriber_id in ids:
        outcome = await send_due_mail(database, settings, subscriber_id, now=now)
        if outcome is None:
            continue
        if outcome.server_unavailable:
            break
        sent += outcome.sent
    return sent
