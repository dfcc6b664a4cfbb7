"""Who gets which releases: planning a digest send into outbox rows.

:func:`plan_digest` runs inside the caller's write transaction with a flushed
:class:`~mailer.models.Digest`. For every eligible subscriber it picks the
releases they should get and writes one ``Delivery`` (the outbox row) plus one
``SubscriberRelease`` per release. ``subscriber_releases`` has the primary key
(subscriber, release), so the database itself refuses to queue a release to a
subscriber twice, whatever schedules overlap or retries happen; planning skips
those pairs up front so that a send never fails on them.

The rules for one subscriber:

* only releases that are not excluded and not merged into another (dedupe keeps
  the survivor); a release into which an already-sent release was merged counts
  as sent, so a press release reached through two sources arrives once;
* collected (first seen) at or after the subscriber's ``digest_since`` (set at
  confirmation; else ``confirmed_at``), so a slow source's late release still
  arrives, and published no longer ago than ``digest.max_age`` unless an editor
  added it by hand (``exempt_from_max_age``: an explicit decision to publish);
* already seen by the collector at ``now``;
* matching one of their topics, or any release when they chose none;
* the newest ``digest.max_items`` of those, newest first.

Planning is set-based so that it stays fast for large lists (20,000 subscribers
by 25 releases in a few seconds on SQLite): a fixed handful of bulk reads
(subscribers, their topics, suppressions, candidate releases, their topics and
what was already sent), the choice per subscriber in memory, then bulk inserts
(executemany) of the deliveries and of the subscriber-release pairs, and one
set-based update of ``last_digest_at``. There is no per-subscriber query.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.archive import mailable_conditions
from mailer.config import Settings
from mailer.db import Database
from mailer.message import ComposedMessage, MessageComposer, content_key
from mailer.models import (
    Audience,
    Delivery,
    DeliveryStatus,
    Digest,
    Release,
    ReleaseTopic,
    Subscriber,
    SubscriberRelease,
    SubscriberStatus,
    SubscriberTopic,
    Topic,
    utcnow,
)
from mailer.suppression import email_hash, email_key, suppressed_hashes

FREQUENCIES = tuple(Audience)  # the vocabulary itself is models.Audience
# Any constant works; it only has to be the same for every planner (PostgreSQL).
_PLANNING_LOCK_KEY = 0x6D61696C6572  # "mailer"
# Subscribers planned per round trip; bounds the planner's memory.
_PLAN_CHUNK = 5000


class PlanningError(ValueError):
    pass


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def format_duration(value: timedelta) -> str:
    """``14d``, ``36h``, ``90m``: as config.yaml writes durations."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class SelectionReport:
    """Why a send (or a preview) reaches whom it reaches, with numbers.

    Filled in by the planner itself (:func:`plan_digest` with ``report=``), so the
    explanation is the planning's own account, not a second opinion. Readers who
    get nothing are counted once, under the rule that left them out last.
    """

    frequency: str
    max_age: timedelta
    recipients: int = 0
    # Confirmed readers this send is for (its frequency, or the one previewed).
    readers: int = 0
    # Confirmed readers whose frequency is another schedule's.
    other_schedules: int = 0
    pending: int = 0
    suppressed: int = 0
    already_received: int = 0
    topics_match_none: int = 0
    confirmed_after: int = 0
    # Releases that could go out now, and those held back.
    candidates: int = 0
    too_old: int = 0
    excluded: int = 0
    not_collected_yet: int = 0
    only_subscriber: bool = False

    def reasons(self) -> list[str]:
        """One sentence per rule that held something back; empty when nothing was."""
        lines: list[str] = []
        age = format_duration(self.max_age)
        if self.candidates == 0 and not (self.too_old or self.excluded or self.not_collected_yet):
            lines.append("No releases are stored yet: collect or add some first.")
        if self.too_old:
            lines.append(
                f"{_plural(self.too_old, 'release is', 'releases are')} older than "
                f"digest.max_age ({age}) and not sent (collected releases only; releases "
                "added by hand are sent whatever their date)."
            )
        if self.excluded:
            lines.append(
                f"{_plural(self.excluded, 'release is', 'releases are')} excluded from "
                "digests by an editor."
            )
        if self.not_collected_yet:
            lines.append(
                f"{_plural(self.not_collected_yet, 'release was', 'releases were')} "
                "collected after this moment."
            )
        if self.readers == 0 and not self.only_subscriber:
            audience = "" if self.frequency == "all" else f" with frequency {self.frequency!r}"
            others = []
            if self.other_schedules:
                others.append(f"{self.other_schedules} confirmed on another schedule")
            if self.pending:
                others.append(f"{self.pending} not confirmed yet")
            tail = f" ({'; '.join(others)})" if others else ""
            lines.append(f"There is no confirmed reader{audience}{tail}.")
        # (how many, what they did: said of one reader, said of several)
        left_out = (
            (
                self.already_received,
                "has already received every release that could go out",
                "have already received every release that could go out",
            ),
            (
                self.topics_match_none,
                "chose topics that match none of the releases not yet sent to them",
                "chose topics that match none of the releases not yet sent to them",
            ),
            (
                self.confirmed_after,
                "confirmed after these releases arrived (a reader gets what arrives "
                "after confirming)",
                "confirmed after these releases arrived (a reader gets what arrives "
                "after confirming)",
            ),
            (
                self.suppressed,
                "has a suppressed address (bounced, complained or unsubscribed)",
                "have suppressed addresses (bounced, complained or unsubscribed)",
            ),
        )
        for count, one, several in left_out:
            if count:
                who = "The reader" if self.only_subscriber else _plural(count, "reader", "readers")
                lines.append(f"{who} {one if count == 1 else several}.")
        return lines

    def summary(self) -> str:
        """One line for a shell: how many it reaches, then why not more."""
        head = (
            f"{_plural(self.recipients, 'recipient', 'recipients')} of "
            f"{_plural(self.readers, 'confirmed reader', 'confirmed readers')}"
        )
        reasons = self.reasons()
        return head + (": " + " ".join(reasons) if reasons else ".")


