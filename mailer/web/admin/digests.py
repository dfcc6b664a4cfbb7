"""Digest pages: preview any subscriber's digest, send a test, send now (after a
confirmation that shows the recipient count), schedule, follow a send live, pause,
resume, cancel. The admin only starts sends; the delivery worker that ``mailer
serve`` runs delivers them."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from mailer.accounts import Role
from mailer.digest import (
    DigestPreview,
    PreviewError,
    SelectionReport,
    explain_digest,
    preview_digest,
)
from mailer.message import MessageError
from mailer.models import Audience, DigestKind
from mailer.preview import preview_now
from mailer.send import (
    DigestProgress,
    Requester,
    SendError,
    SendTimeRefused,
    audience,
    failure_reasons,
    recent_sends,
    schedule_digest,
    send_progress,
    send_rate,
    send_test_digest,
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
from mailer.web.state import web_state

DIGEST_ACTIONS = ("pause", "resume", "cancel", "start")
# The sandboxed preview may show the email's own inline styles and remote images,
# and nothing else: no script, no forms, no navigation, no same-origin access.
PREVIEW_CSP = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src https: http: data:; "
    "frame-ancestors 'self'"
)
AUDIENCES = {a.value: a.description for a in Audience}


async def _progress(request: Request, digest_id: int) -> DigestProgress:
    try:
        return await send_progress(web_state(request).db, digest_id)
    except SendError:
        raise HTTPException(404, "There is no such send.") from None


async def progress_data(request: Request, progress: DigestProgress) -> dict[str, Any]:
    state = web_state(request)
    rate = await send_rate(state.db, progress.id, state.now())
    return {
        **progress.as_json(),
        "rate_per_minute": rate,
        "pause_reason": progress.pause_reason or "",
    }


def _audience(raw: str) -> Audience:
    try:
        return audience(raw)
    except SendError:
        raise HTTPException(422, "Choose who the digest goes to.") from None


# --- pages ------------------------------------------------------------------------------


@requires(Role.EDITOR)
async def digests_index(request: Request) -> Response:
    digests = await recent_sends(web_state(request).db)
    return page(request, "digests.html", {"digests": digests, "frequencies": AUDIENCES})


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
    state = web_state(request)
    subscriber = _preview_subscriber(request)
    try:
        result = await preview_now(state.db, state.settings, subscriber, now=state.now())
    except (PreviewError, MessageError) as exc:
        result, error = None, str(exc)
    else:
        error = None
    digest = result.digest if result is not None else None
    return page(
        request,
        "digest_preview.html",
        {
            "preview": digest,
            "plain": result.text if result is not None else "",
            "subscriber": subscriber or "",
            "error": error,
            "selection": result.selection if result is not None else None,
            "reasons": result.reasons() if result is not None else [],
            "size": len(digest.message.data) if digest is not None else 0,
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
    test = await send_test_digest(
        state.db, state.settings, address, requester=Requester(who.actor), now=state.now()
    )
    if not test.sent:
        return redirect(
            request,
            "/admin/digests",
            "Nothing to test with. " + " ".join(test.nothing_sent_because),
            kind="warn",
        )
    return redirect(
        request,
        f"/admin/digests/{test.digest.id}",
        f"Test digest queued for {address}: its subject starts with “[Test]” and a banner "
        "in both parts says it is a test.",
    )


@requires(Role.EDITOR)
async def confirm_send(request: Request) -> Response:
    """The step before a real send: who it goes to and how many they are."""
    state = web_state(request)
    frequency = _audience(query_text(request, "frequency") or Audience.ALL)
    report = await explain_digest(state.db, state.settings, frequency, now=state.now())
    return page(
        request,
        "digest_confirm.html",
        {
            "frequency": frequency.value,
            "label": frequency.description,
            "count": report.recipients,
            "reasons": report.reasons(),
        },
    )


@requires(Role.EDITOR)
async def send_now(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    frequency = _audience(text(data, "frequency"))
    who = identity(request)
    report = SelectionReport(frequency=frequency, max_age=state.settings.digest.max_age)
    digest = await start_digest(
        state.db,
        state.settings,
        frequency=frequency,
        kind=DigestKind.MANUAL,
        created_by=who.actor,
        now=state.now(),
        report=report,
        requester=Requester(who.actor),
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
    frequency = _audience(text(data, "frequency"))
    at = parse_local_time(text(data, "at", limit=40), state.settings.digest.timezone)
    who = identity(request)
    try:
        digest = await schedule_digest(
            state.db,
            scheduled_for=at,
            frequency=frequency,
            created_by=who.actor,
            now=state.now(),
            requester=Requester(who.actor),
        )
    except SendTimeRefused as exc:
        return redirect(request, "/admin/digests", exc.labelled("Send time"), kind="error")
    return redirect(request, f"/admin/digests/{digest.id}", "Send scheduled.")


@requires(Role.EDITOR)
async def digest_page(request: Request) -> Response:
    state = web_state(request)
    digest_id = path_id(request)
    stats = await _progress(request, digest_id)
    return page(
        request,
        "digest.html",
        {
            "digest": stats,
            "progress": await progress_data(request, stats),
            "failures": await failure_reasons(state.db, digest_id),
            "label": stats.audience.description,
        },
    )


@requires(Role.EDITOR)
async def digest_progress_json(request: Request) -> Response:
    return JSONResponse(
        await progress_data(request, await _progress(request, path_id(request))),
        headers={"cache-control": "no-store"},
    )


@requires(Role.EDITOR)
async def digest_action(request: Request) -> Response:
    state = web_state(request)
    digest_id = path_id(request)
    action = request.path_params["action"]
    if action not in DIGEST_ACTIONS:
        raise HTTPException(404, "There is no such action.")
    who = identity(request)
    requester = Requester(who.actor)
    try:
        if action == "start":
            digest = await start_queued_digest(
                state.db, state.settings, digest_id, now=state.now(), requester=requester
            )
        else:
            digest = await set_digest_state(state.db, digest_id, action, requester=requester)
    except SendError as exc:
        return redirect(request, f"/admin/digests/{digest_id}", str(exc), kind="error")
    past = {"pause": "paused", "resume": "resumed", "cancel": "cancelled", "start": "started"}
    notice = f"Send {past[action]}."
    if action == "start":
        notice = f"Send started for {count_of(digest.recipient_count, 'recipient')}."
    return redirect(request, f"/admin/digests/{digest_id}", notice)
