"""Subscriber pages (admins only: this is personal data): search, view with consent
history and deliveries, add, unsubscribe, erase, CSV import with a preview and a
per-line report before anything is written, CSV export."""

from __future__ import annotations

import asyncio
import io
import re
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailer import audit
from mailer import subscribers as store
from mailer.accounts import Role
from mailer.config import Settings
from mailer.models import ConsentEvent, Delivery, Frequency, Subscriber, SubscriberStatus
from mailer.web.admin.auth import requires
from mailer.web.admin.common import (
    form,
    identity,
    like_patterns,
    page,
    paging,
    path_id,
    query_text,
    redirect,
    text,
    texts,
    upload,
)
from mailer.web.app import web_state

MAX_IMPORT_BYTES = 50 * 1024 * 1024
# An uploaded file waits this long for the operator to confirm the import.
IMPORT_KEEP_SECONDS = 24 * 3600
_IMPORT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
SHOWN_ERRORS = 1000


def _origin(request: Request) -> store.Origin:
    return store.Origin(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        actor=identity(request).actor,
    )


def _conditions(search: str, status: str) -> list[Any]:
    conditions: list[Any] = []
    if search:
        patterns = like_patterns(search)
        conditions.append(
            or_(
                *(Subscriber.email_key.like(p) for p in patterns),
                *(func.lower(Subscriber.name).like(p) for p in patterns),
                *(Subscriber.name.like(p) for p in patterns),
            )
        )
    if status in {s.value for s in SubscriberStatus}:
        conditions.append(Subscriber.status == SubscriberStatus(status))
    return conditions


@requires(Role.ADMIN)
async def subscribers_index(request: Request) -> Response:
    state = web_state(request)
    search, status = query_text(request, "q"), query_text(request, "status")
    conditions = _conditions(search, status)
    order = (Subscriber.created_at.desc(), Subscriber.id.desc())
    async with state.db.session() as session:
        if status in store.SHOWN_STATUSES:
            # A status depends on the suppression list, whose entries are keyed hashes
            # of addresses: matched by hashing, paged here.
            ids = await store.subscriber_ids_with_status(session, state.settings, status)
            if conditions:
                matching = set(await session.scalars(select(Subscriber.id).where(*conditions)))
                ids = [i for i in ids if i in matching]
            pages = paging(request, len(ids), {"q": search, "status": status})
            chosen = ids[pages.offset : pages.offset + pages.size]
            query = select(Subscriber).where(Subscriber.id.in_(chosen))
        else:
            total = await session.scalar(select(func.count(Subscriber.id)).where(*conditions))
            pages = paging(request, total or 0, {"q": search, "status": status})
            query = select(Subscriber).where(*conditions).limit(pages.size).offset(pages.offset)
        rows = (await session.scalars(query.order_by(*order))).all()
        suppressions = await store.suppressions_for(
            session, state.settings, [(row.id, row.email) for row in rows]
        )
    shown = {
        row.id: (
            store.shown_status(row.status, suppressions.get(row.id, (None, None))[0]),
            suppressions.get(row.id, (None, None))[0],
        )
        for row in rows
    }
    counts = await store.count_by_status(state.db)
    return page(
        request,
        "subscribers.html",
        {
            "subscribers": rows,
            "paging": pages,
            "search": search,
            "status": status,
            "counts": counts,
            "statuses": store.SHOWN_STATUSES,
            "shown": shown,
        },
    )


