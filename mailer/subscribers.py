"""The subscriber store: signup, double opt-in, preferences, unsubscribe, data export,
erasure, and the bulk operations the command line and the admin use.

Every entry point is an async function over a :class:`~mailer.db.Database`, so the web
form, the CLI, the admin and the JSON API share one set of rules:

* An address is validated with email-validator (syntax only, no DNS) and identified
  by its lower-cased form (``Subscriber.email_key``).
* A subscriber with no topic rows receives every topic ("none ticked means all").
* Signing up stores a *pending* subscriber and a consent record, and sends a
  confirmation mail whose link carries ``confirm_nonce``; confirming clears the
  nonce, so each link works once. At most one confirmation mail goes to an address
  per ``signup.confirmation_interval``; a mail that could not be sent leaves
  ``confirmation_sent_at`` empty and :func:`resend_pending_confirmations` retries it.
* Unsubscribing and erasing put the address on the suppression list; only a new
  confirmation (the person proving again that they want mail) lifts it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.models import (
    Bounce,
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Frequency,
    Release,
    Subscriber,
    SubscriberRelease,
    SubscriberStatus,
    SubscriberTopic,
    Suppression,
    Topic,
    utcnow,
)
from mailer.send import finish_completed
from mailer.suppression import (
    email_hash,
    email_key,
    is_suppressed,
    suppress,
    suppressed_hashes,
    unsuppress,
)
from mailer.tokens import (
    ExpiredToken,
    InvalidToken,
    Purpose,
    TokenPayload,
    link,
    make_token,
    read_token,
)

log = logging.getLogger(__name__)

MAX_ADDRESS_LENGTH = 254  # RFC 5321 path limit; email-validator enforces it too
MAX_NAME_LENGTH = 200  # Subscriber.name
MAX_USER_AGENT_LENGTH = 500  # ConsentEvent.user_agent
MAX_URL_LENGTH = 500  # ConsentEvent.form_url
# Control characters, DEL, C1 controls and the Unicode line/paragraph separators: none
# of them belongs in a name or an address, and any of them could split a mail header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What mail programs turn into a link: a scheme, "www.", an address, a domain name.
# A name is printed in mail ("Hello, …"), so it must not be able to carry one.
_LINK_LIKE = re.compile(
    r"[a-z][a-z0-9+.-]*:/|\b(?:mailto|tel|sms|javascript|data):|www\.|@|<|>"
    r"|\b[^\W_][\w-]*\.(?:[^\W\d_]{2,}|xn--[\w-]+)\b",
    re.IGNORECASE,
)
_TOPIC_SEPARATORS = re.compile(r"[;,|]")
# Rows per statement in bulk imports: below SQLite's and asyncpg's parameter limits.
_CHUNK = 2000


# --- errors ---------------------------------------------------------------------------


class SubscriberError(Exception):
    """A refusal worded for the person who caused it (form visitor or operator)."""


class InvalidAddress(SubscriberError):
    pass


class InvalidField(SubscriberError):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


class SuppressedAddress(SubscriberError):
    pass


class NotFound(SubscriberError):
    pass


class InvalidLink(SubscriberError):
    pass


class ExpiredLink(InvalidLink):
    pass


class StaleLink(NotFound):
    """A genuine link whose subscription no longer exists (erased, removed)."""


class InvalidFile(SubscriberError):
    pass


# --- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a consent action came from, for the consent record."""

    ip: str | None = None
    user_agent: str | None = None
    form_url: str | None = None
    # Who acted when it was not the subscriber: "cli", "user:alice", "token:ci".
    actor: str | None = None


@dataclass(frozen=True)
class TopicView:
    slug: str
    name: str


@dataclass(frozen=True)
class SubscriberView:
    id: int
    email: str
    name: str | None
    status: SubscriberStatus
    frequency: Frequency
    # Slugs; empty means every topic.
    topics: tuple[str, ...]
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    # Why the address is on the suppression list (hard-bounce, soft-bounce, complaint,
    # unsubscribed, erased, admin), with details such as the bounce's status code.
    # None when it is not, or when the view was loaded without the settings.
    suppression: str | None = None
    suppression_details: str | None = None
    # Signs this subscription's links; never shown or exported.
    link_key: str = field(default="", repr=False)

    @property
    def shown_status(self) -> str:
        """What an operator needs to know: bounced and suppressed readers get no mail,
        whatever their subscription says (see SHOWN_STATUSES)."""
        return shown_status(self.status, self.suppression)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "status": self.shown_status,
            "subscription": self.status.value,
            "suppression": self.suppression,
            "suppression_details": self.suppression_details,
            "frequency": self.frequency.value,
            "topics": list(self.topics),
            "created_at": _iso(self.created_at),
            "confirmed_at": _iso(self.confirmed_at),
            "unsubscribed_at": _iso(self.unsubscribed_at),
        }


