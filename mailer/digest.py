"""Who gets which releases: planning a digest send into outbox rows.

The guarantee
-------------
A release reaches a reader at most once; copies of one press release merged by
dedupe count as one; a reader gets only what was collected (first seen) after they
confirmed (``digest_since``); their topics (none chosen: everything) and
``digest.max_age`` hold (unless an editor added the release by hand:
``exempt_from_max_age``); a message carries at most ``digest.max_items``
releases, newest first.

How it is stored: O(readers) per send, not readers x releases
-------------------------------------------------------------
Earlier versions wrote a row per reader per release (``subscriber_releases``:
3.9 million rows, 246 MB for one send to 200,000 readers). Now three things do
the same work:

* a **watermark** per reader (``watermarks.through_release_id``, a narrow table
  of its own: see models.Watermark): the largest release id at the moment of their
  last plan (the *cut*). Every release up to it has been
  decided for them: sent, or not theirs (other topics, too old, excluded). Ids go
  by arrival, not by publication, so a release published last week but collected
  today (a slow source) lies above every watermark and still goes out. Ids are a
  safe arrival order because planning first waits for every transaction that
  is inserting releases (PostgreSQL: a SHARE lock on ``releases``; SQLite runs one
  writer at a time): a release can never appear below a watermark afterwards.
  A collection *time* would not do: the collector stamps ``first_seen_at`` when
  its run starts and commits later, so a plan in between would step over it.
* the **releases still owed** to a reader, which do lie below the watermark: those
  matching their topics but not mailable when they were planned (under embargo,
  excluded or withdrawn by an editor, not yet collected at a ``now`` in the
  past), and those left out by ``digest.max_items``. They go out in the next send
  that may carry them (newest first, within max_items), while they are young
  enough: a release older than digest.max_age (and not exempt) is dropped.
* a **content group** per distinct decision of a send (``content_groups``): the
  releases of the message (``release_ids``, ``content_key``) and what its readers
  are still owed (``held_ids``). Each delivery points at its group
  (``deliveries.content_group_id``) instead of carrying its own release list, and
  each reader at the group of their last plan (``watermarks.owed_group_id``).

Readers with the same topic choice, watermark, owed group and start get the same
releases, so planning decides once per such *class* (a few dozen on a real list,
however many readers) and writes: one row per class outcome into
``content_groups``, one ``INSERT ... SELECT`` of the deliveries, one
``UPDATE ... FROM`` of the watermarks readers already have and one ``INSERT ...
SELECT`` of those they have not, through a temporary table of the readers and
their class (SQL on both PostgreSQL and SQLite; no per-reader Python). Every
reader of the send moves their watermark, also those who got nothing. Measured in
bench/RESULTS.md: a daily send to 1,000,000 readers plans in 11–13 s of
PostgreSQL CPU (12–14 s wall) on a 2-vCPU VM.

The cases
---------
* **Merges.** A release's arrival is the smallest id among itself and the copies
  merged into it; if that copy lies below a reader's watermark the press release
  was decided for them and is not sent again (even when the survivor arrived
  later). A merged copy that was owed is owed as its survivor. Nothing is moved
  on a merge (mailer.collect.store used to move rows).
* **Confirming.** A reader never planned, or confirmed again after their last plan
  (``digest_since`` later than ``watermarks.planned_at``), starts from ``digest_since``:
  releases collected before it are not theirs, whatever their id.
* **Topic changes** apply to releases that arrive afterwards (and to what is
  still owed); a release below the watermark that did not match their old topics
  is not sent when they add a topic.
* **Excluded, withdrawn, embargoed.** Such a release is owed to the readers it
  would have reached, so putting it back (or the embargo ending) sends it to them
  once. Withdrawing or embargoing a release after planning takes it out of unsent
  messages (:func:`mailer.archive.pull_from_unsent_digests`), and those readers
  are owed it again.
* **Crash between planning and sending.** Groups, deliveries and watermarks are
  written in one transaction: either the plan is there as a whole (the crash-safe
  outbox sends its deliveries when a worker runs again: nothing is planned twice
  and nothing lost) or not at all (the next plan starts from the old watermarks).
  A send that is cancelled or a delivery that fails for good does not give its
  releases back: as before, a release is queued to a reader once.
* **Test sends** write their group and delivery and move no watermark.
* **Previews, dry runs and confirm pages** make the same decision in a read
  session (:func:`explain_digest`, :func:`preview_digest`): nothing is written and
  no write lock is held.
* **Retention.** ``retention.deliveries`` prunes the per-recipient rows of finished
  sends (mailer.retention); counts stay on the digest and the groups, and the
  watermarks do not depend on deliveries.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    and_,
    case,
    cast,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from mailer.archive import mailable_conditions
from mailer.config import Settings
from mailer.db import Database, refresh_statistics
from mailer.message import ComposedMessage, MessageComposer, content_key
from mailer.models import (
    Audience,
    ContentGroup,
    Delivery,
    DeliveryStatus,
    Digest,
    Release,
    ReleaseTopic,
    Subscriber,
    SubscriberStatus,
    SubscriberTopic,
    Suppression,
    Topic,
    UTCDateTime,
    Watermark,
    utcnow,
)
from mailer.suppression import email_key

FREQUENCIES = tuple(Audience)  # the vocabulary itself is models.Audience
# Any constant works; it only has to be the same for every planner (PostgreSQL).
_PLANNING_LOCK_KEY = 0x6D61696C6572  # "mailer"


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
class _Release:
    """A release that may still reach someone: live (not merged into another),
    young enough (or exempt from digest.max_age), with an id up to the cut.
    Excluded, withdrawn and embargoed ones are among them (not sendable): owed to
    a reader, they go out if an editor puts them back."""

    id: int
    # The smallest id of the press release's copies (itself and what was merged into
    # it): the copy that arrived first decides whether a reader has had it.
    arrival: int
    published_at: datetime
    first_seen_at: datetime
    topic_ids: frozenset[int]
    # Mailable now: collected by ``now``, not excluded, withdrawn or under embargo.
    sendable: bool


@dataclass(frozen=True)
class _Class:
    """Readers planned alike: same topics, watermark, owed releases and start."""

    # Identifies the class in the planner's temporary table (its key, as text).
    number: int | str
    topics: frozenset[int]
    watermark: int
    group_id: int
    # Releases collected before this are not theirs (they confirmed later).
    since: datetime
    readers: int


@dataclass(frozen=True)
class _Decision:
    picked: tuple[int, ...]
    held: tuple[int, ...]


@dataclass
class _Plan:
    """What a send would do, before anything is written (previews stop here)."""

    cut: int
    classes: list[_Class]
    decisions: dict[int | str, _Decision]


# "No start": every release was collected after this.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# "Nothing was collected after they confirmed yet."
_NEVER = datetime(9999, 1, 1, tzinfo=UTC)


async def plan_digest(
    session: AsyncSession,
    settings: Settings,
    digest: Digest,
    now: datetime | None = None,
    *,
    report: SelectionReport | None = None,
) -> int:
    """Write the outbox rows of ``digest``; return how many deliveries were queued.

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
        count = await _plan_subscribers(session, settings, digest, now, report)
    digest.recipient_count = count
    # The claim query reads the unsent rows by send and status (mailer.send.worker).
    await refresh_statistics(session, count, "deliveries_unsent")
    return count


