"""Double opt-in: signup, the confirmation mail, confirming, the links in every email
(preferences and unsubscribe), and an operator adding a subscriber.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import audit
from mailer.config import Settings
from mailer.db import Database, execute_past_moved_rows
from mailer.models import (
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Frequency,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from mailer.send import finish_completed
from mailer.subscribers.mail import ALREADY_SUBSCRIBED, confirmation_allowed, send_due_mail
from mailer.subscribers.queries import _load_view, _resolve_topics, _set_topics, get_subscriber
from mailer.subscribers.values import (
    MAX_URL_LENGTH,
    MAX_USER_AGENT_LENGTH,
    AddResult,
    ConfirmResult,
    ExpiredLink,
    InvalidAddress,
    InvalidField,
    InvalidFields,
    InvalidLink,
    NotFound,
    Origin,
    SignupResult,
    StaleLink,
    SubscriberView,
    SuppressedAddress,
    TooManyAttempts,
    Unsubscribed,
    _clip,
    clean_name,
    mailbox_key,
    normalize_address,
    parse_frequency,
)
from mailer.suppression import (
    email_key,
    is_suppressed,
    suppress,
    unsuppress,
)
from mailer.tokens import (
    ExpiredToken,
    InvalidToken,
    Purpose,
    TokenPayload,
    read_token,
)
from mailer.topics import UnknownTopics, check_topics

log = logging.getLogger(__name__)


# --- signup and confirmation ----------------------------------------------------------


def _consent(
    subscriber_id: int | None,
    action: str,
    settings: Settings,
    origin: Origin | None,
    now: datetime,
    details: dict[str, Any] | None = None,
    *,
    with_wording: bool = False,
) -> dict[str, Any]:
    origin = origin or Origin()
    extra = dict(details or {})
    if origin.actor:
        extra["actor"] = origin.actor
    return {
        "subscriber_id": subscriber_id,
        "action": action,
        "at": now,
        "ip": _clip(origin.ip, 64),
        "user_agent": _clip(origin.user_agent, MAX_USER_AGENT_LENGTH),
        "form_url": _clip(origin.form_url, MAX_URL_LENGTH),
        "wording_version": settings.signup.consent_version if with_wording else None,
        "details": extra,
    }


async def operator_audit(
    session: AsyncSession,
    origin: Origin | None,
    action: str,
    target_id: int | None,
    details: dict[str, Any],
    now: datetime,
) -> None:
    """The audit entry of an operator's action (``origin.actor`` set: the CLI, an
    admin user, an API token), in the caller's transaction. A subscriber acting on
    their own subscription leaves a consent record instead."""
    if origin is not None and origin.actor:
        target_type = "subscriber" if target_id is not None else "subscribers"
        await audit.record_in(
            session, origin.actor, action, target_type, target_id, details, at=now
        )


async def _locked_subscriber(session: AsyncSession, key: str) -> Subscriber | None:
    # FOR UPDATE serialises concurrent signups for one address on PostgreSQL; SQLite
    # ignores it and is already serialised by the IMMEDIATE write transaction.
    return await session.scalar(
        select(Subscriber).where(Subscriber.email_key == key).with_for_update()
    )


async def signup(
    database: Database,
    settings: Settings,
    address: str,
    *,
    name: str | None = None,
    topics: Iterable[str] = (),
    frequency: str | Frequency | None = None,
    origin: Origin | None = None,
    now: datetime | None = None,
    consent: bool = True,
    address_limit: Callable[[str], int | None] | None = None,
) -> SignupResult:
    """Record a signup from the public form.

    Every field is checked before anything is written, and :class:`InvalidFields`
    carries each wrong field's message (``consent`` False is one: the form's box
    was not ticked). ``address_limit``, given the mailbox key of a valid address,
    answers None to go on or the seconds to wait (:class:`TooManyAttempts`).

    The caller learns nothing it could show that would tell a new address from a
    known one: the same result shape comes back either way, and a confirmed
    subscriber's choices are left alone (only the mailbox owner may change them,
    through the preferences link). The mail it queues (the confirmation link, or
    the "already subscribed" notice) goes out through
    :func:`mailer.subscribers.mail.send_due_mail` when ``confirmation_due`` is set.
    """
    checked = await _reader_choices(
        database, settings, address, name, topics, frequency, consent=consent
    )
    address = checked.address
    cleaned_name, topic_labels, chosen_frequency = checked.name, checked.topics, checked.frequency
    if address_limit is not None:
        retry_after = address_limit(mailbox_key(address))
        if retry_after is not None:
            raise TooManyAttempts(retry_after)
    now = now or utcnow()
    for attempt in range(2):
        try:
            return await _signup_once(
                database,
                settings,
                address,
                cleaned_name,
                topic_labels,
                chosen_frequency,
                origin,
                now,
            )
        except IntegrityError:
            # Two first signups for one address raced on PostgreSQL; the loser retries
            # and now finds the winner's row.
            if attempt:
                raise
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _Choices:
    address: str
    name: str | None
    topics: list[str]
    frequency: Frequency


async def _reader_choices(
    database: Database,
    settings: Settings,
    address: str | None,
    name: str | None,
    topics: Iterable[str],
    frequency: str | Frequency | None,
    *,
    consent: bool = True,
) -> _Choices:
    """A reader's form checked whole, so every wrong field is shown at once
    (``address`` None: the form has none, as on the preferences page)."""
    errors: dict[str, str] = {}
    checked = _Choices(address or "", None, list(topics), Frequency.DAILY)
    if address is not None:
        try:
            special_use = settings.signup.allow_special_use_domains
            checked = replace(
                checked, address=normalize_address(address, allow_special_use=special_use)
            )
        except InvalidAddress as exc:
            errors["email"] = str(exc)
    try:
        checked = replace(checked, name=clean_name(name))
    except InvalidField as exc:
        errors["name"] = str(exc)
    try:
        await check_topics(database, checked.topics)
    except UnknownTopics:
        # The form offers a list; anything else did not come from it.
        errors["topics"] = "Choose topics from the list."
    try:
        checked = replace(checked, frequency=parse_frequency(frequency))
    except InvalidField as exc:
        errors["frequency"] = str(exc)
    if not consent:
        errors["consent"] = "Please tick the box to agree to receive the emails."
    if errors:
        raise InvalidFields(errors)
    return checked


async def _signup_once(
    database: Database,
    settings: Settings,
    address: str,
    name: str | None,
    topic_labels: list[str],
    frequency: Frequency,
    origin: Origin | None,
    now: datetime,
) -> SignupResult:
    key = email_key(address)
    async with database.transaction() as session:
        topic_ids = await _resolve_topics(session, topic_labels)
        subscriber = await _locked_subscriber(session, key)
        choices = {"topics": topic_labels, "frequency": frequency.value}
        if subscriber is None:
            subscriber = Subscriber(
                email=address,
                email_key=key,
                name=name,
                status=SubscriberStatus.PENDING,
                frequency=frequency,
                created_at=now,
                confirm_nonce=secrets.token_urlsafe(16),
            )
            session.add(subscriber)
            await session.flush()
            await _set_topics(session, subscriber.id, topic_ids)
            state = "new"
        elif subscriber.status is SubscriberStatus.CONFIRMED:
            state = "already-confirmed"
        else:
            if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
                # A fresh request: links from before the unsubscribe must not revive it.
                subscriber.confirm_nonce = secrets.token_urlsafe(16)
                subscriber.status = SubscriberStatus.PENDING
                state = "resubscribe"
            else:
                subscriber.confirm_nonce = subscriber.confirm_nonce or secrets.token_urlsafe(16)
                state = "pending"
            subscriber.email = address
            # Anyone can type anyone's address: a repeated request fills in a missing
            # name but never replaces one.
            subscriber.name = subscriber.name or name
            subscriber.frequency = frequency
            await _set_topics(session, subscriber.id, topic_ids)
        await session.execute(
            insert(ConsentEvent),
            [
                _consent(
                    subscriber.id,
                    "signup",
                    settings,
                    origin,
                    now,
                    {"state": state, **choices},
                    with_wording=True,
                )
            ],
        )
        due = confirmation_allowed(subscriber.confirmation_sent_at, settings, now)
        if due and state == "already-confirmed":
            # A confirmed address gets a notice rather than a link, so the page can
            # look the same for both while the mailbox owner still learns of it.
            subscriber.notice_due = ALREADY_SUBSCRIBED
        return SignupResult(subscriber.id, due, address)


def _read_link(
    settings: Settings, purpose: Purpose, token: str, max_age: timedelta | None = None
) -> TokenPayload:
    try:
        return read_token(settings, purpose, token, max_age)
    except ExpiredToken:
        raise ExpiredLink(
            "This confirmation link has expired. Please sign up again to get a new one."
        ) from None
    except InvalidToken:
        raise InvalidLink(
            "This link is not valid. Please check that it was copied whole."
        ) from None


async def pending_confirmation(database: Database, settings: Settings, token: str) -> ConfirmResult:
    """What a confirmation link would confirm, without changing anything (for GET)."""
    payload = _read_link(settings, Purpose.CONFIRM, token, settings.signup.confirm_ttl)
    async with database.session() as session:
        subscriber = await session.get(Subscriber, payload.subscriber_id)
        return await _confirm_state(session, subscriber, payload.key)


async def _confirm_state(
    session: AsyncSession, subscriber: Subscriber | None, nonce: str | None
) -> ConfirmResult:
    if subscriber is None:
        raise InvalidLink("This subscription no longer exists. Please sign up again.")
    view = await _load_view(session, subscriber.id)
    assert view is not None
    if subscriber.status is SubscriberStatus.CONFIRMED and subscriber.confirm_nonce is None:
        return ConfirmResult(view, already_confirmed=True)
    if (
        subscriber.status is not SubscriberStatus.PENDING
        or nonce is None
        or subscriber.confirm_nonce is None
        or not secrets.compare_digest(subscriber.confirm_nonce, nonce)
    ):
        raise InvalidLink(
            "This confirmation link is no longer valid. Please sign up again to get a new one."
        )
    return ConfirmResult(view, already_confirmed=False)


async def confirm(
    database: Database,
    settings: Settings,
    token: str,
    *,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> ConfirmResult:
    """Confirm the subscription a confirmation link names (single use)."""
    payload = _read_link(settings, Purpose.CONFIRM, token, settings.signup.confirm_ttl)
    now = now or utcnow()
    async with database.transaction() as session:
        subscriber = await session.scalar(
            select(Subscriber).where(Subscriber.id == payload.subscriber_id).with_for_update()
        )
        state = await _confirm_state(session, subscriber, payload.key)
        if state.already_confirmed:
            return state
        assert subscriber is not None
        await _mark_confirmed(session, settings, subscriber, now)
        await session.execute(
            insert(ConsentEvent),
            [_consent(subscriber.id, "confirm", settings, origin, now, with_wording=True)],
        )
        await session.flush()
        view = await _load_view(session, subscriber.id)
        assert view is not None
        return ConfirmResult(view, already_confirmed=False)


async def _mark_confirmed(
    session: AsyncSession, settings: Settings, subscriber: Subscriber, now: datetime
) -> None:
    subscriber.status = SubscriberStatus.CONFIRMED
    subscriber.confirmed_at = now
    subscriber.confirm_nonce = None
    # The first digest carries what is published from now on, not the archive.
    subscriber.digest_since = now
    subscriber.soft_bounces = 0
    await unsuppress(session, settings, subscriber.email)


# --- links in emails: preferences and unsubscribe ---------------------------------------


async def subscriber_for_link(
    database: Database, settings: Settings, purpose: Purpose, token: str
) -> SubscriberView:
    """The subscriber a preferences or unsubscribe link belongs to.

    Raises InvalidLink for a forged or mangled link and StaleLink when the
    subscription it was mailed for has ended (erased or removed: a later signup
    with the same address, or a row that got the same id, has another link key)."""
    payload = _read_link(settings, purpose, token)
    view = await get_subscriber(database, payload.subscriber_id)
    if (
        view is None
        or payload.key is None
        or not secrets.compare_digest(view.link_key.encode(), payload.key.encode())
    ):
        raise StaleLink(
            "This link no longer works: the subscription it was sent for has ended "
            "(the address was erased or removed). We hold no data for it any more."
        )
    return view


async def update_preferences(
    database: Database,
    settings: Settings,
    subscriber_id: int,
    *,
    name: str | None,
    topics: Iterable[str],
    frequency: str | Frequency | None,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> SubscriberView:
    checked = await _reader_choices(database, settings, None, name, topics, frequency)
    cleaned_name, topic_labels, chosen_frequency = checked.name, checked.topics, checked.frequency
    now = now or utcnow()
    async with database.transaction() as session:
        topic_ids = await _resolve_topics(session, topic_labels)
        subscriber = await session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None:
            raise NotFound("This subscriber no longer exists.")
        subscriber.name = cleaned_name
        subscriber.frequency = chosen_frequency
        await _set_topics(session, subscriber_id, topic_ids)
        await session.execute(
            insert(ConsentEvent),
            [
                _consent(
                    subscriber_id,
                    "preferences",
                    settings,
                    origin,
                    now,
                    {"topics": topic_labels, "frequency": chosen_frequency.value},
                )
            ],
        )
        await session.flush()
        view = await _load_view(session, subscriber_id)
        assert view is not None
        return view


async def unsubscribe(
    database: Database,
    settings: Settings,
    subscriber_id: int,
    *,
    origin: Origin | None = None,
    method: str = "link",
    send: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Unsubscribe and suppress the address. False when it was already unsubscribed.

    ``send`` is the digest whose unsubscribe link was used; recorded when the reader
    was one of its recipients, so that the send's report counts the unsubscribe."""
    now = now or utcnow()
    async with database.transaction() as session:
        subscriber = await session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None:
            raise NotFound("This subscriber no longer exists.")
        await suppress(session, settings, subscriber.email, "unsubscribed")
        if subscriber.status is SubscriberStatus.UNSUBSCRIBED:
            return False
        subscriber.status = SubscriberStatus.UNSUBSCRIBED
        subscriber.unsubscribed_at = now
        subscriber.confirm_nonce = None
        # A notice still queued was about the subscription that just ended.
        subscriber.notice_due = None
        await _cancel_pending_deliveries(session, subscriber_id, now)
        details: dict[str, Any] = {"method": method}
        if send is not None and await session.scalar(
            select(Delivery.id)
            .where(Delivery.digest_id == send, Delivery.subscriber_id == subscriber_id)
            .limit(1)
        ):
            details["send"] = send
        await session.execute(
            insert(ConsentEvent),
            [_consent(subscriber_id, "unsubscribe", settings, origin, now, details)],
        )
        await operator_audit(session, origin, "subscriber.unsubscribe", subscriber_id, {}, now)
        return True