@requires(Role.ADMIN)
async def subscriber_view(request: Request) -> Response:
    state = web_state(request)
    subscriber_id = path_id(request)
    view = await store.get_subscriber(state.db, subscriber_id, state.settings)
    if view is None:
        raise HTTPException(404, "There is no such subscriber (erased subscribers are gone).")
    async with state.db.session() as session:
        consents = (
            await session.scalars(
                select(ConsentEvent)
                .where(ConsentEvent.subscriber_id == subscriber_id)
                .order_by(ConsentEvent.at, ConsentEvent.id)
            )
        ).all()
        deliveries = (
            await session.scalars(
                select(Delivery)
                .where(Delivery.subscriber_id == subscriber_id)
                .order_by(Delivery.created_at.desc(), Delivery.id.desc())
                .limit(200)
            )
        ).all()
    topics = {t.key: t.name for t in state.settings.topics}
    return page(
        request,
        "subscriber.html",
        {
            "subscriber": view,
            "consents": consents,
            "deliveries": deliveries,
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
    return _add_page(request, {"frequency": "daily", "topics": []})


@requires(Role.ADMIN)
async def subscriber_new_submit(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    values = {
        "email": text(data, "email", limit=400),
        "name": text(data, "name", limit=400),
        "frequency": text(data, "frequency") or "daily",
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
    subscriber = result.subscriber
    await audit.record(
        state.db,
        identity(request).actor,
        "subscriber.add",
        "subscriber",
        subscriber.id,
        {"outcome": result.outcome, "confirmed": values["confirmed"]},
    )
    notice = f"{subscriber.email}: {result.outcome}."
    if result.confirmation_due:
        sent = await store.send_confirmation(
            state.db, state.settings, subscriber.id, now=state.now()
        )
        notice += (
            " A confirmation link was mailed."
            if sent
            else " The confirmation mail could not be sent now; it will be retried."
        )
    return redirect(request, f"/admin/subscribers/{subscriber.id}", notice)


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
    if changed:
        await audit.record(
            state.db,
            identity(request).actor,
            "subscriber.unsubscribe",
            "subscriber",
            subscriber_id,
        )
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
    # The log keeps the id only: the address itself is what was erased.
    await audit.record(
        state.db, identity(request).actor, "subscriber.erase", "subscriber", subscriber_id
    )
    return redirect(
        request,
        "/admin/subscribers",
        f"Subscriber {subscriber_id} erased; only a keyed hash of the address is kept.",
    )


@requires(Role.ADMIN)
async def subscribers_export(request: Request) -> Response:
    state = web_state(request)
    status = query_text(request, "status")
    chosen = status if status in store.SHOWN_STATUSES else None
    views = await store.list_subscribers(state.db, status=chosen, settings=state.settings)
    out = io.StringIO()
    count = store.export_csv(views, out)
    await audit.record(
        state.db,
        identity(request).actor,
        "subscriber.export",
        "subscribers",
        None,
        {"rows": count, "status": status or "all"},
    )
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


def _import_dir(settings: Settings) -> Path:
    return settings.data_path / "imports"


def _forget_stale_uploads(folder: Path) -> None:
    cutoff = time.time() - IMPORT_KEEP_SECONDS
    for path in folder.glob("*.csv"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue


def _import_status(raw: str) -> SubscriberStatus:
    if raw == "confirmed":
        return SubscriberStatus.CONFIRMED
    return SubscriberStatus.PENDING


async def _run_import(
    request: Request, token: str, filename: str, status: SubscriberStatus, *, dry_run: bool
) -> store.ImportReport:
    state = web_state(request)
    path = _import_dir(state.settings) / f"{token}.csv"
    body = await asyncio.to_thread(path.read_text, encoding="utf-8")
    stream = io.StringIO(body, newline="")
    stream.name = filename  # the consent records name the file the operator chose
    return await store.import_csv(
        state.db,
        state.settings,
        stream,
        status=status,
        origin=_origin(request),
        now=state.now(),
        dry_run=dry_run,
    )


@requires(Role.ADMIN)
async def import_form(request: Request) -> Response:
    return page(request, "import.html", {"error": None})


def _clean_filename(raw: str | None) -> str:
    name = Path(raw or "upload.csv").name
    return re.sub(r"[^\w.@ -]", "_", name)[:100] or "upload.csv"


@requires(Role.ADMIN, upload_bytes=MAX_IMPORT_BYTES)
async def import_preview(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    status = _import_status(text(data, "status"))
    uploaded = upload(data, "file")
    if uploaded is None or not uploaded.filename:
        return page(request, "import.html", {"error": "Choose a CSV file."}, status_code=422)
    raw = await uploaded.read(MAX_IMPORT_BYTES + 1)
    if len(raw) > MAX_IMPORT_BYTES:
        return page(
            request,
            "import.html",
            {"error": f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB."},
            status_code=413,
        )
    try:
        body = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return page(
            request,
            "import.html",
            {"error": f"The file is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV."},
            status_code=422,
        )
    folder = _import_dir(state.settings)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(_forget_stale_uploads, folder)
    token = secrets.token_urlsafe(24)
    await asyncio.to_thread((folder / f"{token}.csv").write_text, body, encoding="utf-8")
    filename = _clean_filename(uploaded.filename)
    try:
        report = await _run_import(request, token, filename, status, dry_run=True)
    except store.SubscriberError as exc:
        (folder / f"{token}.csv").unlink(missing_ok=True)
        return page(request, "import.html", {"error": str(exc)}, status_code=422)
    return page(
        request,
        "import_preview.html",
        {
            "report": report,
            "token": token,
            "filename": filename,
            "status": status.value,
            "errors": report.errors[:SHOWN_ERRORS],
            "suppressed": report.suppressed[:SHOWN_ERRORS],
            "shown_limit": SHOWN_ERRORS,
        },
    )


@requires(Role.ADMIN)
async def import_confirm(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    token = text(data, "token", limit=100)
    if not _IMPORT_TOKEN.match(token):
        raise HTTPException(400, "This import is not known. Upload the file again.")
    path = _import_dir(state.settings) / f"{token}.csv"
    if not path.exists():
        return redirect(
            request,
            "/admin/subscribers/import",
            "This upload has expired or was already imported. Upload the file again.",
            kind="error",
        )
    status = _import_status(text(data, "status"))
    filename = _clean_filename(text(data, "filename", limit=200))
    try:
        report = await _run_import(request, token, filename, status, dry_run=False)
    except store.SubscriberError as exc:
        return redirect(request, "/admin/subscribers/import", str(exc), kind="error")
    path.unlink(missing_ok=True)
    await audit.record(
        state.db,
        identity(request).actor,
        "subscriber.import",
        "subscribers",
        None,
        {
            "file": filename,
            "status": status.value,
            "imported": report.imported,
            "updated": report.updated,
            "unchanged": report.unchanged,
            "rejected": report.rejected,
        },
    )
    return redirect(
        request,
        "/admin/subscribers",
        f"Imported {filename}: {report.imported} new, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.rejected} rejected.",
    )


def routes() -> list[Route]:
    return [
        Route("/subscribers", subscribers_index, methods=["GET"]),
        Route("/subscribers/new", subscriber_new_form, methods=["GET"]),
        Route("/subscribers/new", subscriber_new_submit, methods=["POST"]),
        Route("/subscribers/export.csv", subscribers_export, methods=["GET"]),
        Route("/subscribers/import", import_form, methods=["GET"]),
        Route("/subscribers/import", import_preview, methods=["POST"]),
        Route("/subscribers/import/confirm", import_confirm, methods=["POST"]),
        Route("/subscribers/{id:int}", subscriber_view, methods=["GET"]),
        Route("/subscribers/{id:int}/unsubscribe", subscriber_unsubscribe, methods=["POST"]),
        Route("/subscribers/{id:int}/erase", subscriber_erase, methods=["POST"]),
    ]
