"""Keep the topics and sources tables in step with the configuration file."""

from __future__ import annotations

from sqlalchemy import select

from mailer.config import Settings
from mailer.db import Database
from mailer.models import Source, SourceStatus, Topic


async def sync_catalog(database: Database, settings: Settings) -> None:
    async with database.transaction() as session:
        topics = {t.slug: t for t in (await session.scalars(select(Topic))).all()}
        wanted = {t.key: t for t in settings.topics}
        for slug, config in wanted.items():
            topic = topics.get(slug)
            if topic is None:
                session.add(Topic(slug=slug, name=config.name, keywords=list(config.keywords)))
            elif (topic.name, topic.keywords, topic.active) != (config.name, config.keywords, True):
                topic.name, topic.keywords, topic.active = config.name, list(config.keywords), True
        for slug, topic in topics.items():
            if slug not in wanted and topic.active:
                topic.active = False

        sources = {s.name: s for s in (await session.scalars(select(Source))).all()}
        for config in settings.sources:
            path = str(settings.resolve(config.path)) if config.path else None
            options = config.collector_options()
            source = sources.get(config.name)
            if source is None:
                source = Source(name=config.name, origin="config", enabled=config.enabled)
                source.status = SourceStatus.NEW if config.enabled else SourceStatus.DISABLED
                session.add(source)
            source.kind, source.url, source.path = config.kind, config.url, path
            source.interval_seconds = int(config.interval.total_seconds())
            source.options = options
            source.origin = "config"
            # A source the collector disabled (HTTP 410) stays disabled until an
            # operator enables it again; the file can only switch one off.
            if not config.enabled and source.enabled:
                source.enabled = False
                source.status = SourceStatus.DISABLED
        # A source removed from the file stops being collected; its releases stay.
        configured = {c.name for c in settings.sources}
        for name, source in sources.items():
            if source.origin == "config" and name not in configured and source.enabled:
                source.enabled = False
                source.status = SourceStatus.DISABLED
