"""The delivery worker, and recovery of what a dead worker left "sending"."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.destinations import DomainQueues, DomainSlot, DomainSlots, recipient_domain
from mailer.heap import release_free_heap
from mailer.journal import Journal, orphan_journals
from mailer.message import MessageComposer, load_topic_choices
from mailer.models import (
    Bounce,
    ContentGroup,
    Delivery,
    DeliveryClaim,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
    Suppression,
    UTCDateTime,
    utcnow,
)
from mailer.retention import claimed_ids
from mailer.send.progress import finish_completed, outbox_backlog
from mailer.smtpstatus import policy_reason
from mailer.suppression import email_hash, suppress
from mailer.transport import Connection, Outcome, RateLimiter, SendResult, smtp_target

log = logging.getLogger(__name__)


# Claims are taken one at a time under this PostgreSQL advisory lock.
_CLAIM_LOCK_KEY = 0x6D61696C6572 + 1
# A claim older than this is presumed abandoned by a worker on another machine.
CLAIM_LEASE = timedelta(minutes=15)
RECORD_EVERY_SECONDS = 0.5
RECORD_EVERY_COUNT = 500
# While the server is unreachable the worker waits this long, doubling, before retrying.
OUTAGE_BACKOFF = (1.0, 60.0)
# A relay that refuses this many recipients in a row by policy (5.7.x) refuses them all.
POLICY_REFUSALS_BEFORE_PAUSE = 5
# Sessions dropped during this many different messages in a row mean the server,
# not a message, is in trouble: the worker then holds off as in an outage.
DROPS_FOR_OUTAGE = 3
# A session with nothing to carry keeps its domain slot this long (more of the
# domain may come with the next claim), then closes, as Postfix's connection cache.
SESSION_IDLE_HOLD = 1.0
# How often a message waiting for a domain slot held elsewhere looks again; after
# DOMAIN_HANDBACK seconds without one, claims of that domain go back to the queue
# for the process holding the slots, and this one skips the domain for as long.
SLOT_POLL = 0.05
DOMAIN_HANDBACK = 10.0
# How often a worker gives the C heap's free pages back (see mailer/heap.py).
HEAP_TRIM_EVERY = 5.0
# --- recovery ---------------------------------------------------------------------


def journal_dir(settings: Settings) -> Path:
    """Where this machine's workers keep their journals (see journal.py)."""
    return settings.data_path / "journal"


async def recover(database: Database, settings: Settings, now: datetime | None = None) -> int:
    """Apply dead workers' journals, then return their unsent claims to the queue.
    Returns how many rows were put back."""
    now = now or utcnow()
    released = 0
    for orphan in orphan_journals(journal_dir(settings)):
        try:
            entries = orphan.entries()
            async with database.transaction() as session:
                if entries:
                    await session.execute(
                        update(Delivery),
                        [
                            {
                                "id": e.delivery_id,
                                "status": DeliveryStatus.SENT,
                                "sent_at": e.sent_at,
                            }
                            for e in entries
                        ],
                    )
                claims = (
                    await session.execute(
                        delete(DeliveryClaim)
                        .where(DeliveryClaim.worker_id == orphan.worker_id)
                        .returning(DeliveryClaim.delivery_ids)
                    )
                ).scalars()
                held = {int(i) for ids in claims for i in ids}
                released += len(held - {e.delivery_id for e in entries})
                await finish_completed(session, now)
        except BaseException:
            orphan.release()
            raise
        orphan.discard()
        log.info(
            "recovered journal of %s: %d sent, %d requeued",
            orphan.worker_id,
            len(entries),
            released,
        )
    async with database.transaction() as session:
        # A claim outlives its lease only when its worker died on another machine
        # (this machine's dead workers were handled above, by their journals).
        stale = (
            await session.execute(
                delete(DeliveryClaim)
                .where(DeliveryClaim.claimed_at < now - CLAIM_LEASE)
                .returning(DeliveryClaim.delivery_ids)
            )
        ).scalars()
        released += sum(len(ids) for ids in stale)
    return released


