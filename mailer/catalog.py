"""Keep the topics and sources tables in step with the configuration file.

The file is read when a process starts, so that is when the tables are brought in
step: at the first database open of a process (mailer.context) and after
``mailer db upgrade``. The tables are read first and a write transaction opens
only when they differ from the file, so a command that only reads takes no write
lock (on SQLite it answers while a send or a collection is writing).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database
from mailer.models import Source, SourceKind, SourceStatus, Topic


async def sync_catalog(database: Database, settings: Settings) -> list[str]:
    """Make the topics and sources tables match ``settings``; returns what changed,
    one line each ("topic energy added"), empty when they already matched."""
    async with database.session() as session:
        changes = await _reconcile(session, settings)
        # Only compared: the objects changed above are discarded, never flushed.
        await session.rollback()
    if not changes:
        return []
    async with database.transaction() as session:
        return await _reconcile(session, settings)


async def _reconcile(session: AsyncSession, settings: Settings) -> list[str]:
    # Both tables are read before anything changes, so no query autoflushes a change.
    topics = {t.slug: t for t in (await session.scalars(select(Topic))).all()}
    sources = {s.name: s for s in (await session.scalars(select(Source))).all()}
    changes: list[str] = []
    with session.no_autoflush:
        wanted = {t.key: t for t in settings.topics}
        for slug, config in wanted.items():
            topic = topics.get(slug)
            if topic is None:
                session.add(Topic(slug=slug, name=config.name, keywords=list(config.keywords)))
                changes.append(f"topic {slug} added")
            elif _assign(topic, name=config.name, keywords=list(config.keywords), active=True):
                changes.append(f"topic {slug} updated")
        for slug, topic in topics.items():
            if slug not in wanted and topic.active:
                topic.active = False
                changes.append(f"topic {slug} retired (not in the configuration)")

        for config in settings.sources:
            values: dict[str, Any] = {
                "kind": SourceKind(config.kind),
                "url": config.url,
                "path": str(settings.resolve(config.path)) if config.path else None,
                "interval_seconds": int(config.interval.total_seconds()),
                "options": config.collector_options(),
                "origin": "config",
            }
            source = sources.get(config.name)
            if source is None:
                source = Source(name=config.name, enabled=config.enabled, **values)
                source.status = SourceStatus.NEW if config.enabled else SourceStatus.DISABLED
                session.add(source)
                changes.append(f"source {config.name} added")
            elif _assign(source, **values):
                changes.append(f"source {config.name} updated")
            # A source the collector disabled (HTTP 410) stays disabled until an
            # operator enables it again; the file can only switch one off.
            if not config.enabled and source.enabled:
                source.enabled = False
                source.status = SourceStatus.DISABLED
                changes.append(f"source {config.name} disabled (enabled: false)")
        # A source removed from the file stops being collected; its releases stay.
        configured = {c.name for c in settings.sources}
        for name, source in sources.items():
            if source.origin == "config" and name not in configured and source.enabled:
                source.enabled = False
                source.status = SourceStatus.DISABLED
                changes.append(f"source {name} disabled (not in the configuration)")
    return changes


def _assign(row: Any, **values: Any) -> bool:
    """Set the attributes that differ; True when any did."""
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed
