"""Starting and controlling a send: start now, schedule, start what is due, pause,
resume and cancel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import audit
from mailer.config import Settings
from mailer.datewindow import DateOutOfRange, check_send_time
from mailer.db import Database, execute_past_moved_rows
from mailer.digest import SelectionReport, explain_digest, plan_digest
from mailer.models import (
    Audience,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestKind,
    DigestStatus,
    utcnow,
)

log = logging.getLogger(__name__)


class SendError(Exception):
    pass


class NoSuchSend(SendError):
    pass


class SendTimeRefused(SendError):
    """A time to start a send that is past, has no timezone or lies more than a year
    ahead. ``reason`` leaves the field unnamed: each shell names it as its user
    typed it ("Send time" in the admin, "scheduled_for" in the API)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the send time: {reason}")
        self.reason = reason

    def labelled(self, field: str) -> str:
        return f"{field}: {self.reason}"


@dataclass(frozen=True)
class Requester:
    """Who asked for a change to a send, for its audit entry: "user:alice",
    "token:ci", "cli"; ``via`` names the door when it is not the actor's own."""

    actor: str
    via: str | None = None

    async def record(
        self, session: AsyncSession, action: str, digest: Digest, **details: Any
    ) -> None:
        if self.via is not None:
            details["via"] = self.via
        await audit.record_in(session, self.actor, action, "digest", digest.id, details)


def audience(raw: str | Audience) -> Audience:
    """An audience from a name; SendError naming the choices for anything else."""
    try:
        return Audience(raw)
    except ValueError:
        choices = ", ".join(a.value for a in Audience)
        raise SendError(f"unknown audience {raw!r}; choose one of {choices}") from None


# --- starting and controlling a send ----------------------------------------------


async def start_digest(
    database: Database,
    settings: Settings,
    *,
    frequency: str | Audience = Audience.ALL,
    kind: DigestKind = DigestKind.MANUAL,
    created_by: str = "cli",
    test_address: str | None = None,
    now: datetime | None = None,
    report: SelectionReport | None = None,
    requester: Requester | None = None,
) -> Digest:
    """Create a send and its outbox rows in one transaction. A send with no
    recipients (nothing new for anyone) is created already done. ``report`` is
    filled in with who the send reaches and why not more. With a ``requester`` the
    audit entry ("digest.send", or "digest.test") is part of the transaction."""
    now = now or utcnow()
    async with database.transaction() as session:
        digest = Digest(
            kind=kind,
            frequency=audience(frequency),
            status=DigestStatus.SENDING,
            created_by=created_by,
            created_at=now,
            started_at=now,
            test_address=test_address,
        )
        session.add(digest)
        await session.flush()
        count = await plan_digest(session, settings, digest, now=now, report=report)
        digest.recipient_count = count
        if count == 0:
            digest.status = DigestStatus.DONE
            digest.finished_at = now
        if requester is not None and kind is DigestKind.TEST:
            await requester.record(session, "digest.test", digest, to=test_address)
        elif requester is not None:
            await requester.record(
                session, "digest.send", digest, frequency=digest.frequency, recipients=count
            )
    return digest


@dataclass(frozen=True)
class DigestTest:
    """A test send, and why it sent nothing when it did not: the planner's own
    reasons, with numbers (empty when the test went out)."""

    digest: Digest
    nothing_sent_because: list[str]

    @property
    def sent(self) -> bool:
        return self.digest.recipient_count > 0


async def send_test_digest(
    database: Database,
    settings: Settings,
    address: str,
    *,
    requester: Requester,
    now: datetime | None = None,
) -> DigestTest:
    """A test of the next digest to ``address`` (a "digest.test" audit entry). With
    no release to test with, the result says why, as a send to everyone would."""
    now = now or utcnow()
    digest = await start_digest(
        database,
        settings,
        kind=DigestKind.TEST,
        created_by=requester.actor,
        test_address=address,
        now=now,
        requester=requester,
    )
    if digest.recipient_count > 0:
        return DigestTest(digest, [])
    report = await explain_digest(database, settings, now=now)
    return DigestTest(digest, report.reasons())


async def count_recipients(
    database: Database,
    settings: Settings,
    frequency: str | Audience = Audience.ALL,
    *,
    now: datetime | None = None,
) -> int:
    """What a send would address now, without writing anything (``--dry-run``):
    the planner's decision made in a read session."""
    return (await explain_digest(database, settings, audience(frequency), now)).recipients