async def _serialise_planning(session: AsyncSession) -> None:
    """Two planners at once must not both decide that a release is still unsent,
    and no release may appear below a watermark after the watermark was set.

    SQLite runs write transactions one at a time (BEGIN IMMEDIATE), so the largest
    release id is final while planning runs. On PostgreSQL a transaction-scoped
    advisory lock makes concurrent planners wait, and a SHARE lock on releases
    waits for every transaction that is inserting releases (and holds new ones
    until the plan commits): an id handed out before the plan is committed before
    the plan reads the largest id, and every later one is larger.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PLANNING_LOCK_KEY}
        )
        await session.execute(text("LOCK TABLE releases IN SHARE MODE"))
        # Planning sorts and hashes a row per reader: in memory, not in temporary
        # files (the default 4 MB spills at a few hundred thousand readers).
        await session.execute(text("SET LOCAL work_mem = '128MB'"))


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
    """A test send: the newest releases to one address, and no bookkeeping (no
    watermark moves, so readers still get those releases)."""
    if not digest.test_address:
        raise PlanningError("a test send needs a test address")
    release_ids = await recent_release_ids(session, settings.digest.max_items, now)
    if not release_ids:
        return 0
    group_ids = await _insert_groups(session, digest.id, [(_Decision(tuple(release_ids), ()), 1)])
    session.add(
        Delivery(
            digest_id=digest.id,
            subscriber_id=None,
            test_address=digest.test_address,
            content_group_id=group_ids[0],
            status=DeliveryStatus.PENDING,
            attempts=0,
            bounced=False,
        )
    )
    await session.flush()
    return 1


async def _insert_groups(
    session: AsyncSession, digest_id: int, decisions: Sequence[tuple[_Decision, int]]
) -> list[int]:
    """One content group per decision (with its number of recipients); their ids."""
    if not decisions:
        return []
    result = await session.execute(
        insert(ContentGroup).returning(ContentGroup.id, sort_by_parameter_order=True),
        [
            {
                "digest_id": digest_id,
                "release_ids": list(decision.picked),
                "content_key": content_key(decision.picked),
                "held_ids": list(decision.held),
                "recipients": recipients,
            }
            for decision, recipients in decisions
        ],
    )
    return list(result.scalars())


# --- reading: who is in which class, and what each class gets ------------------------


async def _suppressed(session: AsyncSession, settings: Settings) -> ColumnElement[bool] | None:
    """A condition true for readers whose address is on the suppression list, or
    None when the list is empty.

    Only keyed hashes are stored (mailer.suppression), so the hash of every
    reader's address is compared. PostgreSQL computes the HMAC-SHA256 itself from
    its built-in sha256(); SQLite calls the Python function (small sites).
    """
    if await session.scalar(select(Suppression.id).limit(1)) is None:
        return None
    key = hashlib.sha256(b"mailer.suppression:" + settings.get_secret_key().encode()).digest()
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        block = key.ljust(64, b"\0")
        inner_pad = bytes(b ^ 0x36 for b in block)
        outer_pad = bytes(b ^ 0x5C for b in block)
        message = func.convert_to(Subscriber.email_key, literal_column("'UTF8'"))
        inner = func.sha256(literal(inner_pad, LargeBinary).op("||")(message))
        digest = func.sha256(literal(outer_pad, LargeBinary).op("||")(inner))
        hashed: ColumnElement[Any] = func.encode(digest, literal_column("'hex'"))
    else:
        raw = await connection.get_raw_connection()

        def keyed_hash(value: str) -> str:
            return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

        await raw.driver_connection.create_function(  # type: ignore[union-attr]
            "mailer_email_hash", 1, keyed_hash, deterministic=True
        )
        hashed = func.mailer_email_hash(Subscriber.email_key)
    return hashed.in_(select(Suppression.email_hash))


def _audience(frequency: str, only_subscriber_id: int | None) -> list[ColumnElement[bool]]:
    conditions = [Subscriber.status == SubscriberStatus.CONFIRMED]
    if frequency != "all":
        conditions.append(Subscriber.frequency == frequency)
    if only_subscriber_id is not None:
        conditions.append(Subscriber.id == only_subscriber_id)
    return conditions


def _reader_columns(dialect: str) -> tuple[Any, list[ColumnElement[Any]]]:
    """The join and the columns that put a reader in a class: their topic choice
    (as text), watermark, owed group and start (see _Class)."""
    if dialect == "postgresql":
        signature = func.string_agg(
            cast(SubscriberTopic.topic_id, Text),
            aggregate_order_by(literal_column("','"), SubscriberTopic.topic_id),
        )
    else:
        signature = func.group_concat(SubscriberTopic.topic_id, ",")
    chosen = (
        select(SubscriberTopic.subscriber_id, signature.label("signature"))
        .join(Topic, Topic.id == SubscriberTopic.topic_id)
        .where(Topic.active.is_(True))
        .group_by(SubscriberTopic.subscriber_id)
        .subquery("chosen")
    )
    since = func.coalesce(Subscriber.digest_since, Subscriber.confirmed_at, Subscriber.created_at)
    # Never planned, or confirmed again since: they start at confirmation.
    fresh = or_(Watermark.subscriber_id.is_(None), since > Watermark.planned_at)
    first_after = (
        select(func.min(Release.first_seen_at)).where(Release.first_seen_at >= since)
    ).scalar_subquery()
    columns: list[ColumnElement[Any]] = [
        # Whether the reader has a watermark row: planning updates those rows and
        # inserts the others (mailer.digest._move_watermarks).
        Watermark.subscriber_id.is_not(None).label("marked"),
        func.coalesce(chosen.c.signature, "").label("signature"),
        case((fresh, 0), else_=Watermark.through_release_id).label("watermark"),
        case((fresh, 0), else_=func.coalesce(Watermark.owed_group_id, 0)).label("group_id"),
        type_coerce(
            case(
                (fresh, func.coalesce(first_after, literal(_NEVER, UTCDateTime()))),
                else_=literal(_EPOCH, UTCDateTime()),
            ),
            UTCDateTime(),
        ).label("since"),
    ]
    join = Subscriber.__table__.outerjoin(
        chosen, chosen.c.subscriber_id == Subscriber.id
    ).outerjoin(Watermark, Watermark.subscriber_id == Subscriber.id)
    return join, columns


def _topic_set(signature: str) -> frozenset[int]:
    return frozenset(int(part) for part in signature.split(",") if part)


async def _classes_of(session: AsyncSession, query: Any) -> list[_Class]:
    return [
        _Class(number, _topic_set(signature), watermark, group_id, since, readers)
        for number, signature, watermark, group_id, since, readers in await session.execute(query)
    ]


async def _relevant_releases(
    session: AsyncSession, settings: Settings, now: datetime, cut: int
) -> list[_Release]:
    """Every release that may still reach someone, newest first (the digest's order)."""
    oldest_allowed = now - settings.digest.max_age
    copy = aliased(Release)
    first_copy = (
        select(func.min(copy.id)).where(copy.merged_into_id == Release.id).scalar_subquery()
    )
    sendable = and_(*_sendable(now), Release.first_seen_at <= now)
    rows = (
        await session.execute(
            select(
                Release.id,
                func.coalesce(first_copy, Release.id),
                Release.published_at,
                Release.first_seen_at,
                sendable,
            )
            .where(
                Release.merged_into_id.is_(None),
                or_(Release.published_at >= oldest_allowed, Release.exempt_from_max_age.is_(True)),
                Release.id <= cut,
            )
            .order_by(Release.published_at.desc(), Release.id.desc())
        )
    ).all()
    topics: dict[int, set[int]] = {}
    ids = [row[0] for row in rows]
    for start in range(0, len(ids), 500):
        for release_id, topic_id in await session.execute(
            select(ReleaseTopic.release_id, ReleaseTopic.topic_id).where(
                ReleaseTopic.release_id.in_(ids[start : start + 500])
            )
        ):
            topics.setdefault(release_id, set()).add(topic_id)
    return [
        _Release(
            release_id,
            min(release_id, arrival),
            published_at,
            first_seen_at,
            frozenset(topics.get(release_id, ())),
            bool(sendable),
        )
        for release_id, arrival, published_at, first_seen_at, sendable in rows
    ]


async def _owed(session: AsyncSession, group_ids: set[int]) -> dict[int, frozenset[int]]:
    """The held releases of the given groups, merged copies replaced by the release
    they were merged into (the same press release)."""
    held: dict[int, list[int]] = {}
    wanted = sorted(group_ids - {0})
    for start in range(0, len(wanted), 500):
        for group_id, held_ids in await session.execute(
            select(ContentGroup.id, ContentGroup.held_ids).where(
                ContentGroup.id.in_(wanted[start : start + 500])
            )
        ):
            held[group_id] = [int(i) for i in held_ids]
    every = sorted({i for ids in held.values() for i in ids})
    merged: dict[int, int] = {}
    for start in range(0, len(every), 500):
        rows = await session.execute(
            select(Release.id, Release.merged_into_id).where(
                Release.id.in_(every[start : start + 500]),
                Release.merged_into_id.is_not(None),
            )
        )
        merged.update((release_id, survivor) for release_id, survivor in rows)
    return {g: frozenset(merged.get(i, i) for i in ids) for g, ids in held.items()}


def _decide(
    readers: _Class,
    releases: list[_Release],
    owed: frozenset[int],
    max_items: int,
    report: SelectionReport | None,
) -> _Decision:
    """The releases one class gets now, and those it is still owed afterwards."""
    topics = readers.topics
    picked: list[int] = []
    held: list[int] = []
    arrived = unsent = 0
    for release in releases:
        if release.first_seen_at < readers.since:
            continue
        arrived += release.sendable
        if release.arrival <= readers.watermark and release.id not in owed:
            continue  # decided for them by an earlier send
        unsent += release.sendable
        if topics and not topics & release.topic_ids:
            continue
        if release.sendable and len(picked) < max_items:
            picked.append(release.id)
        else:
            held.append(release.id)
    if report is not None:
        if picked:
            report.recipients += readers.readers
        elif unsent:
            report.topics_match_none += readers.readers
        elif arrived:
            report.already_received += readers.readers
        else:
            report.confirmed_after += readers.readers
    return _Decision(tuple(picked), tuple(held))


async def _plan(
    session: AsyncSession,
    settings: Settings,
    now: datetime,
    classes_query: Any,
    report: SelectionReport | None,
) -> _Plan:
    """Decide per class of readers; nothing is written."""
    cut = await session.scalar(select(func.max(Release.id))) or 0
    releases = await _relevant_releases(session, settings, now, cut)
    classes = await _classes_of(session, classes_query)
    owed = await _owed(session, {c.group_id for c in classes})
    if report is not None:
        report.candidates = sum(r.sendable for r in releases)
    decisions: dict[int | str, _Decision] = {}
    memo: dict[tuple[Any, ...], _Decision] = {}
    nothing: frozenset[int] = frozenset()
    for readers in classes:
        key = (readers.topics, readers.watermark, readers.group_id, readers.since)
        if key not in memo or report is not None:
            memo[key] = _decide(
                readers,
                releases,
                owed.get(readers.group_id, nothing),
                settings.digest.max_items,
                report,
            )
        decisions[readers.number] = memo[key]
    return _Plan(cut, classes, decisions)


async def _readers(
    session: AsyncSession,
    settings: Settings,
    now: datetime,
    frequency: str,
    only_subscriber_id: int | None,
    report: SelectionReport | None,
) -> Any:
    """The readers a send is for (confirmed, its frequency, not suppressed) with
    the columns that class them; the report gets the reader counts."""
    join, columns = _reader_columns(session.get_bind().dialect.name)
    conditions = _audience(frequency, only_subscriber_id)
    suppressed = await _suppressed(session, settings)
    if report is not None:
        await _count_held_back(session, settings, report, now, frequency, only_subscriber_id)
        if suppressed is not None:
            report.suppressed = (
                await session.scalar(
                    select(func.count()).select_from(Subscriber).where(*conditions, suppressed)
                )
                or 0
            )
    if suppressed is not None:
        conditions.append(~suppressed)
    return select(Subscriber.id, Subscriber.email, *columns).select_from(join).where(*conditions)


_CLASS_COLUMNS = ("signature", "watermark", "group_id", "since")


async def _read_plan(
    session: AsyncSession,
    settings: Settings,
    frequency: str,
    now: datetime,
    only_subscriber_id: int | None,
    report: SelectionReport | None,
) -> _Plan:
    """The plan without writing anything (previews, dry runs, confirm pages)."""
    readers = (
        await _readers(session, settings, now, frequency, only_subscriber_id, report)
    ).subquery("readers")
    grouped = [readers.c[name] for name in _CLASS_COLUMNS]
    classes = select(func.row_number().over(order_by=grouped), *grouped, func.count()).group_by(
        *grouped
    )
    return await _plan(session, settings, now, classes, report)


# --- writing: one content group per decision, then two set-based statements -----------


_READERS = Table(
    "plan_readers",
    MetaData(),
    # No primary key: a reader appears once by construction (one row per
    # subscriber), every statement joins on class_key or hashes, and building the
    # key's index cost about 2 s of a 13–14 s million-reader plan (bench/RESULTS.md).
    Column("subscriber_id", Integer),
    Column("class_key", Text),
    Column("signature", Text),
    Column("watermark", Integer),
    Column("group_id", Integer),
    Column("since", UTCDateTime()),
    Column("marked", Boolean),
    prefixes=["TEMPORARY"],
)
_CLASSES = Table(
    "plan_classes",
    MetaData(),
    Column("class_key", Text, primary_key=True),
    Column("group_id", Integer),
    Column("deliver", Boolean),
    prefixes=["TEMPORARY"],
)


async def _plan_subscribers(
    session: AsyncSession,
    settings: Settings,
    digest: Digest,
    now: datetime,
    report: SelectionReport | None = None,
) -> int:
    """Class the readers into a temporary table (one INSERT ... SELECT), decide per
    class, write one content group per distinct decision, then every delivery with
    one INSERT ... SELECT and the watermarks with one UPDATE and one INSERT."""
    connection = await session.connection()
    readers = (await _readers(session, settings, now, digest.frequency, None, report)).subquery(
        "readers"
    )
    grouped = [readers.c[name] for name in _CLASS_COLUMNS]
    await connection.run_sync(lambda sync: _READERS.create(sync))
    await connection.run_sync(lambda sync: _CLASSES.create(sync))
    try:
        await connection.execute(
            insert(_READERS).from_select(
                ["subscriber_id", "class_key", *_CLASS_COLUMNS, "marked"],
                select(
                    readers.c.id,
                    # One text to group and join on: no sort of a million rows.
                    grouped[0]
                    + "|"
                    + cast(grouped[1], Text)
                    + "|"
                    + cast(grouped[2], Text)
                    + "|"
                    + cast(grouped[3], Text),
                    *grouped,
                    readers.c.marked,
                ),
            )
        )
        if connection.dialect.name == "postgresql":
            await connection.execute(text("ANALYZE plan_readers"))
        classes = select(
            _READERS.c.class_key,
            func.min(_READERS.c.signature),
            func.min(_READERS.c.watermark),
            func.min(_READERS.c.group_id),
            type_coerce(func.min(_READERS.c.since), UTCDateTime()),
            func.count(),
        ).group_by(_READERS.c.class_key)
        plan = await _plan(session, settings, now, classes, report)
        return await _write(session, connection, digest, now, plan)
    finally:
        await connection.run_sync(lambda sync: _CLASSES.drop(sync))
        await connection.run_sync(lambda sync: _READERS.drop(sync))


async def _write(
    session: AsyncSession, connection: AsyncConnection, digest: Digest, now: datetime, plan: _Plan
) -> int:
    recipients: dict[_Decision, int] = {}
    for readers in plan.classes:
        decision = plan.decisions[readers.number]
        if decision.picked or decision.held:
            recipients[decision] = recipients.get(decision, 0) + (
                readers.readers if decision.picked else 0
            )
    ordered = list(recipients.items())
    group_ids = dict(
        zip(
            (d for d, _ in ordered),
            await _insert_groups(session, digest.id, ordered),
            strict=True,
        )
    )
    rows = [
        {
            "class_key": readers.number,
            "group_id": group_ids.get(plan.decisions[readers.number]),
            "deliver": bool(plan.decisions[readers.number].picked),
        }
        for readers in plan.classes
    ]
    if rows:
        await connection.execute(insert(_CLASSES), rows)
    deliveries = Delivery.__table__
    delivered = (
        select(
            literal(digest.id),
            _READERS.c.subscriber_id,
            _CLASSES.c.group_id,
            literal(DeliveryStatus.PENDING, deliveries.c.status.type),
            literal(0),
            literal(False),
        )
        .join(_CLASSES, _CLASSES.c.class_key == _READERS.c.class_key)
        .where(_CLASSES.c.deliver.is_(True))
        .order_by(_READERS.c.subscriber_id)
    )
    result = await connection.execute(
        insert(deliveries).from_select(
            [
                "digest_id",
                "subscriber_id",
                "content_group_id",
                "status",
                "attempts",
                "bounced",
            ],
            delivered,
        )
    )
    planned = result.rowcount or 0
    await _move_watermarks(connection, plan.cut, now)
    return planned


async def _move_watermarks(connection: AsyncConnection, cut: int, now: datetime) -> None:
    """Every reader of the send moves on, also those who got nothing (their topics
    matched none): what arrived up to the cut is decided for them.

    Two statements rather than one upsert: an ``ON CONFLICT`` upsert probes the
    primary key once per reader, where ``UPDATE ... FROM`` joins the million rows
    in one hash join and rewrites each in its page (watermarks keep free room for
    it); the reader query already knows who has a row (planners take turns, so
    nobody adds one meanwhile). Measured in bench/RESULTS.md.
    """
    marks = Watermark.__table__
    sent_now = _CLASSES.c.deliver.is_(True)
    stamp = literal(now, UTCDateTime())
    await connection.execute(
        update(marks)
        .where(
            marks.c.subscriber_id == _READERS.c.subscriber_id,
            _READERS.c.marked.is_(True),
            _CLASSES.c.class_key == _READERS.c.class_key,
        )
        .values(
            through_release_id=cut,
            owed_group_id=_CLASSES.c.group_id,
            planned_at=stamp,
            last_digest_at=case((sent_now, stamp), else_=marks.c.last_digest_at),
        )
    )
    await connection.execute(
        insert(marks).from_select(
            [
                "subscriber_id",
                "through_release_id",
                "owed_group_id",
                "planned_at",
                "last_digest_at",
            ],
            select(
                _READERS.c.subscriber_id,
                literal(cut),
                _CLASSES.c.group_id,
                stamp,
                case((sent_now, stamp)),
            )
            .join(_CLASSES, _CLASSES.c.class_key == _READERS.c.class_key)
            .where(_READERS.c.marked.is_(False)),
        )
    )


async def _count_held_back(
    session: AsyncSession,
    settings: Settings,
    report: SelectionReport,
    now: datetime,
    frequency: str,
    only_subscriber_id: int | None,
) -> None:
    """The release and reader counts of a report that planning itself does not see."""
    oldest_allowed = now - settings.digest.max_age
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
    if frequency != "all":
        report.other_schedules = (
            await session.scalar(readers.where(Subscriber.frequency != frequency)) or 0
        )
        readers = readers.where(Subscriber.frequency == frequency)
    report.readers = await session.scalar(readers) or 0
    report.pending = (
        await session.scalar(
            select(func.count()).where(Subscriber.status == SubscriberStatus.PENDING)
        )
        or 0
    )


async def queued_to(session: AsyncSession, release: Release) -> int:
    """How many messages a release (or a copy merged into it) was queued in, test
    sends included: the sum over the content groups that carry it. Groups are
    a handful per send, so this reads thousands of small rows a year, not one per
    reader."""
    copies = set(
        await session.scalars(select(Release.id).where(Release.merged_into_id == release.id))
    )
    copies.add(release.id)
    rows = await session.execute(
        select(ContentGroup.release_ids, ContentGroup.recipients).where(ContentGroup.recipients > 0)
    )
    return sum(recipients for ids, recipients in rows if copies.intersection(ids))


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


async def explain_digest(
    database: Database,
    settings: Settings,
    frequency: str = "all",
    now: datetime | None = None,
    *,
    subscriber_email: str | None = None,
) -> SelectionReport:
    """Who a send of ``frequency`` (or to one subscriber) would reach now and why
    not more: the planner's own decision, read in a read session, so nothing is
    written and no write lock is held. Dry runs, confirm pages and empty previews
    show this."""
    if frequency not in FREQUENCIES:
        raise PlanningError(f"unknown digest frequency {frequency!r}")
    async with database.session() as session:
        subscriber = (
            await _confirmed_subscriber(session, subscriber_email) if subscriber_email else None
        )
        report = SelectionReport(frequency=frequency, max_age=settings.digest.max_age)
        await _read_plan(
            session,
            settings,
            frequency,
            now or utcnow(),
            subscriber.id if subscriber else None,
            report,
        )
    return report


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

    It runs the planner's own decision (read only: nothing is written, nothing is
    marked as sent) and the sending code's :class:`MessageComposer`, so the preview
    is exactly what would be sent.
    """
    now = now or utcnow()
    async with database.session() as session:
        report = SelectionReport(frequency="all", max_age=settings.digest.max_age)
        subscriber: Subscriber | None = None
        if subscriber_email is not None:
            subscriber = await _confirmed_subscriber(session, subscriber_email)
            plan = await _read_plan(session, settings, "all", now, subscriber.id, report)
            release_ids = [i for c in plan.classes for i in plan.decisions[c.number].picked]
            recipient = subscriber.email
        else:
            release_ids = await recent_release_ids(session, settings.digest.max_items, now)
            recipient = f"reader@{settings.sender.domain}"
        if not release_ids:
            return None
        if subscriber is None:
            # The sample shows the newest releases; say whom a real send would reach.
            await _read_plan(session, settings, "all", now, None, report)
        composer = await MessageComposer.load(
            session,
            settings,
            release_ids,
            subscriber_ids=[subscriber.id] if subscriber else [],
        )
        if settings.archive.public:
            # The send's web version gets its address when the send is made.
            composer.web_url = f"{settings.site.base_url}/digests/preview"
        message = composer.compose(
            0,
            subscriber.id if subscriber else None,
            recipient,
            subscriber.name if subscriber else None,
            release_ids,
            subscriber.link_key if subscriber else None,
        )
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    html_part = parsed.get_body(("html",))
    return DigestPreview(
        message=message,
        recipient=recipient,
        subject=str(parsed["Subject"]),
        release_count=len(release_ids),
        # The wire format's CRLF line ends, as a local file would have them.
        html=html_part.get_content().replace("\r\n", "\n") if html_part is not None else "",
        selection=report,
    )