@dataclass(frozen=True)
class _Candidate:
    id: int
    published_at: datetime
    first_seen_at: datetime
    topic_ids: frozenset[int]


async def plan_digest(
    session: AsyncSession,
    settings: Settings,
    digest: Digest,
    now: datetime | None = None,
    *,
    only_subscriber_id: int | None = None,
    report: SelectionReport | None = None,
) -> int:
    """Write the outbox rows of ``digest``; return how many deliveries were queued.

    ``only_subscriber_id`` restricts planning to one subscriber (previews);
    ``report`` is filled in with why the send reaches whom it reaches.
    """
    if digest.id is None:
        raise PlanningError("the digest must be flushed (have an id) before planning")
    if digest.frequency not in FREQUENCIES:
        raise PlanningError(f"unknown digest frequency {digest.frequency!r}")
    now = now or utcnow()
    await _serialise_planning(session)
    if digest.kind == "test":
        count = await _plan_test(session, settings, digest, now)
    else:
        count = await _plan_subscribers(session, settings, digest, now, only_subscriber_id, report)
    digest.recipient_count = count
    return count


async def _serialise_planning(session: AsyncSession) -> None:
    """Two planners at once must not both decide that a release is still unsent.

    SQLite already runs write transactions one at a time (BEGIN IMMEDIATE); on
    PostgreSQL a transaction-scoped advisory lock makes concurrent planners wait.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PLANNING_LOCK_KEY}
        )


def _sendable(now: datetime) -> tuple[Any, ...]:
    # Withdrawn releases are never mailed; embargoed ones not before the embargo ends.
    return (
        Release.excluded.is_(False),
        Release.merged_into_id.is_(None),
        *mailable_conditions(now),
    )


async def recent_release_ids(session: AsyncSession, limit: int, now: datetime) -> list[int]:
    """The newest sendable releases regardless of subscribers (test sends, samples)."""
    rows = await session.scalars(
        select(Release.id)
        .where(*_sendable(now), Release.first_seen_at <= now)
        .order_by(Release.published_at.desc(), Release.id.desc())
        .limit(limit)
    )
    return list(rows)


async def _plan_test(
    session: AsyncSession, settings: Settings, digest: Digest, now: datetime
) -> int:
    if not digest.test_address:
        raise PlanningError("a test send needs a test address")
    release_ids = await recent_release_ids(session, settings.digest.max_items, now)
    if not release_ids:
        return 0
    await session.execute(
        insert(Delivery),
        [_delivery_row(digest.id, None, digest.test_address, release_ids, now)],
    )
    return 1


def _delivery_row(
    digest_id: int, subscriber_id: int | None, email: str, release_ids: Sequence[int], now: datetime
) -> dict[str, object]:
    return {
        "digest_id": digest_id,
        "subscriber_id": subscriber_id,
        "email": email,
        "release_ids": list(release_ids),
        "content_key": content_key(release_ids),
        "status": DeliveryStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": None,
        "created_at": now,
        "bounced": False,
    }


async def _plan_subscribers(
    session: AsyncSession,
    settings: Settings,
    digest: Digest,
    now: datetime,
    only_subscriber_id: int | None,
    report: SelectionReport | None = None,
) -> int:
    """Plan in chunks of subscribers (all in the caller's one transaction), so
    memory stays flat however long the list: a 100,000-reader plan holds one
    chunk's rows at a time, not two and a half million."""
    oldest_allowed = now - settings.digest.max_age
    candidates = await _candidates(session, oldest_allowed, now)
    if report is not None:
        report.candidates = len(candidates)
        await _count_held_back(session, report, oldest_allowed, now, digest, only_subscriber_id)
    if not candidates:
        return 0
    candidate_ids = [c.id for c in candidates]
    suppressed = await suppressed_hashes(session)
    # Resolve the secret once: email_hash would otherwise look it up per address.
    keyed = settings.model_copy(update={"secret_key": settings.get_secret_key()})

    subscriber_query = select(
        Subscriber.id,
        Subscriber.email,
        Subscriber.digest_since,
        Subscriber.confirmed_at,
        Subscriber.created_at,
    ).where(Subscriber.status == SubscriberStatus.CONFIRMED)
    if digest.frequency != "all":
        subscriber_query = subscriber_query.where(Subscriber.frequency == digest.frequency)
    if only_subscriber_id is not None:
        subscriber_query = subscriber_query.where(Subscriber.id == only_subscriber_id)

    planned = 0
    after_id = 0
    while True:
        subscribers = (
            await session.execute(
                subscriber_query.where(Subscriber.id > after_id)
                .order_by(Subscriber.id)
                .limit(_PLAN_CHUNK)
            )
        ).all()
        if not subscribers:
            break
        first_id, after_id = subscribers[0].id, subscribers[-1].id
        chosen_topics, already_sent = await _chunk_history(
            session, first_id, after_id, candidate_ids
        )
        planned += await _plan_chunk(
            session,
            settings,
            digest,
            now,
            subscribers,
            candidates,
            chosen_topics,
            already_sent,
            suppressed,
            keyed,
            report,
        )

    if planned:
        await session.execute(
            update(Subscriber)
            .where(
                Subscriber.id.in_(
                    select(Delivery.subscriber_id).where(Delivery.digest_id == digest.id)
                )
            )
            .values(last_digest_at=now)
            .execution_options(synchronize_session=False)
        )
    return planned


async def _count_held_back(
    session: AsyncSession,
    report: SelectionReport,
    oldest_allowed: datetime,
    now: datetime,
    digest: Digest,
    only_subscriber_id: int | None,
) -> None:
    """The release and reader counts of a report that planning itself does not see."""
    live = Release.merged_into_id.is_(None)
    too_old = (Release.published_at < oldest_allowed) & Release.exempt_from_max_age.is_(False)
    report.too_old = (
        await session.scalar(select(func.count()).where(live, Release.excluded.is_(False), too_old))
        or 0
    )
    report.excluded = (
        await session.scalar(select(func.count()).where(live, Release.excluded.is_(True))) or 0
    )
    report.not_collected_yet = (
        await session.scalar(
            select(func.count()).where(*_sendable(now), Release.first_seen_at > now)
        )
        or 0
    )
    report.only_subscriber = only_subscriber_id is not None
    readers = select(func.count()).where(Subscriber.status == SubscriberStatus.CONFIRMED)
    if only_subscriber_id is not None:
        report.readers = (
            await session.scalar(readers.where(Subscriber.id == only_subscriber_id)) or 0
        )
        return
    if digest.frequency != "all":
        report.other_schedules = (
            await session.scalar(readers.where(Subscriber.frequency != digest.frequency)) or 0
        )
        readers = readers.where(Subscriber.frequency == digest.frequency)
    report.readers = await session.scalar(readers) or 0
    report.pending = (
        await session.scalar(
            select(func.count()).where(Subscriber.status == SubscriberStatus.PENDING)
        )
        or 0
    )


async def _candidates(
    session: AsyncSession, oldest_allowed: datetime, now: datetime
) -> list[_Candidate]:
    """Sendable releases young enough to go out, newest first, with their topics."""
    candidate_filter = (
        *_sendable(now),
        or_(Release.published_at >= oldest_allowed, Release.exempt_from_max_age.is_(True)),
        Release.first_seen_at <= now,
    )
    release_rows = (
        await session.execute(
            select(Release.id, Release.published_at, Release.first_seen_at)
            .where(*candidate_filter)
            .order_by(Release.published_at.desc(), Release.id.desc())
        )
    ).all()
    if not release_rows:
        return []
    release_topics: dict[int, set[int]] = {}
    for release_id, topic_id in await session.execute(
        select(ReleaseTopic.release_id, ReleaseTopic.topic_id).where(
            ReleaseTopic.release_id.in_(select(Release.id).where(*candidate_filter))
        )
    ):
        release_topics.setdefault(release_id, set()).add(topic_id)
    return [
        _Candidate(
            row.id,
            row.published_at,
            row.first_seen_at,
            frozenset(release_topics.get(row.id, ())),
        )
        for row in release_rows
    ]


async def _chunk_history(
    session: AsyncSession, first_id: int, last_id: int, candidate_ids: list[int]
) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """Topic choices and already-sent candidates of subscribers first_id..last_id."""
    in_chunk = SubscriberTopic.subscriber_id.between(first_id, last_id)
    chosen_topics: dict[int, set[int]] = {}
    for subscriber_id, topic_id in await session.execute(
        select(SubscriberTopic.subscriber_id, SubscriberTopic.topic_id)
        .join(Topic, Topic.id == SubscriberTopic.topic_id)
        .where(Topic.active.is_(True), in_chunk)
    ):
        chosen_topics.setdefault(subscriber_id, set()).add(topic_id)

    already_sent: dict[int, set[int]] = {}
    sent_in_chunk = SubscriberRelease.subscriber_id.between(first_id, last_id)
    sent_query = select(SubscriberRelease.subscriber_id, SubscriberRelease.release_id).where(
        sent_in_chunk, SubscriberRelease.release_id.in_(candidate_ids)
    )
    # A release sent earlier and later merged into a candidate: the candidate is
    # the same press release, so it counts as sent too.
    merged_query = (
        select(SubscriberRelease.subscriber_id, Release.merged_into_id)
        .join(Release, Release.id == SubscriberRelease.release_id)
        .where(sent_in_chunk, Release.merged_into_id.in_(candidate_ids))
    )
    for query in (sent_query, merged_query):
        for subscriber_id, release_id in await session.execute(query):
            already_sent.setdefault(subscriber_id, set()).add(release_id)
    return chosen_topics, already_sent


async def _plan_chunk(
    session: AsyncSession,
    settings: Settings,
    digest: Digest,
    now: datetime,
    subscribers: Sequence[Any],
    candidates: list[_Candidate],
    chosen_topics: dict[int, set[int]],
    already_sent: dict[int, set[int]],
    suppressed: set[str],
    keyed: Settings,
    report: SelectionReport | None = None,
) -> int:
    max_items = settings.digest.max_items
    nothing: frozenset[int] = frozenset()
    deliveries: list[dict[str, object]] = []
    picked_by_subscriber: dict[int, list[int]] = {}
    for subscriber in subscribers:
        if suppressed and email_hash(keyed, subscriber.email) in suppressed:
            if report is not None:
                report.suppressed += 1
            continue
        # "Since the last digest" is what subscriber_releases records; the first
        # digest starts at confirmation. Both go by when mailer collected a release,
        # not by its publication date: a release published before a digest but
        # collected after it (a slow source) must still reach every reader.
        since = subscriber.digest_since or subscriber.confirmed_at or subscriber.created_at
        topics = chosen_topics.get(subscriber.id)
        sent = already_sent.get(subscriber.id, nothing)
        picked: list[int] = []
        arrived_since = unsent = 0
        for candidate in candidates:
            if since and candidate.first_seen_at < since:
                continue
            arrived_since += 1
            if candidate.id in sent:
                continue
            unsent += 1
            if topics and not topics & candidate.topic_ids:
                continue
            picked.append(candidate.id)
            if len(picked) == max_items:
                break
        if report is not None and not picked:
            if unsent:
                report.topics_match_none += 1
            elif arrived_since:
                report.already_received += 1
            else:
                report.confirmed_after += 1
        if picked:
            picked_by_subscriber[subscriber.id] = picked
            deliveries.append(
                _delivery_row(digest.id, subscriber.id, subscriber.email, picked, now)
            )
    if report is not None:
        report.recipients += len(deliveries)
    if not deliveries:
        return 0
    result = await session.execute(
        insert(Delivery.__table__).returning(
            Delivery.__table__.c.id, Delivery.__table__.c.subscriber_id
        ),
        deliveries,
    )
    delivery_ids = {row.subscriber_id: row.id for row in result}
    await _insert_pairs(
        session,
        [
            (subscriber_id, release_id, delivery_id)
            for subscriber_id, delivery_id in delivery_ids.items()
            for release_id in picked_by_subscriber[subscriber_id]
        ],
    )
    return len(deliveries)


async def _insert_pairs(session: AsyncSession, pairs: list[tuple[int, int, int]]) -> None:
    """Bulk insert of (subscriber, release, delivery) rows, straight to the driver.

    These rows are the bulk of a plan (subscribers x releases: half a million for a
    large list). They are plain integers, so SQLAlchemy's per-row parameter
    processing does nothing but costs about half of the planning time; the
    driver's executemany takes the tuples as they are.
    """
    if not pairs:
        return
    connection = await session.connection()
    table = SubscriberRelease.__table__
    columns = ["subscriber_id", "release_id", "delivery_id"]
    if connection.dialect.name == "postgresql":
        # COPY, on the transaction's own connection: executemany takes half a
        # minute for half a million rows on PostgreSQL, COPY about a second.
        raw = await connection.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(
            table.name, records=pairs, columns=columns
        )
        return
    paramstyle = connection.dialect.paramstyle
    placeholders = {
        "qmark": "?, ?, ?",
        "numeric": ":1, :2, :3",
        "numeric_dollar": "$1, $2, $3",
        "format": "%s, %s, %s",
    }.get(paramstyle)
    if placeholders is None:  # any other driver: the portable (slower) way
        rows = [
            dict(zip(("subscriber_id", "release_id", "delivery_id"), p, strict=True)) for p in pairs
        ]
        await session.execute(insert(table), rows)
        return
    statement = (
        f"INSERT INTO {table.name} (subscriber_id, release_id, delivery_id) "  # noqa: S608
        f"VALUES ({placeholders})"
    )
    for start in range(0, len(pairs), _PLAN_CHUNK * 10):
        await connection.exec_driver_sql(statement, pairs[start : start + _PLAN_CHUNK * 10])


class PreviewError(ValueError):
    """The preview cannot be made as asked (unknown or unconfirmed subscriber)."""


@dataclass(frozen=True)
class DigestPreview:
    message: ComposedMessage
    recipient: str
    subject: str
    release_count: int
    html: str
    # Who a send now would reach and why not more (for the sample: every reader).
    selection: SelectionReport | None = None


class _DiscardChanges(Exception):
    pass


async def explain_digest(
    database: Database,
    settings: Settings,
    frequency: str = "all",
    now: datetime | None = None,
    *,
    subscriber_email: str | None = None,
) -> SelectionReport:
    """Who a send of ``frequency`` (or to one subscriber) would reach now and why
    not more: the planner runs with a report in a transaction that is rolled back,
    so nothing is written. Dry runs, confirm pages and empty previews show this."""
    outcome: list[SelectionReport] = []
    try:
        async with database.transaction() as session:
            subscriber = (
                await _confirmed_subscriber(session, subscriber_email) if subscriber_email else None
            )
            report = SelectionReport(frequency=frequency, max_age=settings.digest.max_age)
            digest = Digest(kind="preview", frequency=frequency, created_by="explain")
            session.add(digest)
            await session.flush()
            await plan_digest(
                session,
                settings,
                digest,
                now,
                only_subscriber_id=subscriber.id if subscriber else None,
                report=report,
            )
            outcome.append(report)
            raise _DiscardChanges
    except _DiscardChanges:
        pass
    return outcome[0]


async def _confirmed_subscriber(session: AsyncSession, address: str) -> Subscriber:
    subscriber = await session.scalar(
        select(Subscriber).where(Subscriber.email_key == email_key(address))
    )
    if subscriber is None:
        raise PreviewError(f"no subscriber with the address {address}")
    if subscriber.status != SubscriberStatus.CONFIRMED:
        raise PreviewError(
            f"{address} is {subscriber.status.value}: only confirmed subscribers receive digests"
        )
    return subscriber


async def preview_digest(
    database: Database,
    settings: Settings,
    subscriber_email: str | None = None,
    now: datetime | None = None,
) -> DigestPreview | None:
    """The message a subscriber would get if a digest went out now, or None when
    they would get none. Without a subscriber: a sample of the newest releases, as
    a test send would mail it.

    It runs the sending code itself (:func:`plan_digest`, then
    :class:`MessageComposer`) in a transaction that is always rolled back, so the
    preview is exactly what would be sent and nothing is marked as sent.
    """
    outcome: list[DigestPreview | None] = []
    try:
        async with database.transaction() as session:
            outcome.append(await _preview(session, settings, subscriber_email, now))
            raise _DiscardChanges
    except _DiscardChanges:
        pass
    return outcome[0]


async def _preview(
    session: AsyncSession, settings: Settings, subscriber_email: str | None, now: datetime | None
) -> DigestPreview | None:
    subscriber: Subscriber | None = None
    report = SelectionReport(frequency="all", max_age=settings.digest.max_age)
    if subscriber_email is not None:
        subscriber = await _confirmed_subscriber(session, subscriber_email)
        digest = Digest(kind="preview", frequency="all", created_by="preview")
    else:
        sample_address = f"reader@{settings.sender.domain}"
        digest = Digest(kind="test", frequency="all", test_address=sample_address)
    session.add(digest)
    await session.flush()
    count = await plan_digest(
        session,
        settings,
        digest,
        now,
        only_subscriber_id=subscriber.id if subscriber else None,
        report=report if subscriber else None,
    )
    if count == 0:
        return None
    if subscriber is None:
        # The sample shows the newest releases; say whom a real send would reach.
        everyone = Digest(kind="preview", frequency="all", created_by="preview")
        session.add(everyone)
        await session.flush()
        await plan_digest(session, settings, everyone, now, report=report)
    delivery = (
        await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
    ).one()
    composer = await MessageComposer.load(
        session,
        settings,
        delivery.release_ids,
        subscriber_ids=[subscriber.id] if subscriber else [],
        digest_id=digest.id,
    )
    message = composer.compose(
        delivery.id,
        delivery.subscriber_id,
        delivery.email,
        subscriber.name if subscriber else None,
        delivery.release_ids,
        subscriber.link_key if subscriber else None,
    )
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    html_part = parsed.get_body(("html",))
    return DigestPreview(
        message=message,
        recipient=delivery.email,
        subject=str(parsed["Subject"]),
        release_count=len(delivery.release_ids),
        # The wire format's CRLF line ends, as a local file would have them.
        html=html_part.get_content().replace("\r\n", "\n") if html_part is not None else "",
        selection=report,
    )