async def schedule_digest(
    database: Database,
    *,
    scheduled_for: datetime | None,
    frequency: str | Audience = Audience.ALL,
    created_by: str = "cli",
    now: datetime | None = None,
    requester: Requester | None = None,
) -> Digest:
    """A manual send that :func:`start_due_digests` starts at ``scheduled_for``
    (None: only :func:`start_queued_digest` starts it). Until then it is "queued"
    and can be cancelled or started at once. A time in the past, without a
    timezone or more than a year ahead raises :class:`SendTimeRefused`."""
    chosen = audience(frequency)
    now = now or utcnow()
    if scheduled_for is not None:
        try:
            check_send_time(scheduled_for, now)
        except DateOutOfRange as exc:
            raise SendTimeRefused(exc.reason) from None
    async with database.transaction() as session:
        digest = Digest(
            kind=DigestKind.MANUAL,
            frequency=chosen,
            status=DigestStatus.QUEUED,
            created_by=created_by,
            created_at=now,
            scheduled_for=scheduled_for,
        )
        session.add(digest)
        await session.flush()
        if requester is not None:
            await requester.record(
                session,
                "digest.schedule",
                digest,
                frequency=chosen,
                scheduled_for=scheduled_for.isoformat() if scheduled_for else None,
            )
    return digest


async def start_queued_digest(
    database: Database,
    settings: Settings,
    digest_id: int,
    *,
    now: datetime | None = None,
    report: SelectionReport | None = None,
    requester: Requester | None = None,
) -> Digest:
    """Plan a queued send now: its time came, or an operator (``requester``, who
    gets a "digest.start" audit entry) chose to send it at once."""
    now = now or utcnow()
    async with database.transaction() as session:
        digest = await session.get(Digest, digest_id, with_for_update=True)
        if digest is None:
            raise NoSuchSend(f"no digest with id {digest_id}")
        if digest.status is not DigestStatus.QUEUED:
            raise SendError(f"digest {digest_id} is {digest.status.value}, not queued")
        digest.status = DigestStatus.SENDING
        digest.started_at = now
        count = await plan_digest(session, settings, digest, now=now, report=report)
        digest.recipient_count = count
        if count == 0:
            digest.status = DigestStatus.DONE
            digest.finished_at = now
        if requester is not None:
            await requester.record(session, "digest.start", digest, recipients=count)
    return digest


async def start_due_digests(
    database: Database, settings: Settings, now: datetime | None = None
) -> list[int]:
    """Start every queued send whose scheduled time has come; returns their ids."""
    now = now or utcnow()
    async with database.session() as session:
        due = list(
            await session.scalars(
                select(Digest.id)
                .where(
                    Digest.status == DigestStatus.QUEUED,
                    Digest.scheduled_for.is_not(None),
                    Digest.scheduled_for <= now,
                )
                .order_by(Digest.scheduled_for, Digest.id)
            )
        )
    started = []
    for digest_id in due:
        try:
            await start_queued_digest(database, settings, digest_id, now=now)
        except SendError:
            continue  # cancelled or started by someone else in the meantime
        started.append(digest_id)
    return started


async def set_digest_state(
    database: Database, digest_id: int, action: str, *, requester: Requester | None = None
) -> Digest:
    """pause, resume or cancel a send. Cancelling marks every unsent row cancelled.
    With a ``requester`` the "digest.<action>" audit entry is part of the change."""
    allowed = {
        "pause": ({DigestStatus.SENDING}, DigestStatus.PAUSED),
        "resume": ({DigestStatus.PAUSED}, DigestStatus.SENDING),
        "cancel": (
            {DigestStatus.SENDING, DigestStatus.PAUSED, DigestStatus.QUEUED},
            DigestStatus.CANCELLED,
        ),
    }
    if action not in allowed:
        raise SendError(f"unknown action {action!r}")
    sources, target = allowed[action]
    async with database.transaction() as session:
        digest = await session.get(Digest, digest_id)
        if digest is None:
            raise NoSuchSend(f"no digest with id {digest_id}")
        if digest.status not in sources:
            raise SendError(f"digest {digest_id} is {digest.status.value}; cannot {action} it")
        digest.status = target
        if action == "resume":
            digest.pause_reason = None
        if action == "pause":
            digest.pause_reason = "paused by an operator"
        if action == "cancel":
            digest.finished_at = utcnow()
            # Rows on the wire right now finish; everything else is withdrawn.
            await execute_past_moved_rows(
                session,
                update(Delivery)
                .where(
                    Delivery.digest_id == digest_id,
                    Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.DEFERRED]),
                )
                .values(status=DeliveryStatus.CANCELLED, last_error="cancelled"),
            )
        if requester is not None:
            await requester.record(session, f"digest.{action}", digest)
    return digest