async def unsubscribe_and_get(
    database: Database,
    settings: Settings,
    subscriber_id: int,
    *,
    origin: Origin | None = None,
    method: str = "link",
    now: datetime | None = None,
) -> Unsubscribed:
    """:func:`unsubscribe`, answering with the subscriber as it now stands (its
    suppression included); NotFound when there is none."""
    changed = await unsubscribe(
        database, settings, subscriber_id, origin=origin, method=method, now=now
    )
    view = await get_subscriber(database, subscriber_id, settings)
    if view is None:
        raise NotFound("This subscriber no longer exists.")
    return Unsubscribed(view, changed)


async def _cancel_pending_deliveries(
    session: AsyncSession, subscriber_id: int, now: datetime
) -> None:
    await execute_past_moved_rows(
        session,
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.DEFERRED)),
        )
        .values(status=DeliveryStatus.CANCELLED, last_error="recipient unsubscribed"),
    )
    # When this reader's message was the last one a send had left, the send is done now.
    await finish_completed(session, now)


# --- operator actions: add and import --------------------------------------------------


async def add(
    database: Database,
    settings: Settings,
    address: str,
    *,
    name: str | None = None,
    topics: Iterable[str] = (),
    frequency: str | Frequency | None = None,
    confirmed: bool = False,
    resubscribe: bool = False,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> AddResult:
    """Add (or update) one subscriber on an operator's word.

    ``confirmed=True`` records consent the operator obtained elsewhere; otherwise the
    subscriber is pending and is sent a confirmation mail through the mail door:
    ``mail`` in the result says whether it went or is queued for the retry job, and
    why. The operator (``origin.actor``) is written to the audit log in the
    transaction that stores the subscriber. An address on the suppression list (it unsubscribed, was
    erased or bounced) is refused with SuppressedAddress unless ``resubscribe`` is
    set: the operator must say explicitly that the person asked to come back.
    An existing subscriber keeps its topics and frequency unless new ones are given.
    """
    address = normalize_address(
        address, allow_special_use=settings.signup.allow_special_use_domains
    )
    cleaned_name = clean_name(name)
    chosen_frequency = None if frequency in (None, "") else parse_frequency(frequency)
    topic_labels = list(topics)
    now = now or utcnow()
    key = email_key(address)
    async with database.transaction() as session:
        topic_ids = await _resolve_topics(session, topic_labels)
        if await is_suppressed(session, settings, address) and not resubscribe:
            raise SuppressedAddress(
                f"{address} is on the suppression list (unsubscribed, erased or bounced); "
                "add it only if the person asked to come back, with --resubscribe."
            )
        subscriber = await _locked_subscriber(session, key)
        created = subscriber is None
        if subscriber is None:
            subscriber = Subscriber(
                email=address,
                email_key=key,
                name=cleaned_name,
                status=SubscriberStatus.PENDING,
                frequency=chosen_frequency or Frequency.DAILY,
                created_at=now,
                confirm_nonce=secrets.token_urlsafe(16),
            )
            session.add(subscriber)
            await session.flush()
            outcome = "added"
        else:
            before = subscriber.status
            if cleaned_name is not None:
                subscriber.name = cleaned_name
            if chosen_frequency is not None:
                subscriber.frequency = chosen_frequency
            if before is SubscriberStatus.UNSUBSCRIBED:
                subscriber.status = SubscriberStatus.PENDING
                subscriber.confirm_nonce = secrets.token_urlsafe(16)
            outcome = "updated" if (cleaned_name or chosen_frequency or topic_ids) else "unchanged"
        if topic_ids or created:
            await _set_topics(session, subscriber.id, topic_ids)
        if confirmed and subscriber.status is not SubscriberStatus.CONFIRMED:
            await _mark_confirmed(session, settings, subscriber, now)
            outcome = "added" if created else "confirmed"
        elif resubscribe and subscriber.status is SubscriberStatus.PENDING:
            # Pending again: the suppression is lifted when the person confirms.
            outcome = "added" if created else "pending"
        await session.execute(
            insert(ConsentEvent),
            [
                _consent(
                    subscriber.id,
                    "admin-add",
                    settings,
                    origin,
                    now,
                    {"confirmed": confirmed, "resubscribe": resubscribe, "outcome": outcome},
                )
            ],
        )
        due = subscriber.status is SubscriberStatus.PENDING and confirmation_allowed(
            subscriber.confirmation_sent_at, settings, now
        )
        await operator_audit(
            session,
            origin,
            "subscriber.add",
            subscriber.id,
            {"outcome": outcome, "confirmed": confirmed, "resubscribe": resubscribe},
            now,
        )
        subscriber_id = subscriber.id
    # Committed first: the subscriber and its queued confirmation stand whatever the
    # mail server says, and the door never raises its refusal to the caller.
    mail = await send_due_mail(database, settings, subscriber_id, now=now) if due else None
    view = await get_subscriber(database, subscriber_id, settings)
    assert view is not None
    return AddResult(view, created, outcome, due, mail)
