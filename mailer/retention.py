"""Retention: per-recipient rows of finished sends do not stay forever.

A send to a million readers writes a million deliveries; kept forever that is
most of the database within a year. ``retention.deliveries`` (default 90 days)
says how long after a send finished its deliveries stay. Pruning first stores the
send's counts by status (and how many bounced) on the digest
(``Digest.delivery_counts``), so progress pages and statistics still show them,
then deletes the rows. Nothing else depends on them: what readers have been sent
is kept by their watermarks and the send's content groups (mailer.digest), which
stay. Bounces keep their record without the link to the delivery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.models import Delivery, Digest, DigestStatus, utcnow

log = logging.getLogger(__name__)

# Sends pruned per transaction: each may hold a million rows.
_SENDS_PER_TRANSACTION = 1


@dataclass
class Pruned:
    sends: int = 0
    deliveries: int = 0

    def describe(self) -> str:
        if not self.sends:
            return "No finished send is older than retention.deliveries."
        return f"Pruned {self.deliveries} deliveries of {self.sends} finished sends."


async def delivery_counts(session: AsyncSession, digest_id: int) -> dict[str, int]:
    """A send's deliveries by status, plus ``bounced``: what pruning keeps."""
    rows = await session.execute(
        select(Delivery.status, func.count())
        .where(Delivery.digest_id == digest_id)
        .group_by(Delivery.status)
    )
    counts = {status.value: n for status, n in rows.all()}
    counts["bounced"] = (
        await session.scalar(
            select(func.count()).where(Delivery.digest_id == digest_id, Delivery.bounced)
        )
        or 0
    )
    return counts


async def prune_deliveries(
    database: Database, settings: Settings, now: datetime | None = None
) -> Pruned:
    """Delete the deliveries of sends finished longer ago than retention.deliveries,
    keeping their counts on the digest. One send per transaction, so a large send
    does not hold the database for long and a crash loses nothing."""
    pruned = Pruned()
    keep = settings.retention.deliveries
    if keep is None:
        return pruned
    cutoff = (now or utcnow()) - keep
    finished = func.coalesce(Digest.finished_at, Digest.created_at)
    while True:
        async with database.transaction() as session:
            digest_ids = list(
                await session.scalars(
                    select(Digest.id)
                    .where(
                        Digest.status.in_([DigestStatus.DONE, DigestStatus.CANCELLED]),
                        Digest.delivery_counts.is_(None),
                        finished < cutoff,
                    )
                    .order_by(Digest.id)
                    .limit(_SENDS_PER_TRANSACTION)
                )
            )
            if not digest_ids:
                break
            for digest_id in digest_ids:
                counts = await delivery_counts(session, digest_id)
                await session.execute(
                    update(Digest).where(Digest.id == digest_id).values(delivery_counts=counts)
                )
                result = await session.execute(
                    delete(Delivery)
                    .where(Delivery.digest_id == digest_id)
                    .execution_options(synchronize_session=False)
                )
                pruned.sends += 1
                pruned.deliveries += result.rowcount or 0
    if pruned.sends:
        log.info("%s", pruned.describe())
    return pruned
