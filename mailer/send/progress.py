"""How far a send has got: per-send progress, the outbox backlog, and finishing sends
whose last delivery is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.db import Database
from mailer.engagement import unsubscribes_per_send
from mailer.models import (
    Audience,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestKind,
    DigestStatus,
    utcnow,
)
from mailer.retention import send_counts, unsent_counts
from mailer.send.control import NoSuchSend

log = logging.getLogger(__name__)

# How far back the send rate looks.
RATE_WINDOW = timedelta(seconds=60)
OPEN_STATES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)


@dataclass(frozen=True)
class DigestProgress:
    """How far a send has got: the one answer the CLI, the admin pages, the
    dashboard and the API show."""

    id: int
    kind: DigestKind
    audience: Audience
    status: str
    recipients: int
    # Deliveries by status (DeliveryStatus values).
    counts: dict[str, int]
    created_at: datetime
    created_by: str | None
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    pause_reason: str | None
    test_address: str | None
    bounced: int = 0
    # Unsubscribes with this send's link, or after it as the reader's last message
    # (mailer.engagement.unsubscribes_per_send: one count everywhere).
    unsubscribes: int = 0

    @property
    def sent(self) -> int:
        return self.counts.get("sent", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    @property
    def deferred(self) -> int:
        return self.counts.get("deferred", 0)

    @property
    def cancelled(self) -> int:
        return self.counts.get("cancelled", 0)

    @property
    def pending(self) -> int:
        """Not yet tried, or on the wire now."""
        return self.counts.get("pending", 0) + self.counts.get("sending", 0)

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.cancelled

    def as_json(self) -> dict[str, Any]:
        """What the API's digest status, the admin's live progress and `mailer digest
        status --json` show."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "frequency": self.audience.value,
            "status": self.status,
            "scheduled_for": _iso(self.scheduled_for),
            "recipients": self.recipients,
            "sent": self.sent,
            "failed": self.failed,
            "deferred": self.deferred,
            "pending": self.pending,
            "cancelled": self.cancelled,
            "bounced": self.bounced,
            "done": self.done,
            "pause_reason": self.pause_reason,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def sends_progress(session: AsyncSession, digests: Sequence[Digest]) -> list[DigestProgress]:
    """The progress of each of ``digests``: the one query behind every progress view."""
    counts = await send_counts(session, digests)
    bounced = {digest_id: mine.pop("bounced", 0) for digest_id, mine in counts.items()}
    unsubscribed = await unsubscribes_per_send(session, [d.id for d in digests]) if digests else {}
    return [
        DigestProgress(
            id=d.id,
            kind=d.kind,
            audience=d.frequency,
            status=d.status.value,
            recipients=d.recipient_count,
            counts=counts[d.id],
            created_at=d.created_at,
            created_by=d.created_by,
            scheduled_for=d.scheduled_for,
            started_at=d.started_at,
            finished_at=d.finished_at,
            pause_reason=d.pause_reason,
            test_address=d.test_address,
            bounced=bounced.get(d.id, 0),
            unsubscribes=unsubscribed.get(d.id, 0),
        )
        for d in digests
    ]


async def digest_progress(session: AsyncSession, digest_id: int) -> DigestProgress:
    """One send's progress; SendError if there is no such send."""
    digest = await session.get(Digest, digest_id, populate_existing=True)
    if digest is None:
        raise NoSuchSend(f"no digest with id {digest_id}")
    return (await sends_progress(session, [digest]))[0]


async def recent_sends(database: Database, limit: int = 30) -> list[DigestProgress]:
    """The newest sends first, with their progress."""
    async with database.session() as session:
        digests = await session.scalars(
            select(Digest).order_by(Digest.created_at.desc(), Digest.id.desc()).limit(limit)
        )
        return await sends_progress(session, list(digests.all()))


async def send_progress(database: Database, digest_id: int) -> DigestProgress:
    async with database.session() as session:
        return await digest_progress(session, digest_id)


async def send_rate(database: Database, digest_id: int, now: datetime) -> float:
    """Messages per minute over the last RATE_WINDOW."""
    async with database.session() as session:
        sent = await session.scalar(
            select(func.count()).where(
                Delivery.digest_id == digest_id,
                Delivery.status == DeliveryStatus.SENT,
                Delivery.sent_at >= now - RATE_WINDOW,
            )
        )
    return round((sent or 0) * 60 / RATE_WINDOW.total_seconds(), 1)


