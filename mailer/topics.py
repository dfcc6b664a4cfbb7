"""The one check of a topic a reader or an editor names: it must be an active topic
of the topics table (which mailer.catalog keeps in step with the configuration),
by slug or by name, in any case."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.db import Database
from mailer.models import Topic


class UnknownTopics(ValueError):
    def __init__(self, labels: list[str]) -> None:
        super().__init__(f"unknown topic(s): {', '.join(labels)}")
        self.labels = labels


async def resolve_topics(session: AsyncSession, labels: Iterable[str]) -> list[int]:
    """Topic ids for slugs or names, in the order given, without repeats and blanks;
    UnknownTopics naming every label that is no active topic."""
    wanted = [label.strip() for label in labels if label and label.strip()]
    if not wanted:
        return []
    rows = await session.execute(select(Topic.id, Topic.slug, Topic.name).where(Topic.active))
    by_label: dict[str, int] = {}
    for topic_id, slug, name in rows:
        by_label[slug.lower()] = topic_id
        by_label.setdefault(name.lower(), topic_id)
    unknown = [label for label in wanted if label.lower() not in by_label]
    if unknown:
        raise UnknownTopics(unknown)
    return list(dict.fromkeys(by_label[label.lower()] for label in wanted))


async def check_topics(database: Database, labels: Iterable[str]) -> None:
    """:func:`resolve_topics` for a form that validates before it saves."""
    async with database.session() as session:
        await resolve_topics(session, labels)
