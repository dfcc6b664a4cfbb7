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
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.models import (
    Bounce,
    Delivery,
    DeliveryClaim,
    DeliveryStatus,
    Digest,
    DigestStatus,
    utcnow,
)

log = logging.getLogger(__name__)

# Sends pruned per transaction: each may hold a million rows.
_SENDS_PER_TRANSACTION = 1
# Ids bound in one IN list (SQLite allows 32,766 parameters a statement).
_IDS_PER_STATEMENT = 10_000


@dataclass
class Pruned:
    sends: int = 0
    deliveries: int = 0

    def describe(self) -> str:
        if not self.sends:
            return "No finished send is older than retention.deliveries."
        return f"Pruned {self.deliveries} deliveries of {self.sends} finished sends."


async def send_counts(
    session: AsyncSession, digests: Sequence[Digest]
) -> dict[int, dict[str, int]]:
    """Each send's deliveries by status, plus ``bounced`` and ``sending`` (claimed by a
    worker now, counted out of ``pending``): the one count behind progress pages,
    engagement reports and metrics.

    Sent rows, nearly all of a finished send, are not counted one by one: a send's
    rows are its recipients, so "sent" is the recipients less the unsent rows, which
    a small partial index holds (models.Delivery). A pruned send's counts were kept
    on the digest.
    """
    counts: dict[int, dict[str, int]] = {}
    live = []
    for digest in digests:
        if digest.delivery_counts is not None:
            counts[digest.id] = {"bounced": 0, **digest.delivery_counts}
        else:
            counts[digest.id] = {"bounced": 0}
            live.append(digest)
    ids = [d.id for d in live]
    if not ids:
        return counts
    for digest_id, mine in (await unsent_counts(session, ids)).items():
        counts[digest_id].update(mine)
    bounced = await session.execute(
        select(Delivery.digest_id, func.count())
        .where(Delivery.digest_id.in_(ids), Delivery.bounced)
        .group_by(Delivery.digest_id)
    )
    for digest_id, number in bounced:
        counts[digest_id]["bounced"] = number
    for digest in live:
        mine = counts[digest.id]
        unsent_rows = sum(n for status, n in mine.items() if status != "bounced")
        mine["sent"] = max(0, digest.recipient_count - unsent_rows)
    return {
        digest_id: {status: n for status, n in mine.items() if n or status == "bounced"}
        for digest_id, mine in counts.items()
    }


async def unsent_counts(
    session: AsyncSession, digest_ids: Sequence[int] | None = None
) -> dict[int, Counter[str]]:
    """Each send's unsent rows by status (of ``digest_ids``, or of every send), with
    the rows a worker holds now counted as ``sending`` instead: a claimed row keeps
    its status until its result is written."""
    query = (
        select(Delivery.digest_id, Delivery.status, func.count())
        .where(Delivery.status != DeliveryStatus.SENT)
        .group_by(Delivery.digest_id, Delivery.status)
    )
    if digest_ids is not None:
        query = query.where(Delivery.digest_id.in_(digest_ids))
    counts: defaultdict[int, Counter[str]] = defaultdict(Counter)
    for digest_id, status, number in await session.execute(query):
        counts[digest_id][status.value] = number
    for (digest_id, status), number in (await in_flight(session)).items():
        if digest_id in counts:
            counts[digest_id][status.value] -= number
            counts[digest_id]["sending"] += number
    return dict(counts)


async def claimed_ids(session: AsyncSession) -> set[int]:
    """The deliveries workers hold now: every claim's ids, read in one statement.

    The set is kept out of SQL on purpose. As a ``NOT IN (subquery)`` in the claim
    query, PostgreSQL planned it from estimates of ``delivery_claims``, a table of a
    few rows that churn all day: once the estimate outgrew its hash memory the
    subquery was searched row by row for every pending row read, and at a million
    readers one claim took a second (bench/RESULTS.md). As one bound parameter per id
    it cost the worker more to render than the rest of a claim. Callers that need
    ``limit`` rows that are not held read ``limit + len(held)`` and drop the held
    ones (at most ``len(held)`` of them are among what they read).
    """
    held: set[int] = set()
    for ids in await session.scalars(select(DeliveryClaim.delivery_ids)):
        held.update(ids)
    return held


async def in_flight(session: AsyncSession) -> dict[tuple[int, DeliveryStatus], int]:
    """Claimed deliveries not yet recorded, by send and status."""
    held = sorted(await claimed_ids(session))
    counts: Counter[tuple[int, DeliveryStatus]] = Counter()
    # Chunks keep each statement's parameter list within SQLite's limit.
    for start in range(0, len(held), _IDS_PER_STATEMENT):
        rows = await session.execute(
            select(Delivery.digest_id, Delivery.status, func.count())
            .where(
                Delivery.id.in_(held[start : start + _IDS_PER_STATEMENT]),
                Delivery.status != DeliveryStatus.SENT,
            )
            .group_by(Delivery.digest_id, Delivery.status)
        )
        for digest_id, status, number in rows:
            counts[digest_id, status] += number
    return dict(counts)


async def delivery_counts(session: AsyncSession, digest: Digest) -> dict[str, int]:
    """A send's deliveries by status, plus ``bounced``: what pruning keeps."""
    counts = (await send_counts(session, [digest]))[digest.id]
    counts.pop("sending", None)
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
                digest = await session.get(Digest, digest_id)
                assert digest is not None
                counts = await delivery_counts(session, digest)
                await session.execute(
                    update(Digest).where(Digest.id == digest_id).values(delivery_counts=counts)
                )
                # What a foreign key did before deliveries were partitioned (0015).
                await session.execute(
                    update(Bounce)
                    .where(
                        Bounce.delivery_id.in_(
                            select(Delivery.id).where(Delivery.digest_id == digest_id)
                        )
                    )
                    .values(delivery_id=None)
                    .execution_options(synchronize_session=False)
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