async def failure_reasons(
    database: Database, digest_id: int, limit: int = 10
) -> list[tuple[str, int]]:
    """The commonest errors of a send's failed and deferred messages, with counts."""
    async with database.session() as session:
        rows = await session.execute(
            select(Delivery.last_error, func.count())
            .where(
                Delivery.digest_id == digest_id,
                Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.DEFERRED]),
                Delivery.last_error.is_not(None),
            )
            .group_by(Delivery.last_error)
            .order_by(func.count().desc())
            .limit(limit)
        )
        return [(str(error), count) for error, count in rows]


@dataclass
class Backlog:
    """What is left of running (and paused) sends: the answer to "is it done?"."""

    pending: int = 0
    sending: int = 0
    deferred: int = 0
    # The earliest time a deferred message is due again.
    next_retry_at: datetime | None = None
    # Unsent messages of paused sends: they wait for an operator, not a worker.
    paused: int = 0

    @property
    def open(self) -> int:
        return self.pending + self.sending + self.deferred

    def describe(self, now: datetime | None = None) -> str:
        now = now or utcnow()
        if not self.open:
            left = "Nothing left to send"
        else:
            parts = [f"{n} {name}" for name, n in self._counts() if n]
            left = "Left: " + ", ".join(parts)
            if self.next_retry_at is not None:
                wait = max(0, round((self.next_retry_at - now).total_seconds()))
                left += f"; next retry due {self.next_retry_at:%Y-%m-%d %H:%M:%S} UTC (in {wait} s)"
        if self.paused:
            left += f"; {self.paused} more in paused sends (`mailer digest resume`)"
        return left + "."

    def _counts(self) -> list[tuple[str, int]]:
        return [("pending", self.pending), ("in flight", self.sending), ("deferred", self.deferred)]


async def outbox_backlog(session: AsyncSession, digest_id: int | None = None) -> Backlog:
    query = (
        select(Delivery.digest_id, Digest.status, func.min(Delivery.next_attempt_at))
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(
            Digest.status.in_([DigestStatus.SENDING, DigestStatus.PAUSED]),
            Delivery.status == DeliveryStatus.DEFERRED,
        )
        .group_by(Delivery.digest_id, Digest.status)
    )
    sends = select(Digest.id, Digest.status).where(
        Digest.status.in_([DigestStatus.SENDING, DigestStatus.PAUSED])
    )
    if digest_id is not None:
        sends = sends.where(Digest.id == digest_id)
    running = {digest_id: status for digest_id, status in await session.execute(sends)}
    backlog = Backlog()
    if not running:
        return backlog
    for send, counts in (await unsent_counts(session, list(running))).items():
        open_rows = sum(counts[status.value] for status in OPEN_STATES)
        if running[send] is DigestStatus.PAUSED:
            backlog.paused += open_rows
            continue
        backlog.pending += counts["pending"]
        backlog.sending += counts["sending"]
        backlog.deferred += counts["deferred"]
    for send, status, next_attempt in (await session.execute(query)).all():
        if status is DigestStatus.PAUSED or send not in running or next_attempt is None:
            continue
        if next_attempt.tzinfo is None:
            next_attempt = next_attempt.replace(tzinfo=UTC)  # SQLite keeps no zone
        if backlog.next_retry_at is None or next_attempt < backlog.next_retry_at:
            backlog.next_retry_at = next_attempt
    return backlog


async def backlog_left(database: Database, digest_id: int | None = None) -> Backlog:
    """What is left to send (of one send, or of all)."""
    async with database.session() as session:
        return await outbox_backlog(session, digest_id)


async def finish_completed(session: AsyncSession, now: datetime | None = None) -> None:
    """Mark sends done once no row of theirs can still be sent."""
    open_rows = exists().where(
        Delivery.digest_id == Digest.id, Delivery.status.in_(list(OPEN_STATES))
    )
    await session.execute(
        update(Digest)
        .where(Digest.status == DigestStatus.SENDING, ~open_rows)
        .values(status=DigestStatus.DONE, finished_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
