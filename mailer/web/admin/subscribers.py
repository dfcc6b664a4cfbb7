"""Subscriber pages (admins only: this is personal data): search, view with consent
history and deliveries, add, unsubscribe, erase, CSV import with a preview and a
per-line report before anything is written, CSV export."""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer import subscribers as store
from mailer.accounts import Role
from mailer.models import Frequency
from mailer.web.admin.auth import requires
from mailer.web.admin.common import (
    PAGE_SIZE,
    form,
    identity,
    page,
    path_id,
    query_int,
    query_text,
    redirect,
    text,
    texts,
    upload,
)
from mailer.web.state import web_state

SHOWN_ERRORS = 1000
# Ids are 32-bit INTEGER columns on PostgreSQL.
MAX_ID = 2**31


def _origin(request: Request) -> store.Origin:
    return store.Origin(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        actor=identity(request).actor,
    )


@requires(Role.ADMIN)
async def subscribers_index(request: Request) -> Response:
    state = web_state(request)
    search, status = query_text(request, "q"), query_text(request, "status")
    after = query_int(request, "after", 0, 0, MAX_ID) or None
    try:
        found = await store.search_subscribers(
            state.db,
            state.settings,
            search=search,
            status=status if status in store.SHOWN_STATUSES else None,
            after=after,
            limit=PAGE_SIZE,
        )
    except store.SubscriberError as exc:
        raise HTTPException(400, str(exc)) from None
    kept = {k: v for k, v in {"q": search, "status": status}.items() if v}
    return page(
        request,
        "subscribers.html",
        {
            "subscribers": found.items,
            "total": found.total,
            "first_link": f"{request.url.path}?{urlencode(kept)}" if after else None,
            "next_link": f"{request.url.path}?{urlencode({**kept, 'after': found.next_after})}"
            if found.next_after
            else None,
            "search": search,
            "status": status,
            "counts": await store.counts_by_status(state.db),
            "statuses": store.SHOWN_STATUSES,
        },
    )


@requires(Role.ADMIN)
async def subscriber_view(request: Request) -> Response:
    state = web_state(request)
    try:
        record = await store.subscriber_record(state.db, state.settings, path_id(request))
    except store.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    view = record.subscriber
    topics = {t.key: t.name for t in state.settings.topics}
    return page(
        request,
        "subscriber.html",
        {
            "subscriber": view,
            "consents": record.consents,
            "deliveries": record.deliveries,
            "suppressed": view.suppression is not None,
            "topic_names": [topics.get(slug, slug) for slug in view.topics],
        },
    )


def _add_page(
    request: Request, values: dict[str, Any], error: str | None = None, status: int = 200
) -> Response:
    state = web_state(request)
    return page(
        request,
        "subscriber_new.html",
        {
            "values": values,
            "error": error,
            "topics": [{"slug": t.key, "name": t.name} for t in state.settings.topics],
            "frequencies": [f.value for f in Frequency],
        },
        status_code=status,
    )


@requires(Role.ADMIN)
async def subscriber_new_form(request: Request) -> Response:
    return _add_page(request, {"frequency": Frequency.DAILY.value, "topics": []})


def added_notice(result: store.AddResult) -> str:
    """What the operator is told after an add: the outcome and what became of the
    confirmation mail (the same words as the CLI and the API)."""
    notice = f"{result.subscriber.email}: {result.outcome}."
    if result.mail is not None:
        notice += f" {result.mail.describe().capitalize()}."
    return notice


