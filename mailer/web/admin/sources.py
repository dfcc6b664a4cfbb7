"""Source pages: health (last success, last error, counts), add, edit, enable or
disable, and "collect now". Sources from config.yaml can be switched off and
collected here, but are edited in the file (which wins at every start); sources
added here are picked up by the scheduler's ``sources:reconcile`` job."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailer import audit
from mailer.accounts import Role
from mailer.collect.guard import OutsideFolderRoots, inside_roots
from mailer.collect.store import source_release_counts
from mailer.config import Settings, SourceConfig, parse_duration
from mailer.db import Database
from mailer.models import Source, SourceStatus
from mailer.web.admin.auth import requires
from mailer.web.admin.common import form, identity, page, path_id, redirect, text
from mailer.web.app import WebState, web_state

KINDS = ("feed", "page", "folder")


class SourceInputError(ValueError):
    pass


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def source_config(values: dict[str, str]) -> SourceConfig:
    """Validate a source as the configuration file would (same rules, same messages)."""
    raw: dict[str, Any] = {
        "name": values.get("name", "").strip(),
        "kind": values.get("kind", ""),
        "interval": values.get("interval") or "30m",
        "timezone": values.get("timezone") or "UTC",
    }
    for key in ("url", "path", "link_selector"):
        if values.get(key):
            raw[key] = values[key].strip()
    try:
        parse_duration(raw["interval"])
        return SourceConfig.model_validate(raw)
    except ValidationError as exc:
        raise SourceInputError(_describe(exc)) from None
    except ValueError as exc:
        raise SourceInputError(f"interval: {exc}") from None


def _apply(source: Source, config: SourceConfig, settings: Settings) -> None:
    path = None
    if config.path:
        try:
            path = inside_roots(settings.resolve(config.path), settings.folder_roots)
        except OutsideFolderRoots as exc:
            raise SourceInputError(f"path: {exc}") from None
    source.kind = config.kind
    source.url = config.url
    source.path = str(path) if path else None
    source.interval_seconds = int(config.interval.total_seconds())
    source.options = config.collector_options()


async def add_source(database: Database, settings: Settings, config: SourceConfig) -> Source:
    async with database.transaction() as session:
        existing = await session.scalar(select(Source.id).where(Source.name == config.name))
        if existing is not None:
            raise SourceInputError(f"There is already a source named {config.name!r}.")
        source = Source(name=config.name, origin="admin", enabled=True, status=SourceStatus.NEW)
        _apply(source, config, settings)
        session.add(source)
        await session.flush()
        return source


async def edit_source(
    database: Database, settings: Settings, source_id: int, config: SourceConfig
) -> Source:
    async with database.transaction() as session:
        source = await session.get(Source, source_id, with_for_update=True)
        if source is None:
            raise LookupError("There is no such source.")
        if source.origin != "admin":
            raise SourceInputError(
                "This source is defined in the configuration file; change it there."
            )
        if config.name != source.name:
            clash = await session.scalar(select(Source.id).where(Source.name == config.name))
            if clash is not None:
                raise SourceInputError(f"There is already a source named {config.name!r}.")
            source.name = config.name
        _apply(source, config, settings)
        return source


async def set_enabled(database: Database, source_id: int, enabled: bool) -> Source:
    async with database.transaction() as session:
        source = await session.get(Source, source_id, with_for_update=True)
        if source is None:
            raise LookupError("There is no such source.")
        source.enabled = enabled
        if not enabled:
            source.status = SourceStatus.DISABLED
        elif source.status is SourceStatus.DISABLED:
            source.status = SourceStatus.NEW
            source.consecutive_failures = 0
        return source


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
    state = web_state(request)
    async with state.db.session() as session:
        sources = (
            await session.scalars(
                select(Source).where(Source.kind.in_(KINDS)).order_by(Source.name)
            )
        ).all()
        release_counts = await source_release_counts(session)
    return page(request, "sources.html", {"sources": sources, "release_counts": release_counts})


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
        source = await add_source(state.db, state.settings, source_config(values))
    except SourceInputError as exc:
        return _edit_page(request, values, error=str(exc), status=422)
    await audit.record(
        state.db,
        identity(request).actor,
        "source.add",
        "source",
        source.name,
        {"kind": source.kind, "url": source.url, "path": source.path},
    )
    return redirect(
        request,
        f"/admin/sources/{source.id}",
        "Source added; the scheduler starts collecting it within a minute.",
    )


async def _load(state: WebState, source_id: int) -> Source:
    async with state.db.session() as session:
        source = await session.get(Source, source_id)
    if source is None or source.kind not in KINDS:
        raise HTTPException(404, "There is no such source.")
    return source


@requires(Role.ADMIN)
async def source_view(request: Request) -> Response:
    state = web_state(request)
    source = await _load(state, path_id(request))
    async with state.db.session() as session:
        counts = await source_release_counts(session)
    return _edit_page(
        request, _values_of(source), source=source, release_count=counts.get(source.id, 0)
    )


@requires(Role.ADMIN)
async def source_save(request: Request) -> Response:
    state = web_state(request)
    source = await _load(state, path_id(request))
    values = _form_values(await form(request))
    try:
        updated = await edit_source(state.db, state.settings, source.id, source_config(values))
    except SourceInputError as exc:
        return _edit_page(request, values, source=source, error=str(exc), status=422)
    except LookupError:
        raise HTTPException(404, "There is no such source.") from None
    await audit.record(
        state.db,
        identity(request).actor,
        "source.edit",
        "source",
        updated.name,
        {"kind": updated.kind, "url": updated.url, "path": updated.path},
    )
    return redirect(request, f"/admin/sources/{source.id}", "Saved.")


@requires(Role.ADMIN)
async def source_toggle(request: Request) -> Response:
    state = web_state(request)
    source = await _load(state, path_id(request))
    enabled = text(await form(request), "enabled") == "1"
    await set_enabled(state.db, source.id, enabled)
    await audit.record(
        state.db,
        identity(request).actor,
        "source.enable" if enabled else "source.disable",
        "source",
        source.name,
    )
    return redirect(request, f"/admin/sources/{source.id}", "Enabled." if enabled else "Disabled.")


async def _collect_in_background(state: WebState, name: str, actor: str) -> None:
    from mailer.schedule import collect_and_notify

    await collect_and_notify(state.db, state.settings, name)
    await audit.record(state.db, actor, "source.collected", "source", name)


@requires(Role.ADMIN)
async def source_collect(request: Request) -> Response:
    state = web_state(request)
    source = await _load(state, path_id(request))
    if not source.enabled:
        return redirect(
            request, f"/admin/sources/{source.id}", "Enable the source first.", kind="error"
        )
    actor = identity(request).actor
    await audit.record(state.db, actor, "source.collect", "source", source.name)
    response = redirect(
        request,
        f"/admin/sources/{source.id}",
        "Collecting now; reload this page in a moment to see the result.",
    )
    response.background = BackgroundTask(_collect_in_background, state, source.name, actor)
    return response


def routes() -> list[Route]:
    return [
        Route("/sources", sources_index, methods=["GET"]),
        Route("/sources/new", source_new_form, methods=["GET"]),
        Route("/sources/new", source_new_submit, methods=["POST"]),
        Route("/sources/{id:int}", source_view, methods=["GET"]),
        Route("/sources/{id:int}", source_save, methods=["POST"]),
        Route("/sources/{id:int}/enabled", source_toggle, methods=["POST"]),
        Route("/sources/{id:int}/collect", source_collect, methods=["POST"]),
    ]