@dataclass(frozen=True)
class SignupResult:
    subscriber_id: int
    # True when a mail should go out now: the confirmation link, or for an address
    # that is already confirmed the "already subscribed" notice (send_confirmation).
    confirmation_due: bool


@dataclass(frozen=True)
class ConfirmResult:
    subscriber: SubscriberView
    # True when the link had already been used and the subscription stands.
    already_confirmed: bool


@dataclass(frozen=True)
class AddResult:
    subscriber: SubscriberView
    created: bool
    # What changed, in words, for the operator: "added", "confirmed", "unchanged", ...
    outcome: str
    confirmation_due: bool


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    # Rows naming an address already seen earlier in the same file.
    merged_duplicates: int = 0
    # (line number, message) for rows that were not imported.
    errors: list[tuple[int, str]] = field(default_factory=list)
    suppressed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.errors) + len(self.suppressed)


# --- validation -----------------------------------------------------------------------


def normalize_address(raw: str, *, allow_special_use: bool = False) -> str:
    """The validated, normalised address; raises InvalidAddress with a readable reason.

    ``allow_special_use`` (``signup.allow_special_use_domains``) accepts the reserved
    names of RFC 2606/6761 (.test, .localhost, .invalid, ...) for staging setups."""
    candidate = raw.strip()
    if not candidate:
        raise InvalidAddress("Please enter your email address.")
    if len(candidate) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"An email address has at most {MAX_ADDRESS_LENGTH} characters.")
    if _CONTROL.search(candidate) or not _encodable(candidate):
        raise InvalidAddress("The email address contains characters that are not allowed.")
    checked = _with_test_domain(candidate) if allow_special_use else candidate
    try:
        # No SMTPUTF8: mail to a non-ASCII local part (Žygimantas@…) cannot be sent by
        # mailer.message, so such an address is refused here with a reason rather
        # than accepted and never mailed. Internationalised domains are fine.
        validated = validate_email(
            checked,
            check_deliverability=False,
            allow_smtputf8=False,
            test_environment=allow_special_use,
        )
    except EmailNotValidError as exc:
        hint = ""
        if "special-use" in str(exc):
            hint = " (a staging setup can allow it: signup.allow_special_use_domains)"
        raise InvalidAddress(f"This is not a valid email address: {exc}{hint}") from None
    if checked != candidate:
        return f"{validated.local_part}@{candidate.rpartition('@')[2].lower()}"
    return validated.normalized