@requires(Role.ADMIN)
async def subscriber_new_submit(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    values = {
        "email": text(data, "email", limit=400),
        "name": text(data, "name", limit=400),
        "frequency": text(data, "frequency") or Frequency.DAILY.value,
        "topics": texts(data, "topics"),
        "confirmed": bool(text(data, "confirmed")),
        "resubscribe": bool(text(data, "resubscribe")),
    }
    try:
        result = await store.add(
            state.db,
            state.settings,
            values["email"],
            name=values["name"] or None,
            topics=values["topics"],
            frequency=values["frequency"],
            confirmed=values["confirmed"],
            resubscribe=values["resubscribe"],
            origin=_origin(request),
            now=state.now(),
        )
    except store.SubscriberError as exc:
        return _add_page(request, values, str(exc), 422)
    return redirect(request, f"/admin/subscribers/{result.subscriber.id}", added_notice(result))


@requires(Role.ADMIN)
async def subscriber_unsubscribe(request: Request) -> Response:
    state = web_state(request)
    subscriber_id = path_id(request)
    try:
        changed = await store.unsubscribe(
            state.db,
            state.settings,
            subscriber_id,
            origin=_origin(request),
            method="admin",
            now=state.now(),
        )
    except store.NotFound:
        raise HTTPException(404, "There is no such subscriber.") from None
    return redirect(
        request,
        f"/admin/subscribers/{subscriber_id}",
        "Unsubscribed; the address is on the suppression list."
        if changed
        else "Already unsubscribed.",
    )


@requires(Role.ADMIN)
async def subscriber_erase(request: Request) -> Response:
    state = web_state(request)
    subscriber_id = path_id(request)
    data = await form(request)
    if text(data, "confirm") != "erase":
        return redirect(
            request,
            f"/admin/subscribers/{subscriber_id}",
            "Type “erase” to confirm the erasure.",
            kind="error",
        )
    try:
        await store.erase(
            state.db, state.settings, subscriber_id, origin=_origin(request), now=state.now()
        )
    except store.NotFound:
        raise HTTPException(404, "There is no such subscriber.") from None
    return redirect(
        request,
        "/admin/subscribers",
        f"Subscriber {subscriber_id} erased; only a keyed hash of the address is kept.",
    )


@requires(Role.ADMIN)
async def subscribers_export(request: Request) -> Response:
    state = web_state(request)
    status = query_text(request, "status")
    out = io.StringIO()
    try:
        await store.export_subscribers(
            state.db,
            state.settings,
            out,
            status=status if status in store.SHOWN_STATUSES else None,
            origin=_origin(request),
            now=state.now(),
        )
    except store.SubscriberError as exc:
        raise HTTPException(422, str(exc)) from None
    stamp = state.now().strftime("%Y%m%d-%H%M")
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="subscribers-{stamp}.csv"',
            "cache-control": "no-store",
        },
    )


# --- import -----------------------------------------------------------------------------


def _import_page(request: Request, error: str | None = None, status: int = 200) -> Response:
    return page(request, "import.html", {"error": error}, status_code=status)


@requires(Role.ADMIN)
async def import_form(request: Request) -> Response:
    return _import_page(request)


@requires(Role.ADMIN, upload_bytes=store.MAX_IMPORT_BYTES)
async def import_preview(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    uploaded = upload(data, "file")
    if uploaded is None or not uploaded.filename:
        return _import_page(request, "Choose a CSV file.", 422)
    try:
        staged = await store.stage_import(
            state.db,
            state.settings,
            uploaded.filename,
            await uploaded.read(store.MAX_IMPORT_BYTES + 1),
            store.import_status(text(data, "status")),
            origin=_origin(request),
            now=state.now(),
        )
    except store.FileTooLarge as exc:
        return _import_page(request, str(exc), 413)
    except store.SubscriberError as exc:
        return _import_page(request, str(exc), 422)
    report = staged.report
    return page(
        request,
        "import_preview.html",
        {
            "report": report,
            "token": staged.token,
            "filename": staged.filename,
            "status": staged.status.value,
            "errors": report.errors[:SHOWN_ERRORS],
            "suppressed": report.suppressed[:SHOWN_ERRORS],
            "shown_limit": SHOWN_ERRORS,
        },
    )


@requires(Role.ADMIN)
async def import_confirm(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    try:
        filename, report = await store.import_staged(
            state.db,
            state.settings,
            text(data, "token", limit=100),
            text(data, "filename", limit=200),
            store.import_status(text(data, "status")),
            origin=_origin(request),
            now=state.now(),
        )
    except store.SubscriberError as exc:
        return redirect(request, "/admin/subscribers/import", str(exc), kind="error")
    return redirect(
        request,
        "/admin/subscribers",
        f"Imported {filename}: {report.imported} new, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.rejected} rejected.",
    )
