"""Source pages: health (last success, last error, counts), add, edit, enable or
disable, and "collect now". Sources from config.yaml can be switched off and
collected here, but are edited in the file (which wins at every start); sources
added here are picked up by the scheduler's ``sources:reconcile`` job."""

from __future__ import annotations

from typing import Any

from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer import sources as domain
from mailer.accounts import Role
from mailer.models import Source
from mailer.sources import KINDS, NoSuchSource, SourceInputError, source_config
from mailer.web.admin.auth import requires
from mailer.web.admin.common import form, identity, page, path_id, redirect, text
from mailer.web.state import WebState, web_state


def _values_of(source: Source) -> dict[str, str]:
    options = source.options or {}
    interval = source.interval_seconds
    return {
        "name": source.name,
        "kind": source.kind,
        "url": source.url or "",
        "path": source.path or "",
        "interval": f"{interval // 60}m" if interval % 60 == 0 else f"{interval}s",
        "link_selector": str(options.get("link_selector") or ""),
        "timezone": str(options.get("timezone") or "UTC"),
    }


def _form_values(data: Any) -> dict[str, str]:
    return {
        key: text(data, key, limit=2000)
        for key in ("name", "kind", "url", "path", "interval", "link_selector", "timezone")
    }


@requires(Role.ADMIN)
async def sources_index(request: Request) -> Response:
    health = await domain.list_sources(web_state(request).db, managed_only=True)
    return page(
        request,
        "sources.html",
        {
            "sources": [h.source for h in health],
            "release_counts": {h.source.id: h.releases for h in health},
        },
    )


def _edit_page(
    request: Request,
    values: dict[str, str],
    *,
    source: Source | None = None,
    error: str | None = None,
    status: int = 200,
    release_count: int = 0,
) -> Response:
    return page(
        request,
        "source.html",
        {
            "values": values,
            "source": source,
            "error": error,
            "kinds": KINDS,
            "release_count": release_count,
        },
        status_code=status,
    )


@requires(Role.ADMIN)
async def source_new_form(request: Request) -> Response:
    return _edit_page(request, {"kind": "feed", "interval": "30m", "timezone": "UTC"})


@requires(Role.ADMIN)
async def source_new_submit(request: Request) -> Response:
    state = web_state(request)
    values = _form_values(await form(request))
    try:
        source = await domain.add_source(
            state.db, state.settings, source_config(values), actor=identity(request).actor
        )
    except SourceInputError as exc:
        return _edit_page(request, values, error=str(exc), status=422)
    return redirect(
        request,
        f"/admin/sources/{source.id}",
        "Source added; the scheduler starts collecting it within a minute.",
    )


async def _load(state: WebState, source_id: int) -> domain.SourceHealth:
    try:
        return await domain.get_source(state.db, source_id)
    except NoSuchSource as exc:
        raise HTTPException(404, str(exc)) from None


@requires(Role.ADMIN)
async def source_view(request: Request) -> Response:
    health = await _load(web_state(request), path_id(request))
    return _edit_page(
        request, _values_of(health.source), source=health.source, release_count=health.releases
    )


@requires(Role.ADMIN)
async def source_save(request: Request) -> Response:
    state = web_state(request)
    source = (await _load(state, path_id(request))).source
    values = _form_values(await form(request))
    try:
        await domain.edit_source(
            state.db,
            state.settings,
            source.id,
            source_config(values),
            actor=identity(request).actor,
        )
    except SourceInputError as exc:
        return _edit_page(request, values, source=source, error=str(exc), status=422)
    except NoSuchSource as exc:
        raise HTTPException(404, str(exc)) from None
    return redirect(request, f"/admin/sources/{source.id}", "Saved.")


@requires(Role.ADMIN)
async def source_toggle(request: Request) -> Response:
    state = web_state(request)
    source_id = path_id(request)
    enabled = text(await form(request), "enabled") == "1"
    try:
        source = await domain.set_enabled(
            state.db, source_id, enabled, actor=identity(request).actor
        )
    except NoSuchSource as exc:
        raise HTTPException(404, str(exc)) from None
    return redirect(request, f"/admin/sources/{source.id}", "Enabled." if enabled else "Disabled.")


@requires(Role.ADMIN)
async def source_collect(request: Request) -> Response:
    state = web_state(request)
    source_id = path_id(request)
    actor = identity(request).actor
    try:
        source = await domain.request_collection(state.db, source_id, actor=actor)
    except NoSuchSource as exc:
        raise HTTPException(404, str(exc)) from None
    except SourceInputError as exc:
        return redirect(request, f"/admin/sources/{source_id}", str(exc), kind="error")
    response = redirect(
        request,
        f"/admin/sources/{source.id}",
        "Collecting now; reload this page in a moment to see the result.",
    )
    response.background = BackgroundTask(
        domain.collect_now, state.db, state.settings, source.name, actor=actor
    )
    return response