def _with_test_domain(address: str) -> str:
    """email-validator's test_environment allows only .test: other special-use
    suffixes (.localhost, .invalid, ...) are validated as if they were .test."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES

    local, _, domain = address.rpartition("@")
    lowered = domain.lower()
    for name in SPECIAL_USE_DOMAIN_NAMES:
        if lowered == name:
            return f"{local}@{name}.test"
        if lowered.endswith("." + name):
            return f"{local}@{lowered.removesuffix(name)}test"
    return address


def mailbox_key(address: str) -> str:
    """One key for every sub-addressed spelling of a mailbox: ``ona+news@x.org``
    and ``Ona+1@X.org`` both give ``ona@x.org``. The per-address signup limit
    counts by it, so ``victim+0…+99@`` cannot mail one person a hundred times."""
    local, _, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0] or local}@{domain}"


def clean_name(raw: str | None) -> str | None:
    """A display name safe to put in a mail header, or None when empty."""
    if raw is None:
        return None
    # Checked before whitespace is collapsed: a line break in a name is refused, not
    # quietly joined, because it only ever comes from header-injection attempts.
    if _CONTROL.search(raw) or not _encodable(raw):
        raise InvalidField("name", "The name must not contain line breaks or control characters.")
    name = " ".join(raw.split())
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidField("name", f"The name can be at most {MAX_NAME_LENGTH} characters long.")
    if _LINK_LIKE.search(name):
        raise InvalidField("name", "The name must not contain a web or email address.")
    return name


def parse_frequency(raw: str | Frequency | None) -> Frequency:
    if raw is None or raw == "":
        return Frequency.DAILY
    try:
        return Frequency(raw)
    except ValueError:
        choices = ", ".join(f.value for f in Frequency)
        raise InvalidField("frequency", f"Choose how often: {choices}.") from None


def _encodable(text: str) -> bool:
    # Lone surrogates cannot be stored or sent; they only arrive through broken input.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    if not _encodable(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", text)[:limit]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


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
    requested = [w.strip() for w in wanted if w and w.strip()]
    if not requested:
        return []
    rows = (await session.execute(select(Topic.id, Topic.slug, Topic.name, Topic.active))).all()
    by_label: dict[str, int] = {}
    for topic_id, slug, name, active in rows:
        if active:
            by_label[slug.lower()] = topic_id
            by_label.setdefault(name.lower(), topic_id)
    ids: list[int] = []
    for label in requested:
        topic_id = by_label.get(label.lower())
        if topic_id is None:
            raise InvalidField("topics", f"There is no topic {label!r}.")
        if topic_id not in ids:
            ids.append(topic_id)
    return ids


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


# --- reading --------------------------------------------------------------------------

BOUNCE_REASONS = ("hard-bounce", "soft-bounce")
# The statuses operators filter by: the subscription's own, and two that say the
# address is on the suppression list ("suppressed" includes "bounced").
SHOWN_STATUSES = (*(s.value for s in SubscriberStatus), "suppressed", "bounced")


def shown_status(status: SubscriberStatus, suppression: str | None) -> str:
    if suppression in BOUNCE_REASONS:
        return "bounced"
    if suppression and status is not SubscriberStatus.UNSUBSCRIBED:
        return "suppressed"
    return status.value


def matches_status(view: SubscriberView, wanted: str) -> bool:
    shown = view.shown_status
    return shown == wanted or (wanted == "suppressed" and shown == "bounced")


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


async def find_subscriber(database: Database, address: str) -> SubscriberView | None:
    async with database.session() as session:
        subscriber_id = await session.scalar(
            select(Subscriber.id).where(Subscriber.email_key == email_key(address))
        )
        return None if subscriber_id is None else await _load_view(session, subscriber_id)


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
) -> SignupResult:
    """Record a signup from the public form.

    The caller learns nothing it could show that would tell a new address from a
    known one: the same result shape comes back either way, and a confirmed
    subscriber's choices are left alone (only the mailbox owner may change them,
    through the preferences link). Call :func:`send_confirmation` afterwards when
    ``confirmation_due`` is set.
    """
    address = normalize_address(
        address, allow_special_use=settings.signup.allow_special_use_domains
    )
    cleaned_name = clean_name(name)
    chosen_frequency = parse_frequency(frequency)
    topic_labels = list(topics)
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
        # Confirmed addresses get a notice rather than a link (see send_confirmation).
        due = _confirmation_allowed(subscriber.confirmation_sent_at, settings, now)
        return SignupResult(subscriber.id, due)


def _confirmation_allowed(last_sent: datetime | None, settings: Settings, now: datetime) -> bool:
    return last_sent is None or now - last_sent >= settings.signup.confirmation_interval


async def send_confirmation(
    database: Database, settings: Settings, subscriber_id: int, *, now: datetime | None = None
) -> bool:
    """Send the mail a signup calls for, if one is due; True when SMTP accepted it.

    A pending subscriber gets the confirmation link. A confirmed one (someone signed
    up with an address that is already subscribed) gets the "already subscribed"
    notice with the preferences link instead, so the page can look the same for
    both while the mailbox owner still learns what happened.

    The send is claimed first by stamping ``confirmation_sent_at`` in a conditional
    update, so two processes (a signup and the resend job, or two signups) never
    both mail an address within ``signup.confirmation_interval``. If SMTP refuses,
    the stamp is put back and :class:`mailer.transport.TransportError` propagates;
    :func:`resend_pending_confirmations` retries a pending subscriber's link later.
    """
    from mailer.message import build_confirmation_message, build_notice_message
    from mailer.transport import send_now

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
                    Subscriber.link_key,
                ).where(Subscriber.id == subscriber_id)
            )
        ).one_or_none()
        if row is None or not _confirmation_allowed(row.confirmation_sent_at, settings, now):
            return False
        pending = row.status is SubscriberStatus.PENDING and row.confirm_nonce is not None
        if not pending and row.status is not SubscriberStatus.CONFIRMED:
            return False
        previous = row.confirmation_sent_at
        claimed = await session.execute(
            update(Subscriber)
            .where(
                Subscriber.id == subscriber_id,
                Subscriber.confirmation_sent_at.is_(None)
                if previous is None
                else Subscriber.confirmation_sent_at == previous,
            )
            .values(confirmation_sent_at=now)
        )
        if claimed.rowcount != 1:
            return False
    manage_url = link(settings, Purpose.MANAGE, subscriber_id, row.link_key)
    try:
        if pending:
            # No name: whoever filled in the form typed it, not necessarily the
            # owner of the address, and it must not put words (or links) in our mail.
            message = build_confirmation_message(
                settings,
                row.email,
                None,
                link(settings, Purpose.CONFIRM, subscriber_id, row.confirm_nonce),
                manage_url,
            )
        else:
            message = build_notice_message(
                settings,
                row.email,
                row.name,
                "already-subscribed",
                manage_url=manage_url,
                unsubscribe_url=link(settings, Purpose.UNSUBSCRIBE, subscriber_id, row.link_key),
            )
        await send_now(settings, message)
    except BaseException:
        async with database.transaction() as session:
            await session.execute(
                update(Subscriber)
                .where(Subscriber.id == subscriber_id, Subscriber.confirmation_sent_at == now)
                .values(confirmation_sent_at=previous)
            )
        raise
    return True


async def resend_pending_confirmations(
    database: Database, settings: Settings, *, now: datetime | None = None, limit: int = 200
) -> int:
    """Send the confirmation mails that never went out (SMTP was down, or a pending
    import); returns how many were sent. Stops at the first refusal, so an SMTP
    outage costs one attempt per run. Only signups younger than ``confirm_ttl`` are
    retried: an older request has expired anyway."""
    from mailer.message import MessageError
    from mailer.transport import TransportError

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
                    Subscriber.status == SubscriberStatus.PENDING,
                    Subscriber.confirm_nonce.is_not(None),
                    Subscriber.confirmation_sent_at.is_(None),
                    latest_request >= now - settings.signup.confirm_ttl,
                )
                .order_by(Subscriber.id)
                .limit(limit)
            )
        ).all()
    sent = 0
    for subscriber_id in ids:
        try:
            if await send_confirmation(database, settings, subscriber_id, now=now):
                sent += 1
        except TransportError as exc:
            log.warning("confirmation mails not sent, will retry: %s", exc)
            break
        except MessageError as exc:
            # This one subscriber's mail cannot be composed; the others still can.
            log.error("confirmation for subscriber %d cannot be composed: %s", subscriber_id, exc)
    return sent


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
    cleaned_name = clean_name(name)
    chosen_frequency = parse_frequency(frequency)
    topic_labels = list(topics)
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
    now: datetime | None = None,
) -> bool:
    """Unsubscribe and suppress the address. False when it was already unsubscribed."""
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
        await _cancel_pending_deliveries(session, subscriber_id, now)
        await session.execute(
            insert(ConsentEvent),
            [_consent(subscriber_id, "unsubscribe", settings, origin, now, {"method": method})],
        )
        return True


async def _cancel_pending_deliveries(
    session: AsyncSession, subscriber_id: int, now: datetime
) -> None:
    await session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status.in_((DeliveryStatus.PENDING, DeliveryStatus.DEFERRED)),
        )
        .values(status=DeliveryStatus.CANCELLED, last_error="recipient unsubscribed")
    )
    # When this reader's message was the last one a send had left, the send is done now.
    await finish_completed(session, now)


# --- data access requests: export and erasure -------------------------------------------


async def export_data(database: Database, settings: Settings, subscriber_id: int) -> dict[str, Any]:
    """Everything held about one subscriber, as JSON-ready data (GDPR art. 15/20)."""
    async with database.session() as session:
        subscriber = await session.get(Subscriber, subscriber_id)
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
        received = (
            await session.execute(
                select(Release.id, Release.title, Release.published_at, Release.canonical_url)
                .join(SubscriberRelease, SubscriberRelease.release_id == Release.id)
                .where(SubscriberRelease.subscriber_id == subscriber_id)
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
            "last_digest_at": _iso(subscriber.last_digest_at),
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
                "queued_at": _iso(d.created_at),
                "sent_at": _iso(d.sent_at),
                "message_id": d.message_id,
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
    which quote the address, are blanked.
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
    await session.execute(
        update(Delivery).where(Delivery.subscriber_id == subscriber_id).values(email="")
    )
    await session.execute(
        update(Bounce)
        .where(Bounce.email_hash == email_hash(settings, address))
        .values(diagnostic=None)
    )
    await session.execute(
        delete(SubscriberRelease).where(SubscriberRelease.subscriber_id == subscriber_id)
    )
    await session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    # No subscriber to point to any more: the record says only that an erasure happened.
    actor = {"actor": origin.actor} if origin and origin.actor else {}
    await session.execute(
        insert(ConsentEvent),
        [{"subscriber_id": None, "action": "erase", "at": now, "details": actor}],
    )
    session.expunge(subscriber)


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
    subscriber is pending and gets a confirmation mail (call send_confirmation when
    ``confirmation_due``). An address on the suppression list (it unsubscribed, was
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
        due = subscriber.status is SubscriberStatus.PENDING and _confirmation_allowed(
            subscriber.confirmation_sent_at, settings, now
        )
        await session.flush()
        view = await _load_view(session, subscriber.id)
        assert view is not None
        return AddResult(view, created, outcome, due)


@dataclass
class _ImportRow:
    line: int
    email: str
    key: str
    name: str | None
    topic_ids: list[int]


async def import_csv(
    database: Database,
    settings: Settings,
    source: TextIO | Path | str,
    *,
    status: SubscriberStatus = SubscriberStatus.PENDING,
    origin: Origin | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> ImportReport:
    """Import subscribers from CSV (columns ``email``, optional ``name`` and ``topics``).

    ``dry_run`` reports exactly what an import would do (the same code runs) and
    rolls everything back: the admin's preview before anything is written.

    Invalid rows are reported by line number and skipped; valid rows are imported in
    one transaction with bulk statements (100,000 rows take seconds, not minutes).
    Rows for one address are merged (topics united, the first name kept); an address
    already subscribed gets the file's topics added and, with ``status=confirmed``,
    is confirmed. Suppressed addresses are reported and never imported. Pending
    imports get their confirmation mail from the scheduler's resend job.
    ``topics`` lists slugs or names separated by ``;``, ``,`` or ``|``; empty
    means every topic.
    """
    if status not in (SubscriberStatus.PENDING, SubscriberStatus.CONFIRMED):
        raise InvalidField("status", "Imported subscribers are pending or confirmed.")
    now = now or utcnow()
    report = ImportReport()
    if isinstance(source, str | Path):
        path = Path(source)
        label = path.name
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8-sig")
        except FileNotFoundError:
            raise InvalidFile(f"{path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise InvalidFile(
                f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8 CSV"
            ) from None
        except OSError as exc:
            raise InvalidFile(f"{path}: cannot read: {exc.strerror}") from None
        stream: TextIO = io.StringIO(text, newline="")
    else:
        label = getattr(source, "name", "stdin")
        stream = source

    async with database.session() as session:
        topics = (
            await session.execute(select(Topic.id, Topic.slug, Topic.name, Topic.active))
        ).all()
    topic_by_label: dict[str, int] = {}
    for topic_id, slug, topic_name, active in topics:
        if active:
            topic_by_label[slug.lower()] = topic_id
            topic_by_label.setdefault(topic_name.lower(), topic_id)

    rows = _parse_rows(
        stream, label, topic_by_label, report, settings.signup.allow_special_use_domains
    )

    async with database.transaction() as session:
        suppressed = await suppressed_hashes(session)
        wanted: dict[str, _ImportRow] = {}
        for row in rows:
            # Hashing every row costs seconds on a big file; skip it when nothing is suppressed.
            if suppressed and email_hash(settings, row.email) in suppressed:
                report.suppressed.append((row.line, f"{row.email} is on the suppression list"))
            else:
                wanted[row.key] = row
        existing = await _existing_by_key(session, list(wanted))
        await _import_new(session, settings, wanted, existing, status, origin, now, label, report)
        await _import_existing(
            session, settings, wanted, existing, status, origin, now, label, report
        )
        if dry_run:
            await session.rollback()
    return report


def _parse_rows(
    stream: TextIO,
    label: str,
    topic_by_label: dict[str, int],
    report: ImportReport,
    allow_special_use: bool = False,
) -> list[_ImportRow]:
    try:
        reader = csv.DictReader(stream)
        header = reader.fieldnames
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InvalidFile(f"{label}: not a CSV file: {exc}") from None
    if not header:
        raise InvalidFile(f"{label}: the file is empty; the first line must name the columns")
    columns = {(h or "").strip().lower(): h for h in header}
    if "email" not in columns:
        found = ", ".join(repr(h) for h in header)
        raise InvalidFile(f"{label}: no 'email' column in the first line (found {found})")
    email_column, name_column, topics_column = (
        columns["email"],
        columns.get("name"),
        columns.get("topics"),
    )
    by_key: dict[str, _ImportRow] = {}
    line = 1
    try:
        for record in reader:
            # line_num is where the record ends; a quoted field may span lines.
            line = reader.line_num - sum(
                v.count("\n") for v in record.values() if isinstance(v, str)
            )
            raw_email = record.get(email_column) or ""
            if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                continue  # blank line
            try:
                address = normalize_address(raw_email, allow_special_use=allow_special_use)
                row_name = clean_name(record.get(name_column) if name_column else None)
                topic_ids = _row_topics(
                    record.get(topics_column) if topics_column else None, topic_by_label
                )
            except SubscriberError as exc:
                report.errors.append((line, str(exc)))
                continue
            key = email_key(address)
            seen = by_key.get(key)
            if seen is None:
                by_key[key] = _ImportRow(line, address, key, row_name, topic_ids)
                continue
            report.merged_duplicates += 1
            seen.name = seen.name or row_name
            # An earlier row with no topics meant "all"; united with anything it stays all.
            if seen.topic_ids and topic_ids:
                seen.topic_ids.extend(t for t in topic_ids if t not in seen.topic_ids)
            else:
                seen.topic_ids = []
    except csv.Error as exc:
        raise InvalidFile(f"{label}, line {reader.line_num}: {exc}") from None
    return list(by_key.values())


def _row_topics(raw: str | None, topic_by_label: dict[str, int]) -> list[int]:
    if not raw:
        return []
    ids: list[int] = []
    for label in _TOPIC_SEPARATORS.split(raw):
        label = label.strip()
        if not label:
            continue
        topic_id = topic_by_label.get(label.lower())
        if topic_id is None:
            raise InvalidField("topics", f"there is no topic {label!r}")
        if topic_id not in ids:
            ids.append(topic_id)
    return ids


@dataclass
class _Existing:
    id: int
    status: SubscriberStatus
    name: str | None
    topic_ids: set[int]


async def _existing_by_key(session: AsyncSession, keys: list[str]) -> dict[str, _Existing]:
    found: dict[str, _Existing] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        rows = await session.execute(
            select(Subscriber.id, Subscriber.email_key, Subscriber.status, Subscriber.name).where(
                Subscriber.email_key.in_(chunk)
            )
        )
        for subscriber_id, key, status, name in rows:
            found[key] = _Existing(subscriber_id, status, name, set())
    by_id = {e.id: e for e in found.values()}
    ids = list(by_id)
    for start in range(0, len(ids), _CHUNK):
        rows = await session.execute(
            select(SubscriberTopic.subscriber_id, SubscriberTopic.topic_id).where(
                SubscriberTopic.subscriber_id.in_(ids[start : start + _CHUNK])
            )
        )
        for subscriber_id, topic_id in rows:
            by_id[subscriber_id].topic_ids.add(topic_id)
    return found


async def _import_new(
    session: AsyncSession,
    settings: Settings,
    wanted: dict[str, _ImportRow],
    existing: dict[str, _Existing],
    status: SubscriberStatus,
    origin: Origin | None,
    now: datetime,
    label: str,
    report: ImportReport,
) -> None:
    confirmed = status is SubscriberStatus.CONFIRMED
    new_rows = [row for key, row in wanted.items() if key not in existing]
    for start in range(0, len(new_rows), _CHUNK):
        chunk = new_rows[start : start + _CHUNK]
        values = [
            {
                "email": row.email,
                "email_key": row.key,
                "name": row.name,
                "status": status,
                "frequency": Frequency.DAILY,
                "created_at": now,
                "confirmed_at": now if confirmed else None,
                "digest_since": now if confirmed else None,
                "confirm_nonce": None if confirmed else secrets.token_urlsafe(16),
                "soft_bounces": 0,
            }
            for row in chunk
        ]
        await session.execute(insert(Subscriber.__table__), values)
        ids = dict(
            (
                await session.execute(
                    select(Subscriber.email_key, Subscriber.id).where(
                        Subscriber.email_key.in_([row.key for row in chunk])
                    )
                )
            ).all()
        )
        pairs = [
            {"subscriber_id": ids[row.key], "topic_id": t} for row in chunk for t in row.topic_ids
        ]
        if pairs:
            await session.execute(insert(SubscriberTopic.__table__), pairs)
        await session.execute(
            insert(ConsentEvent.__table__),
            [
                _consent(
                    ids[row.key],
                    "import",
                    settings,
                    origin,
                    now,
                    {"file": label, "line": row.line, "status": status.value},
                )
                for row in chunk
            ],
        )
    report.imported += len(new_rows)


async def _import_existing(
    session: AsyncSession,
    settings: Settings,
    wanted: dict[str, _ImportRow],
    existing: dict[str, _Existing],
    status: SubscriberStatus,
    origin: Origin | None,
    now: datetime,
    label: str,
    report: ImportReport,
) -> None:
    confirm_ids: list[int] = []
    names: list[dict[str, Any]] = []
    topic_pairs: list[dict[str, int]] = []
    events: list[dict[str, Any]] = []
    for key, current in existing.items():
        row = wanted[key]
        changed = False
        if row.name and not current.name:
            names.append({"sid": current.id, "new_name": row.name})
            changed = True
        # No topic rows means "all topics": adding some would narrow the subscription.
        if row.topic_ids and current.topic_ids:
            added = [t for t in row.topic_ids if t not in current.topic_ids]
            topic_pairs += [{"subscriber_id": current.id, "topic_id": t} for t in added]
            changed = changed or bool(added)
        if status is SubscriberStatus.CONFIRMED and current.status is SubscriberStatus.PENDING:
            confirm_ids.append(current.id)
            changed = True
        if changed:
            report.updated += 1
            events.append(
                _consent(
                    current.id,
                    "import",
                    settings,
                    origin,
                    now,
                    {"file": label, "line": row.line, "status": status.value, "merged": True},
                )
            )
        else:
            report.unchanged += 1
    if names:
        await session.execute(
            update(Subscriber.__table__)
            .where(Subscriber.__table__.c.id == bindparam("sid"))
            .values(name=bindparam("new_name")),
            names,
        )
    if topic_pairs:
        await session.execute(insert(SubscriberTopic.__table__), topic_pairs)
    for start in range(0, len(confirm_ids), _CHUNK):
        await session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(confirm_ids[start : start + _CHUNK]))
            .values(
                status=SubscriberStatus.CONFIRMED,
                confirmed_at=now,
                digest_since=now,
                confirm_nonce=None,
            )
        )
    if events:
        await session.execute(insert(ConsentEvent.__table__), events)


# --- export -----------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "email",
    "name",
    "topics",
    "status",
    "frequency",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "suppression",
)


def suppression_text(view: SubscriberView) -> str:
    if not view.suppression:
        return ""
    details = " ".join((view.suppression_details or "").split())
    return f"{view.suppression}: {details}" if details else view.suppression


def export_csv(subscribers: Iterable[SubscriberView], out: TextIO) -> int:
    """Write subscribers as CSV that :func:`import_csv` reads back; returns the row count."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for s in subscribers:
        writer.writerow(
            [
                s.email,
                s.name or "",
                ";".join(s.topics),
                s.shown_status,
                s.frequency.value,
                _iso(s.created_at),
                _iso(s.confirmed_at) or "",
                _iso(s.unsubscribed_at) or "",
                suppression_text(s),
            ]
        )
        count += 1
    return count


__all__ = [
    "AddResult",
    "ConfirmResult",
    "ExpiredLink",
    "ImportReport",
    "InvalidAddress",
    "InvalidField",
    "InvalidFile",
    "InvalidLink",
    "NotFound",
    "Origin",
    "SignupResult",
    "SubscriberError",
    "SubscriberView",
    "SuppressedAddress",
    "TopicView",
    "active_topics",
    "add",
    "clean_name",
    "confirm",
    "count_by_status",
    "erase",
    "export_csv",
    "export_data",
    "find_subscriber",
    "get_subscriber",
    "import_csv",
    "list_subscribers",
    "normalize_address",
    "parse_frequency",
    "pending_confirmation",
    "remove",
    "resend_pending_confirmations",
    "send_confirmation",
    "signup",
    "subscriber_for_link",
    "unsubscribe",
    "update_preferences",
]
