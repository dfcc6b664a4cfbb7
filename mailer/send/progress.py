"""How far a send has got: per-send progress, the outbox backlog, and finishing sends
whose last delivery is done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    utcnow,
)
from mailer.send.control import SendError

log = logging.getLogger(__name__)

OPEN_STATES = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)


@dataclass
class DigestProgress:
    digest_id: int
    status: str
    recipients: int
    counts: dict[str, int]
    started_at: datetime | None
    finished_at: datetime | None
    pause_reason: str | None
    bounced: int = 0

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("sent", "failed", "cancelled"))


async def digest_progress(session: AsyncSession, digest_id: int) -> DigestProgress:
    digest = await session.get(Digest, digest_id, populate_existing=True)
    if digest is None:
        raise SendError(f"no digest with id {digest_id}")
    rows = await session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    )
    counts = {status.value: n for status, n in rows.all()}
    bounced = await session.scalar(
        select(func.count()).where(Delivery.digest_id == digest_id, Delivery.bounced)
    )
    return DigestProgress(
        digest.id,
        digest.status.value,
        digest.recipient_count,
        counts,
        digest.started_at,
        digest.finished_at,
        digest.pause_reason,
        bounced or 0,
    )


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
        select(Digest.status, Delivery.status, func.count(), func.min(Delivery.next_attempt_at))
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(
            Digest.status.in_([DigestStatus.SENDING, DigestStatus.PAUSED]),
            Delivery.status.in_(list(OPEN_STATES)),
        )
        .group_by(Digest.status, Delivery.status)
    )
    if digest_id is not None:
        query = query.where(Delivery.digest_id == digest_id)
    backlog = Backlog()
    for digest_status, status, count, next_attempt in (await session.execute(query)).all():
        if digest_status is DigestStatus.PAUSED:
            backlog.paused += count
        elif status is DeliveryStatus.PENDING:
            backlog.pending += count
        elif status is DeliveryStatus.SENDING:
            backlog.sending += count
        else:
            backlog.deferred += count
            if next_attempt is not None and next_attempt.tzinfo is None:
                next_attempt = next_attempt.replace(tzinfo=UTC)  # SQLite keeps no zone
            backlog.next_retry_at = next_attempt
    return backlog


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
