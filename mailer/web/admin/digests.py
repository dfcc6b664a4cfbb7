"""Digest pages: preview any subscriber's digest, send a test, send now (after a
confirmation that shows the recipient count), schedule, follow a send live, pause,
resume, cancel. The admin only starts sends; the delivery worker that ``mailer
serve`` runs delivers them."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mailer import audit
from mailer.accounts import Role
from mailer.datewindow import DateOutOfRange, check_send_time
from mailer.digest import (
    DigestPreview,
    PreviewError,
    SelectionReport,
    explain_digest,
    preview_digest,
)
from mailer.message import MessageError
from mailer.models import Delivery, DeliveryStatus, Digest, Subscriber
from mailer.send import (
    SendError,
    digest_progress,
    schedule_digest,
    set_digest_state,
    start_digest,
    start_queued_digest,
)
from mailer.subscribers import InvalidAddress, normalize_address
from mailer.templating import count_of
from mailer.web.admin.auth import requires
from mailer.web.admin.common import (
    form,
    identity,
    page,
    path_id,
    query_text,
    redirect,
    text,
)
from mailer.web.app import web_state

FREQUENCY_CHOICES = {
    "all": "Every confirmed subscriber, whatever their frequency",
    "immediately": "Subscribers who chose “as soon as published”",
    "daily": "Daily subscribers",
    "weekly": "Weekly subscribers",
}
DIGEST_ACTIONS = ("pause", "resume", "cancel", "start")
# How far back the send rate looks.
RATE_WINDOW = timedelta(seconds=60)
# The sandboxed preview may show the email's own inline styles and remote images,
# and nothing else: no script, no forms, no navigation, no same-origin access.
PREVIEW_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "frame-ancestors 'self'"
)


@dataclass(frozen=True)
class DigestStats:
    id: int
    kind: str
    frequency: str
    status: str
    created_at: datetime
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    created_by: str | None
    recipients: int
    sent: int
    failed: int
    deferred: int
    open: int
    cancelled: int
    bounced: int
    unsubscribes: int
    test_address: str | None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.cancelled


async def digest_stats(session: AsyncSession, digests: list[Digest]) -> list[DigestStats]:
    """Counts per send. Unsubscribes: recipients who unsubscribed after it reached them."""
    ids = [d.id for d in digests]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    bounced: dict[int, int] = {}
    unsubscribed: dict[int, int] = {}
    if ids:
        rows = await session.execute(
            select(Delivery.digest_id, Delivery.status, func.count())
            .where(Delivery.digest_id.in_(ids))
            .group_by(Delivery.digest_id, Delivery.status)
        )
        for digest_id, status, number in rows:
            counts[digest_id][status.value] = number
        rows = await session.execute(
            select(Delivery.digest_id, func.count())
            .where(Delivery.digest_id.in_(ids), Delivery.bounced)
            .group_by(Delivery.digest_id)
        )
        bounced = dict(rows.all())
        rows = await session.execute(
            select(Delivery.digest_id, func.count())
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(
                Delivery.digest_id.in_(ids),
                Delivery.status == DeliveryStatus.SENT,
                Subscriber.unsubscribed_at.is_not(None),
                Subscriber.unsubscribed_at >= Delivery.sent_at,
            )
            .group_by(Delivery.digest_id)
        )
        unsubscribed = dict(rows.all())
    stats = []
    for d in digests:
        c = counts[d.id]
        stats.append(
            DigestStats(
                id=d.id,
                kind=d.kind,
                frequency=d.frequency,
                status=d.status.value,
                created_at=d.created_at,
                scheduled_for=d.scheduled_for,
                started_at=d.started_at,
                finished_at=d.finished_at,
                created_by=d.created_by,
                recipients=d.recipient_count,
                sent=c.get("sent", 0),
                failed=c.get("failed", 0),
                deferred=c.get("deferred", 0),
                open=c.get("pending", 0) + c.get("sending", 0),
                cancelled=c.get("cancelled", 0),
                bounced=bounced.get(d.id, 0),
                unsubscribes=unsubscribed.get(d.id, 0),
                test_address=d.test_address,
            )
        )
    return stats


async def recent_digests(session: AsyncSession, limit: int = 30) -> list[DigestStats]:
    digests = list(
        (
            await session.scalars(
                select(Digest)
                .where(Digest.kind != "preview")
                .order_by(Digest.created_at.desc(), Digest.id.desc())
                .limit(limit)
            )
        ).all()
    )
    return await digest_stats(session, digests)


async def send_rate(session: AsyncSession, digest_id: int, now: datetime) -> float:
    """Messages per minute over the last RATE_WINDOW."""
    sent = await session.scalar(
        select(func.count()).where(
            and_(
                Delivery.digest_id == digest_id,
                Delivery.status == DeliveryStatus.SENT,
                Delivery.sent_at >= now - RATE_WINDOW,
            )
        )
    )
    return round((sent or 0) * 60 / RATE_WINDOW.total_seconds(), 1)


async def progress_data(request: Request, digest_id: int) -> dict[str, Any]:
    state = web_state(request)
    async with state.db.session() as session:
        try:
            progress = await digest_progress(session, digest_id)
        except SendError:
            raise HTTPException(404, "There is no such send.") from None
        rate = await send_rate(session, digest_id, state.now())
    counts = progress.counts
    return {
        "id": progress.digest_id,
        "status": progress.status,
        "recipients": progress.recipients,
        "sent": counts.get("sent", 0),
        "failed": counts.get("failed", 0),
        "deferred": counts.get("deferred", 0),
        "pending": counts.get("pending", 0) + counts.get("sending", 0),
        "cancelled": counts.get("cancelled", 0),
        "bounced": progress.bounced,
        "done": progress.done,
        "rate_per_minute": rate,
        "pause_reason": progress.pause_reason or "",
        "started_at": progress.started_at.isoformat() if progress.started_at else None,
        "finished_at": progress.finished_at.isoformat() if progress.finished_at else None,
    }


def _frequency(raw: str) -> str:
    if raw not in FREQUENCY_CHOICES:
        raise HTTPException(422, "Choose who the digest goes to.")
    return raw


# --- pages ------------------------------------------------------------------------------


@requires(Role.EDITOR)
async def digests_index(request: Request) -> Response:
    state = web_state(request)
    async with state.db.session() as session:
        digests = await recent_digests(session)
    return page(
        request,
        "digests.html",
        {"digests": digests, "frequencies": FREQUENCY_CHOICES},
    )


def _preview_subscriber(request: Request) -> str | None:
    wanted = query_text(request, "subscriber", 320) or None
    if wanted is not None and not identity(request).may(Role.ADMIN):
        # Choosing a subscriber shows their address and interests: personal data.
        raise HTTPException(403, "Only an admin can preview a particular subscriber's digest.")
    return wanted


async def _preview(request: Request, subscriber: str | None) -> DigestPreview | None:
    state = web_state(request)
    try:
        return await preview_digest(state.db, state.settings, subscriber, now=state.now())
    except (PreviewError, MessageError) as exc:
        raise HTTPException(422, str(exc)) from None


@requires(Role.EDITOR)
async def preview_page(request: Request) -> Response:
    subscriber = _preview_subscriber(request)
    error = None
    preview = None
    try:
        preview = await _preview(request, subscriber)
    except HTTPException as exc:
        if exc.status_code != 422:
            raise
        error = exc.detail
    plain = ""
    selection = preview.selection if preview is not None else None
    if preview is None and error is None:
        selection = await explain_digest(
            web_state(request).db,
            web_state(request).settings,
            now=web_state(request).now(),
            subscriber_email=subscriber,
        )
    if preview is not None:
        parsed = email.message_from_bytes(preview.message.data, policy=email.policy.default)
        text_part = parsed.get_body(("plain",))  # type: ignore[attr-defined]
        plain = text_part.get_content() if text_part is not None else ""
    return page(
        request,
        "digest_preview.html",
        {
            "preview": preview,
            "plain": plain,
            "subscriber": subscriber or "",
            "error": error,
            "selection": selection,
            "reasons": selection.reasons() if selection else [],
            "size": len(preview.message.data) if preview else 0,
        },
        status_code=422 if error else 200,
    )


@requires(Role.EDITOR)
async def preview_html(request: Request) -> Response:
    """The HTML part alone, for the sandboxed iframe on the preview page."""
    preview = await _preview(request, _preview_subscriber(request))
    body = preview.html if preview is not None else "<p>No digest would be sent now.</p>"
    return HTMLResponse(
        body,
        headers={
            "content-security-policy": PREVIEW_CSP,
            "x-frame-options": "SAMEORIGIN",
            "cache-control": "no-store",
        },
    )


@requires(Role.EDITOR)
async def send_test(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    try:
        address = normalize_address(
            text(data, "address", limit=400),
            allow_special_use=state.settings.signup.allow_special_use_domains,
        )
    except InvalidAddress as exc:
        return redirect(request, "/admin/digests", f"Test send: {exc}", kind="error")
    who = identity(request)
    digest = await start_digest(
        state.db,
        state.settings,
        kind="test",
        created_by=who.actor,
        test_address=address,
        now=state.now(),
    )
    await audit.record(state.db, who.actor, "digest.test", "digest", digest.id, {"to": address})
    if digest.recipient_count == 0:
        report = await explain_digest(state.db, state.settings, now=state.now())
        return redirect(
            request,
            "/admin/digests",
            "Nothing to test with. " + " ".join(report.reasons()),
            kind="warn",
        )
    return redirect(
        request,
        f"/admin/digests/{digest.id}",
        f"Test digest queued for {address}: its subject starts with “[Test]” and a banner "
        "in both parts says it is a test.",
    )


@requires(Role.EDITOR)
async def confirm_send(request: Request) -> Response:
    """The step before a real send: who it goes to and how many they are."""
    state = web_state(request)
    frequency = _frequency(query_text(request, "frequency") or "all")
    report = await explain_digest(state.db, state.settings, frequency, now=state.now())
    return page(
        request,
        "digest_confirm.html",
        {
            "frequency": frequency,
            "label": FREQUENCY_CHOICES[frequency],
            "count": report.recipients,
            "reasons": report.reasons(),
        },
    )


@requires(Role.EDITOR)
async def send_now(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    frequency = _frequency(text(data, "frequency"))
    who = identity(request)
    report = SelectionReport(frequency=frequency, max_age=state.settings.digest.max_age)
    digest = await start_digest(
        state.db,
        state.settings,
        frequency=frequency,
        kind="manual",
        created_by=who.actor,
        now=state.now(),
        report=report,
    )
    await audit.record(
        state.db,
        who.actor,
        "digest.send",
        "digest",
        digest.id,
        {"frequency": frequency, "recipients": digest.recipient_count},
    )
    if digest.recipient_count == 0:
        return redirect(
            request,
            f"/admin/digests/{digest.id}",
            "Nothing was sent. " + " ".join(report.reasons()),
            kind="warn",
        )
    return redirect(
        request,
        f"/admin/digests/{digest.id}",
        " ".join(
            [f"Sending to {count_of(digest.recipient_count, 'recipient')}.", *report.reasons()]
        ),
    )


def parse_local_time(raw: str, timezone: str) -> datetime:
    """A ``datetime-local`` form value, read in the site's timezone."""
    try:
        naive = datetime.fromisoformat(raw)
    except ValueError:
        raise HTTPException(422, "Give the date and time as YYYY-MM-DD HH:MM.") from None
    return naive if naive.tzinfo is not None else naive.replace(tzinfo=ZoneInfo(timezone))