async def _add_topic_choices(session: AsyncSession, batch: list[Claimed]) -> None:
    """The readers' topic choices, read with their claim: per claimed batch, not
    once per send, as a map of every reader's choices would grow the worker with
    the number of readers."""
    readers = [c.subscriber_id for c in batch if c.subscriber_id is not None]
    if not readers:
        return
    choices = await load_topic_choices(session, readers)
    for claimed in batch:
        if claimed.subscriber_id in choices:
            claimed.topics = tuple(choices[claimed.subscriber_id])


# --- the worker -------------------------------------------------------------------


@dataclass
class Claimed:
    id: int
    digest_id: int
    subscriber_id: int | None
    email: str
    name: str | None
    release_ids: list[int]
    content_key: str
    attempts: int
    # When its send queued it: the retry window counts from here.
    queued_at: datetime
    link_key: str | None = None
    # The reader's topics when they chose several (their digest is grouped by them).
    topics: tuple[int, ...] = ()


@dataclass
class Recorded:
    claimed: Claimed
    result: SendResult
    message_id: str | None = None
    at: datetime = field(default_factory=utcnow)
    # False when the worker stopped or the send was pausing before this one was tried.
    attempted: bool = True
    # Set while the server is unreachable: try again then, without counting an attempt.
    retry_at: datetime | None = None


