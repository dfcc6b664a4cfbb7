"""Sources as operators see them: health with release counts, add, edit, enable or
disable, and collect now. Sources from config.yaml can be switched off and
collected, but are edited in the file (which wins at every start). The admin and
the CLI call these; every change writes its audit entry in its own transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import audit
from mailer.collect.guard import OutsideFolderRoots, inside_roots
from mailer.collect.store import source_release_counts
from mailer.config import Settings, SourceConfig, parse_duration
from mailer.db import Database
from mailer.models import Source, SourceKind, SourceStatus
from mailer.schedule import collect_and_notify

# The kinds an operator manages; the labels of hand-added releases are not among them.
KINDS = SourceKind.collected()


class NoSuchSource(LookupError):
    def __init__(self, name: str | None = None) -> None:
        super().__init__("There is no such source." if name is None else name)


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


async def add_source(
    database: Database, settings: Settings, config: SourceConfig, *, actor: str
) -> Source:
    async with database.transaction() as session:
        existing = await session.scalar(select(Source.id).where(Source.name == config.name))
        if existing is not None:
            raise SourceInputError(f"There is already a source named {config.name!r}.")
        source = Source(name=config.name, origin="admin", enabled=True, status=SourceStatus.NEW)
        _apply(source, config, settings)
        session.add(source)
        await session.flush()
        await audit.record_in(
            session, actor, "source.add", "source", source.name, _described(source)
        )
        return source


async def edit_source(
    database: Database, settings: Settings, source_id: int, config: SourceConfig, *, actor: str
) -> Source:
    async with database.transaction() as session:
        source = await session.get(Source, source_id, with_for_update=True)
        if source is None or source.kind not in KINDS:
            raise NoSuchSource()
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
        await audit.record_in(
            session, actor, "source.edit", "source", source.name, _described(source)
        )
        return source


async def set_enabled(database: Database, source_id: int, enabled: bool, *, actor: str) -> Source:
    async with database.transaction() as session:
        source = await session.get(Source, source_id, with_for_update=True)
        if source is None or source.kind not in KINDS:
            raise NoSuchSource()
        source.enabled = enabled
        if not enabled:
            source.status = SourceStatus.DISABLED
        elif source.status is SourceStatus.DISABLED:
            source.status = SourceStatus.NEW
            source.consecutive_failures = 0
        action = "source.enable" if enabled else "source.disable"
        await audit.record_in(session, actor, action, "source", source.name)
        return source


@dataclass(frozen=True)
class SourceHealth:
    source: Source
    # Releases it carried (merged copies included: one count everywhere).
    releases: int


async def _health(session: AsyncSession, sources: list[Source]) -> list[SourceHealth]:
    counts = await source_release_counts(session)
    return [SourceHealth(source, counts.get(source.id, 0)) for source in sources]


async def list_sources(database: Database, *, managed_only: bool = False) -> list[SourceHealth]:
    """Every source by name (``managed_only``: without the labels of hand-added releases)."""
    query = select(Source).order_by(Source.name)
    if managed_only:
        query = query.where(Source.kind.in_(KINDS))
    async with database.session() as session:
        return await _health(session, list((await session.scalars(query)).all()))


async def get_source(database: Database, source_id: int) -> SourceHealth:
    async with database.session() as session:
        source = await session.get(Source, source_id)
        if source is None or source.kind not in KINDS:
            raise NoSuchSource()
        return (await _health(session, [source]))[0]


async def enabled_sources(database: Database, only: str | None = None) -> list[str]:
    """Names of the enabled sources (or just ``only``); NoSuchSource, naming the
    enabled ones, when ``only`` is not one of them."""
    async with database.session() as session:
        names = list(await session.scalars(select(Source.name).where(Source.enabled)))
    if only is None:
        return sorted(names)
    if only not in names:
        known = ", ".join(sorted(names)) or "none"
        raise NoSuchSource(f"no enabled source named {only!r} (enabled sources: {known})")
    return [only]


def _described(source: Source) -> dict[str, Any]:
    return {"kind": source.kind, "url": source.url, "path": source.path}


async def request_collection(database: Database, source_id: int, *, actor: str) -> Source:
    """Record that an operator asked to collect a source now (the collection itself
    is :func:`collect_now`, run in the background)."""
    async with database.transaction() as session:
        source = await session.get(Source, source_id)
        if source is None or source.kind not in KINDS:
            raise NoSuchSource()
        if not source.enabled:
            raise SourceInputError("Enable the source first.")
        await audit.record_in(session, actor, "source.collect", "source", source.name)
        return source


async def collect_now(database: Database, settings: Settings, name: str, *, actor: str) -> None:
    """Collect one source as the scheduler would (readers who chose "as soon as
    published" get what is new), then record that it was collected."""
    await collect_and_notify(database, settings, name)
    await audit.record(database, actor, "source.collected", "source", name)