@requires(Role.EDITOR)
async def schedule(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    frequency = _frequency(text(data, "frequency"))
    at = parse_local_time(text(data, "at", limit=40), state.settings.digest.timezone)
    try:
        check_send_time(at, state.now(), field="Send time")
    except DateOutOfRange as exc:
        return redirect(request, "/admin/digests", str(exc), kind="error")
    who = identity(request)
    digest = await schedule_digest(
        state.db, scheduled_for=at, frequency=frequency, created_by=who.actor, now=state.now()
    )
    await audit.record(
        state.db,
        who.actor,
        "digest.schedule",
        "digest",
        digest.id,
        {"frequency": frequency, "scheduled_for": at.isoformat()},
    )
    return redirect(request, f"/admin/digests/{digest.id}", "Send scheduled.")


@requires(Role.EDITOR)
async def digest_page(request: Request) -> Response:
    state = web_state(request)
    digest_id = path_id(request)
    async with state.db.session() as session:
        digest = await session.get(Digest, digest_id)
        if digest is None:
            raise HTTPException(404, "There is no such send.")
        stats = (await digest_stats(session, [digest]))[0]
        failures = (
            await session.execute(
                select(Delivery.last_error, func.count())
                .where(
                    Delivery.digest_id == digest_id,
                    Delivery.status.in_([DeliveryStatus.FAILED, DeliveryStatus.DEFERRED]),
                    Delivery.last_error.is_not(None),
                )
                .group_by(Delivery.last_error)
                .order_by(func.count().desc())
                .limit(10)
            )
        ).all()
    return page(
        request,
        "digest.html",
        {
            "digest": stats,
            "progress": await progress_data(request, digest_id),
            "failures": failures,
            "label": FREQUENCY_CHOICES.get(stats.frequency, stats.frequency),
        },
    )


@requires(Role.EDITOR)
async def digest_progress_json(request: Request) -> Response:
    return JSONResponse(
        await progress_data(request, path_id(request)), headers={"cache-control": "no-store"}
    )


@requires(Role.EDITOR)
async def digest_action(request: Request) -> Response:
    state = web_state(request)
    digest_id = path_id(request)
    action = request.path_params["action"]
    if action not in DIGEST_ACTIONS:
        raise HTTPException(404, "There is no such action.")
    who = identity(request)
    try:
        if action == "start":
            digest = await start_queued_digest(state.db, state.settings, digest_id, now=state.now())
        else:
            digest = await set_digest_state(state.db, digest_id, action)
    except SendError as exc:
        return redirect(request, f"/admin/digests/{digest_id}", str(exc), kind="error")
    await audit.record(state.db, who.actor, f"digest.{action}", "digest", digest_id)
    past = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "start": "started"}
    notice = f"Send {past[action]}."
    if action == "start":
        notice = f"Send started for {count_of(digest.recipient_count, 'recipient')}."
    return redirect(request, f"/admin/digests/{digest_id}", notice)


def routes() -> list[Route]:
    return [
        Route("/digests", digests_index, methods=["GET"]),
        Route("/digests/preview", preview_page, methods=["GET"]),
        Route("/digests/preview/html", preview_html, methods=["GET"]),
        Route("/digests/test", send_test, methods=["POST"]),
        Route("/digests/send", confirm_send, methods=["GET"]),
        Route("/digests/send", send_now, methods=["POST"]),
        Route("/digests/schedule", schedule, methods=["POST"]),
        Route("/digests/{id:int}", digest_page, methods=["GET"]),
        Route("/digests/{id:int}/progress", digest_progress_json, methods=["GET"]),
        Route(
            "/digests/{id:int}/{action:str}",
            digest_action,
            methods=["POST"],
        ),
    ]