@dataclass
class WorkerStats:
    sent: int = 0
    deferred: int = 0
    failed: int = 0

    def count(self, outcome: Outcome) -> None:
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Delivers due outbox rows until stopped (or, with until_empty, until none are left)."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        worker_id: str | None = None,
        digest_id: int | None = None,
        rate_limit: float | None = None,
        domain_share: int | None = None,
        poll_interval: float = 2.0,
    ):
        """rate_limit and domain_share: this process's part of smtp.rate_limit and
        of each domain's smtp.per_domain_connections slots, when several processes
        share them (``digest send --workers N`` gives each 1/N); the slots bound
        all processes of the machine together either way."""
        self.database = database
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.digest_id = digest_id
        smtp = settings.smtp
        self.connections = smtp.connections
        per_second = smtp.rate_limit if rate_limit is None else rate_limit
        self.rate = RateLimiter(per_second)
        # Small enough that several workers share a send, large enough that claiming
        # is a small part of the work; with a rate limit, at most ~30 s of work.
        self.batch_size = min(500, 50 * self.connections)
        if per_second:
            self.batch_size = int(min(self.batch_size, max(10, per_second * 30)))
        self.poll_interval = poll_interval
        self.stats = WorkerStats()
        self._slots = DomainSlots(settings.data_path / "slots", smtp.per_domain_connections)
        self._domain_share = min(domain_share or smtp.per_domain_connections, self.connections)
        self._queues: DomainQueues[Claimed] = DomainQueues()
        # Domains this process's sessions hold a slot for, and domains whose slots
        # other processes hold, skipped by claims until the given loop time.
        self._held: Counter[str] = Counter()
        self._skipped_domains: dict[str, float] = {}
        self._dropped_in_a_row: set[int] = set()
        self._results: list[Recorded] = []
        # This worker's claims (id -> deliveries not yet recorded) and the reverse.
        self._claims: dict[int, set[int]] = {}
        self._claim_of: dict[int, int] = {}
        self._journal: Journal | None = None
        self._composers: dict[int, Any] = {}
        self._composer_locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._failure_streak: dict[int, int] = defaultdict(int)
        self._pausing: set[int] = set()
        # 5.7.x refusals in a row per digest, and why a digest is being paused.
        self._policy_streak: dict[int, int] = defaultdict(int)
        self._pause_reasons: dict[int, str] = {}
        self._outage_until = 0.0
        self._outage_delay = OUTAGE_BACKOFF[0]
        self._outage_reason = ""
        # The last time the server could not be reached, for the caller's message.
        self.last_connection_error: str | None = None
        self._stopping = asyncio.Event()
        self._in_flight = 0
        self._done_by: float | None = None

    def stop(self) -> None:
        """Finish what is on the wire, record it, and return from run()."""
        self._stopping.set()

    async def run(self, *, until_empty: bool = False, until_done: bool = False) -> WorkerStats:
        """Deliver until stopped. until_empty: return once nothing is pending or
        due now (deferred rows wait for a later run). until_done: return once the
        sends are finished (no row open, whoever holds it), waiting out retry
        schedules, but no longer than the retry window (retry_for plus one
        retry_max_interval), after which every row has been sent or failed."""
        smtp = self.settings.smtp
        window = (smtp.retry_for + smtp.retry_max_interval).total_seconds()
        self._done_by = asyncio.get_running_loop().time() + window if until_done else None
        await recover(self.database, self.settings)
        self._journal = Journal(journal_dir(self.settings), self.worker_id)
        try:
            async with smtp_target(self.settings) as target:
                connections = [Connection(target) for _ in range(self.connections)]
                senders = [asyncio.create_task(self._sender(c)) for c in connections]
                recorder = asyncio.create_task(self._recorder())
                try:
                    await self._feed(until_empty or until_done)
                finally:
                    self._queues.close()
                    await asyncio.gather(*senders, return_exceptions=True)
                    self._stopping.set()
                    await recorder
                    await self._record_batch()
                    await self._release_unsent()
                    await asyncio.gather(*(c.close() for c in connections))
        finally:
            # Results that never reached the database keep the journal on disk; the
            # next worker on this machine applies it (see recover()).
            self._journal.close(remove=not self._results)
        return self.stats

    async def _feed(self, until_empty: bool) -> None:
        while not self._stopping.is_set():
            wait = self._outage_until - asyncio.get_running_loop().time()
            if wait > 0:
                # Claim nothing while the server is down; the senders hand back
                # what is queued as deferred to the end of the outage.
                if len(self._queues) or self._in_flight:
                    await self._sleep(0.05)
                    continue
                await self._record_batch()
                if until_empty and await self._drained():
                    return
                await self._sleep(min(wait, self.poll_interval))
                continue
            await self._hand_back_starved_domains()
            # Keep at most about one batch queued ahead of the senders.
            if len(self._queues) > self.batch_size // 2:
                await self._sleep(0.05)
                continue
            batch = await self.claim(self.batch_size)
            if batch:
                for item in batch:
                    self._queues.put(recipient_domain(item.email), item)
                continue
            if len(self._queues) or self._in_flight:
                await self._sleep(0.05)
                continue
            await self._record_batch()
            if until_empty and await self._drained():
                return
            await self._sleep(self.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _drained(self) -> bool:
        if self._done_by is None:
            return not await self._work_due()
        if asyncio.get_running_loop().time() >= self._done_by:
            return True
        async with self.database.session() as session:
            return not (await outbox_backlog(session, self.digest_id)).open

    async def _work_due(self) -> bool:
        """True while a row of a running send is pending or due for a retry now, and
        not claimed by another worker.
        Rows deferred to later do not count: ``--until-empty`` leaves them to the
        next worker run (or to `mailer serve`), as the retry schedule says."""
        now = utcnow()
        async with self.database.session() as session:
            query = (
                select(Delivery.id)
                .join(Digest, Digest.id == Delivery.digest_id)
                .where(
                    Digest.status == DigestStatus.SENDING,
                    or_(
                        Delivery.status == DeliveryStatus.PENDING,
                        and_(
                            Delivery.status == DeliveryStatus.DEFERRED,
                            or_(
                                Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now
                            ),
                        ),
                    ),
                )
            )
            if self.digest_id is not None:
                query = query.where(Delivery.digest_id == self.digest_id)
            # Rows another worker holds are its work, not due here (see claimed_ids
            # for why they are left out here rather than in SQL).
            held = await claimed_ids(session)
            due = (await session.scalars(query.limit(1 + len(held)))).all()
            return any(delivery_id not in held for delivery_id in due)

    async def claim(self, limit: int) -> list[Claimed]:
        """Take up to ``limit`` due deliveries: one row in delivery_claims names them
        all, so the deliveries themselves are not rewritten until their result is
        known."""
        now = utcnow()
        ids: list[int] = []
        try:
            return await self._claim(limit, now, ids)
        except BaseException:
            self._forget_claim_of(ids)
            raise

    async def _claim(self, limit: int, now: datetime, ids: list[int]) -> list[Claimed]:
        async with self.database.transaction() as session:
            ids += await self._claim_ids(session, limit, now)
            if not ids:
                return []
            # Plain rows, not Delivery objects: nothing here changes them through the
            # session, and loading entities (identity map, instrumented state) cost
            # more than the rest of the claim.
            rows = (
                await session.execute(
                    select(
                        Delivery.id,
                        Delivery.digest_id,
                        Delivery.subscriber_id,
                        func.coalesce(Delivery.test_address, Subscriber.email).label("email"),
                        Subscriber.name,
                        ContentGroup.release_ids,
                        ContentGroup.content_key,
                        Delivery.attempts,
                        type_coerce(
                            func.coalesce(Digest.started_at, Digest.created_at), UTCDateTime()
                        ).label("queued_at"),
                        Subscriber.link_key,
                        Subscriber.status,
                        Digest.kind,
                    )
                    .join(Digest, Digest.id == Delivery.digest_id)
                    .join(ContentGroup, ContentGroup.id == Delivery.content_group_id)
                    .outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
                    # Claimed rows are never sent ones: on PostgreSQL this reads only
                    # the unsent partition (migration 0015).
                    .where(Delivery.id.in_(ids), Delivery.status != DeliveryStatus.SENT)
                    .order_by(Delivery.id)
                )
            ).all()
            hashes = {row.id: email_hash(self.settings, row.email) for row in rows if row.email}
            suppressed = set(
                (
                    await session.scalars(
                        select(Suppression.email_hash).where(
                            Suppression.email_hash.in_(list(hashes.values()))
                        )
                    )
                ).all()
            )
            claimed, withdrawn = [], []
            for row in rows:
                # A test send has no subscriber; any other row without one was erased.
                gone = row.kind != "test" and row.status != SubscriberStatus.CONFIRMED
                if gone or not row.email or hashes[row.id] in suppressed:
                    withdrawn.append(row.id)
                    continue
                claimed.append(
                    Claimed(
                        row.id,
                        row.digest_id,
                        row.subscriber_id,
                        row.email,
                        row.name,
                        list(row.release_ids),
                        row.content_key,
                        row.attempts,
                        row.queued_at,
                        row.link_key,
                    )
                )
            await _add_topic_choices(session, claimed)
            if withdrawn:
                await session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(withdrawn))
                    .values(
                        status=DeliveryStatus.CANCELLED,
                        last_error="recipient unsubscribed, erased or suppressed before sending",
                    )
                    .execution_options(synchronize_session=False)
                )
                await self._unclaim(session, withdrawn)
                # They may have been the last open rows of their send: no result will
                # be written for them, so the send is finished here or never.
                await finish_completed(session, now)
        return claimed

    async def _claim_ids(self, session: AsyncSession, limit: int, now: datetime) -> list[int]:
        """Claim due rows of running sends: retries that are due, then rows never
        tried, send by send, in the order they were planned."""
        if not self.database.is_sqlite:
            # One claim at a time: each then sees every claim committed before it,
            # so no delivery is in two claims (SQLite's write transactions already
            # run one at a time).
            await session.execute(select(func.pg_advisory_xact_lock(_CLAIM_LOCK_KEY)))
        sends = select(Digest.id).where(Digest.status == DigestStatus.SENDING)
        if self.digest_id is not None:
            sends = sends.where(Digest.id == self.digest_id)
        held = await claimed_ids(session)
        skipped = self._domains_to_skip()
        taken: list[int] = []
        for digest_id in (await session.scalars(sends.order_by(Digest.id))).all():
            for due in (
                and_(
                    Delivery.status == DeliveryStatus.DEFERRED,
                    or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
                ),
                Delivery.status == DeliveryStatus.PENDING,
            ):
                if len(taken) >= limit:
                    break
                # No ORDER BY: the unsent index keeps a send's rows of one status
                # in the order they were written, and sorting a million pending
                # rows for each claim would cost more than the claim.
                wanted = limit - len(taken)
                # Held rows are read and dropped here: at most len(held) of what is
                # read, so `wanted` others are among it when there are that many.
                query = (
                    select(Delivery.id)
                    .where(Delivery.digest_id == digest_id, due)
                    .limit(wanted + len(held))
                )
                if skipped:
                    address = func.lower(func.coalesce(Delivery.test_address, Subscriber.email))
                    query = query.outerjoin(Subscriber, Subscriber.id == Delivery.subscriber_id)
                    for domain in skipped:
                        query = query.where(~address.endswith(f"@{domain}", autoescape=True))
                found = (await session.scalars(query)).all()
                taken += [i for i in found if i not in held][:wanted]
        if taken:
            taken.sort()
            claim = DeliveryClaim(worker_id=self.worker_id, claimed_at=now, delivery_ids=taken)
            session.add(claim)
            await session.flush()
            self._claims[claim.id] = set(taken)
            for delivery_id in taken:
                self._claim_of[delivery_id] = claim.id
        return taken

    def _forget_claim_of(self, delivery_ids: Iterable[int]) -> None:
        """A claim transaction that rolled back holds nothing."""
        for delivery_id in delivery_ids:
            claim_id = self._claim_of.pop(delivery_id, None)
            if claim_id is not None:
                self._claims.pop(claim_id, None)

    async def _unclaim(self, session: AsyncSession, delivery_ids: Iterable[int]) -> None:
        """Give up this worker's hold on ``delivery_ids`` (their results are written,
        or they go back to the queue): a claim with nothing left is deleted; one
        still holding others keeps only those."""
        touched: set[int] = set()
        for delivery_id in delivery_ids:
            claim_id = self._claim_of.pop(delivery_id, None)
            if claim_id is not None:
                self._claims[claim_id].discard(delivery_id)
                touched.add(claim_id)
        finished = [c for c in touched if not self._claims[c]]
        if finished:
            await session.execute(delete(DeliveryClaim).where(DeliveryClaim.id.in_(finished)))
            for claim_id in finished:
                del self._claims[claim_id]

    async def _composer(self, claimed: Claimed) -> Any:
        """The digest's composer, loaded once even when many senders ask at once."""
        composer = self._composers.get(claimed.digest_id)
        if composer is not None and composer.has_releases(claimed.release_ids):
            return composer
        async with self._composer_locks[claimed.digest_id]:
            composer = self._composers.get(claimed.digest_id)
            async with self.database.session() as session:
                if composer is None:
                    # Every distinct content of the send: its content groups.
                    rows = await session.scalars(
                        select(ContentGroup.release_ids).where(
                            ContentGroup.digest_id == claimed.digest_id
                        )
                    )
                    ids = {int(i) for row in rows.all() for i in row} | set(claimed.release_ids)
                    composer = await MessageComposer.load(
                        session, self.settings, sorted(ids), digest_id=claimed.digest_id
                    )
                    self._composers[claimed.digest_id] = composer
                elif not composer.has_releases(claimed.release_ids):
                    await composer.add_releases(session, claimed.release_ids)
        return composer

    async def _sender(self, connection: Connection) -> None:
        """One SMTP session. It carries one domain's messages at a time, holding
        that domain's slot while open for it; when the domain runs dry it moves on
        to another domain with waiting mail (keeping the session), and when there
        is nothing it may carry it closes after SESSION_IDLE_HOLD."""
        loop = asyncio.get_running_loop()
        slot: DomainSlot | None = None
        idle_since: float | None = None
        try:
            while not self._stopping.is_set():
                item = self._queues.pop(slot.domain) if slot is not None else None
                if item is not None:
                    idle_since = None
                    self._in_flight += 1
                    try:
                        await self._deliver(connection, item)
                    finally:
                        self._in_flight -= 1
                    continue
                other = self._slot_for_waiting_mail(but_not=slot.domain if slot else None)
                if other is not None:
                    self._let_go(slot)
                    slot, idle_since = other, None
                    continue
                if self._queues.closed and not len(self._queues):
                    return
                now = loop.time()
                idle_since = idle_since or now
                if slot is not None and now - idle_since >= SESSION_IDLE_HOLD:
                    await connection.close()
                    self._let_go(slot)
                    slot = None
                await self._queues.wait(SLOT_POLL if len(self._queues) else SESSION_IDLE_HOLD)
        finally:
            await connection.close()
            self._let_go(slot)

    def _slot_for_waiting_mail(self, but_not: str | None) -> DomainSlot | None:
        for domain in self._queues.domains():
            if domain == but_not or self._held[domain] >= self._domain_share:
                continue
            slot = self._slots.try_acquire(domain)
            if slot is not None:
                self._held[domain] += 1
                self._queues.served(domain)
                return slot
        return None

    def _let_go(self, slot: DomainSlot | None) -> None:
        if slot is None:
            return
        self._held[slot.domain] -= 1
        if not self._held[slot.domain]:
            del self._held[slot.domain]
        slot.release()

    def _domains_to_skip(self) -> list[str]:
        now = asyncio.get_running_loop().time()
        for domain, until in list(self._skipped_domains.items()):
            if until <= now:
                del self._skipped_domains[domain]
        return list(self._skipped_domains)

    async def _hand_back_starved_domains(self) -> None:
        """Claims of a domain whose every slot another process holds would only
        age here (and outlive the claim lease on a long send): give them back to
        the queue, where the process with the slots picks them up."""
        starved = []
        for domain in self._queues.starved(DOMAIN_HANDBACK, busy=self._held):
            probe = self._slots.try_acquire(domain)
            if probe is None:
                starved.append(domain)
            else:  # a slot is free now: a sender of ours takes it shortly
                probe.release()
                self._queues.served(domain)
        if not starved:
            return
        until = asyncio.get_running_loop().time() + DOMAIN_HANDBACK
        items = []
        for domain in starved:
            items.extend(self._queues.take_all(domain))
            self._skipped_domains[domain] = until
        await self._return_to_queue(items)
        log.info(
            "handed back %d messages for %s: other processes hold every connection slot",
            len(items),
            ", ".join(starved),
        )

    def _start_outage(self, reason: str) -> None:
        """The server, not a message, failed: hold everything for a while
        (doubling each time) instead of burning through the queue."""
        loop_time = asyncio.get_running_loop().time()
        self._outage_until = max(self._outage_until, loop_time + self._outage_delay)
        self._outage_reason = reason
        self.last_connection_error = reason
        log.warning("SMTP server unreachable (%s); retrying in %.0fs", reason, self._outage_delay)
        self._outage_delay = min(self._outage_delay * 2, OUTAGE_BACKOFF[1])

    async def _deliver(self, connection: Connection, item: Claimed) -> None:
        outage_left = self._outage_until - asyncio.get_running_loop().time()
        if outage_left > 0:
            reason = SendResult(Outcome.DEFERRED, None, self._outage_reason, connection_error=True)
            retry_at = utcnow() + timedelta(seconds=outage_left)
            self._results.append(Recorded(item, reason, attempted=False, retry_at=retry_at))
            return
        if self._stopping.is_set() or item.digest_id in self._pausing:
            # Not attempted: it goes back to the queue unchanged.
            not_tried = SendResult(Outcome.DEFERRED, None, "not attempted")
            self._results.append(Recorded(item, not_tried, attempted=False))
            return
        composer = await self._composer(item)
        message = composer.compose(
            delivery_id=item.id,
            subscriber_id=item.subscriber_id,
            email=item.email,
            name=item.name,
            release_ids=item.release_ids,
            link_key=item.link_key,
            topics=item.topics,
        )
        await self.rate.wait()
        result = await connection.send(
            message.envelope_from, message.recipients, message.data, wire=message.wire
        )
        now = utcnow()
        if result.connection_error:
            # No session could be had: nothing was tried, so no attempt is counted.
            self._start_outage(result.reason)
            retry_at = now + timedelta(
                seconds=self._outage_until - asyncio.get_running_loop().time()
            )
            self._results.append(
                Recorded(item, result, message.message_id, now, attempted=False, retry_at=retry_at)
            )
            self.stats.count(result.outcome)
            return
        if result.dropped:
            # This message's attempt counts and it backs off on its own; the session
            # reopens for the next one. Only drops across several messages in a row
            # look like a server in trouble.
            self._dropped_in_a_row.add(item.id)
            if len(self._dropped_in_a_row) >= DROPS_FOR_OUTAGE:
                self._dropped_in_a_row.clear()
                self._start_outage(result.reason)
        else:
            self._dropped_in_a_row.clear()
        if result.outcome is Outcome.SENT:
            assert self._journal is not None
            self._journal.record(item.id, message.message_id, now)
            self._outage_delay = OUTAGE_BACKOFF[0]
            self._failure_streak[item.digest_id] = 0
            self._policy_streak[item.digest_id] = 0
        elif result.outcome is Outcome.FAILED:
            self._failure_streak[item.digest_id] += 1
            self._note_policy_refusal(item.digest_id, result)
            if self._failure_streak[item.digest_id] >= self.settings.smtp.pause_after_failures:
                # Stop at once; the pause itself is written with the next batch.
                self._pausing.add(item.digest_id)
        self.stats.count(result.outcome)
        self._results.append(Recorded(item, result, message.message_id, now))

    def _note_policy_refusal(self, digest_id: int, result: SendResult) -> None:
        """Pause a send whose relay refuses recipient after recipient by policy (5.7.x):
        the cause is this sender (relaying, authentication), not the readers."""
        if not result.policy:
            self._policy_streak[digest_id] = 0
            return
        self._policy_streak[digest_id] += 1
        refused = self._policy_streak[digest_id]
        if refused >= min(POLICY_REFUSALS_BEFORE_PAUSE, self.settings.smtp.pause_after_failures):
            self._pause_reasons[digest_id] = (
                f"paused after {refused} recipients in a row were refused: "
                f"{policy_reason(result.code, result.message)}"
            )
            self._pausing.add(digest_id)

    async def _recorder(self) -> None:
        loop = asyncio.get_running_loop()
        trimmed = loop.time()
        while not self._stopping.is_set():
            await self._sleep(RECORD_EVERY_SECONDS)
            if loop.time() - trimmed >= HEAP_TRIM_EVERY:
                # Keeps a long send's RSS flat (see mailer/heap.py).
                release_free_heap()
                trimmed = loop.time()
            if not self._results:
                continue
            try:
                await self._record_batch()
            except Exception:
                # The database is unreachable: keep the results (and the journal)
                # and try again; sending goes on meanwhile.
                log.exception("recording delivery results failed; retrying")

    async def _record_batch(self) -> None:
        if not self._results:
            return
        batch, self._results = self._results, []
        try:
            await self._write_results(batch)
        except BaseException:
            self._results = batch + self._results
            raise
        # Every journaled acceptance is now either committed or still in _results
        # (journal write and append happen with no await between them).
        if not self._results and self._journal is not None:
            self._journal.clear()

    async def _write_results(self, batch: list[Recorded]) -> None:
        sent, other, bounces = [], [], []
        now = utcnow()
        retry_for = self.settings.smtp.retry_for
        for record in batch:
            item, result = record.claimed, record.result
            if result.outcome is Outcome.SENT:
                sent.append(
                    {
                        "id": item.id,
                        "status": DeliveryStatus.SENT,
                        "sent_at": record.at,
                        "attempts": item.attempts + 1,
                        "last_error": None,
                    }
                )
            elif record.retry_at is not None and now - item.queued_at >= retry_for:
                other.append(
                    {
                        "id": item.id,
                        "status": DeliveryStatus.FAILED,
                        "last_error": f"gave up: the server was unreachable past the retry "
                        f"window ({result.reason})"[:2000],
                    }
                )
            elif record.retry_at is not None:
                other.append(
                    {
                        "id": item.id,
                        "status": DeliveryStatus.DEFERRED,
                        "next_attempt_at": record.retry_at,
                        "last_error": result.reason[:2000],
                    }
                )
            elif not record.attempted:
                other.append({"id": item.id, "status": DeliveryStatus.PENDING})
            elif result.outcome is Outcome.DEFERRED:
                other.append(self._deferral(item, result, now))
            else:
                other.append(
                    {
                        "id": item.id,
                        "status": DeliveryStatus.FAILED,
                        "attempts": item.attempts + 1,
                        "last_error": result.reason[:2000],
                        "bounced": result.hard_bounce,
                    }
                )
                if result.hard_bounce:
                    bounces.append(record)
        async with self.database.transaction() as session:
            for rows in (sent, other):
                if rows:
                    await session.execute(update(Delivery), rows)
            await self._unclaim(session, [record.claimed.id for record in batch])
            for record in bounces:
                await suppress(
                    session,
                    self.settings,
                    record.claimed.email,
                    "hard-bounce",
                    record.result.reason[:500],
                )
                session.add(
                    Bounce(
                        delivery_id=record.claimed.id,
                        email_hash=email_hash(self.settings, record.claimed.email),
                        kind="hard",
                        status_code=str(record.result.code or ""),
                        diagnostic=record.result.reason[:2000],
                    )
                )
            await self._pause_failing_digests(session)
            await finish_completed(session, now)

    def _deferral(self, item: Claimed, result: SendResult, now: datetime) -> dict[str, Any]:
        smtp = self.settings.smtp
        attempts = item.attempts + 1
        if now - item.queued_at >= smtp.retry_for:
            return {
                "id": item.id,
                "status": DeliveryStatus.FAILED,
                "attempts": attempts,
                "last_error": f"gave up after {attempts} attempts: {result.reason}"[:2000],
            }
        base = smtp.retry_base.total_seconds()
        delay = min(base * 2 ** (attempts - 1), smtp.retry_max_interval.total_seconds())
        delay *= random.uniform(0.75, 1.25)  # jitter: retries must not arrive in waves
        return {
            "id": item.id,
            "status": DeliveryStatus.DEFERRED,
            "attempts": attempts,
            "next_attempt_at": now + timedelta(seconds=delay),
            "last_error": result.reason[:2000],
        }

    async def _pause_failing_digests(self, session: AsyncSession) -> None:
        for digest_id in list(self._pausing):
            streak = self._failure_streak[digest_id]
            self._failure_streak[digest_id] = 0
            self._policy_streak[digest_id] = 0
            self._pausing.discard(digest_id)
            reason = self._pause_reasons.pop(digest_id, None) or (
                f"paused after {streak} permanent failures in a row; check the SMTP logs"
            )
            await session.execute(
                update(Digest)
                .where(Digest.id == digest_id, Digest.status == DigestStatus.SENDING)
                .values(status=DigestStatus.PAUSED, pause_reason=reason)
            )
            log.error("digest %d %s", digest_id, reason)

    async def _release_unsent(self) -> None:
        """On a clean stop, give queued but unsent claims back to the queue."""
        await self._return_to_queue(self._queues.take_all())

    async def _return_to_queue(self, items: list[Claimed]) -> None:
        if not items:
            return
        returned = {c.id for c in items}
        async with self.database.transaction() as session:
            claims = {self._claim_of[i] for i in returned if i in self._claim_of}
            await self._unclaim(session, returned)
            # Claims still holding other deliveries name only those from now on.
            for claim_id in claims & set(self._claims):
                await session.execute(
                    update(DeliveryClaim)
                    .where(DeliveryClaim.id == claim_id)
                    .values(delivery_ids=sorted(self._claims[claim_id]))
                )
