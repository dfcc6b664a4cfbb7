"""Topic tagging: keyword and phrase rules, matched without regard to case or
diacritics ("Šimonytė" matches "simonyte"), on whole words only ("tax" does not
match "taxi"; "European Union" matches across a line break)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.collect.boilerplate import normalise
from mailer.config import Settings
from mailer.models import Release, ReleaseTopic, Topic
from mailer.topics import resolve_topics


class TopicRules:
    """Compiled rules of the active topics, keyed by topic id."""

    def __init__(self, topics: Iterable[tuple[int, str, Sequence[str]]]) -> None:
        self._rules: list[tuple[int, str, re.Pattern[str]]] = []
        for topic_id, slug, keywords in topics:
            pattern = keyword_pattern(keywords)
            if pattern is not None:
                self._rules.append((topic_id, slug, pattern))

    @classmethod
    async def load(cls, session: AsyncSession) -> TopicRules:
        rows = (
            await session.execute(select(Topic.id, Topic.slug, Topic.keywords).where(Topic.active))
        ).all()
        return cls((row.id, row.slug, list(row.keywords or [])) for row in rows)

    def match(self, *texts: str) -> list[int]:
        return self.match_normalised(normalise("\n".join(texts)))

    def match_normalised(self, haystack: str) -> list[int]:
        """``match`` of texts already normalised and joined (``joined_normalised``)."""
        return [topic_id for topic_id, _, pattern in self._rules if pattern.search(haystack)]

    def match_slugs(self, *texts: str) -> list[str]:
        haystack = normalise("\n".join(texts))
        return [slug for _, slug, pattern in self._rules if pattern.search(haystack)]


def keyword_pattern(keywords: Sequence[str]) -> re.Pattern[str] | None:
    """One regular expression for a topic's keywords, over normalised text."""
    alternatives = []
    for keyword in keywords:
        words = normalise(str(keyword)).split()
        if words:
            alternatives.append(r"\s+".join(re.escape(word) for word in words))
    if not alternatives:
        return None
    alternatives.sort(key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")


async def set_release_topics(
    session: AsyncSession, release_id: int, topic_ids: Iterable[int]
) -> None:
    await session.execute(delete(ReleaseTopic).where(ReleaseTopic.release_id == release_id))
    for topic_id in sorted(set(topic_ids)):
        session.add(ReleaseTopic(release_id=release_id, topic_id=topic_id))
    await session.flush()


async def retag_release(
    session: AsyncSession,
    settings: Settings,
    release_id: int,
    topic_slugs: list[str] | None = None,
) -> list[str]:
    """Set a release's topics: the given slugs, or (None) whatever the rules match now.

    ``settings`` is accepted so that every collector entry point has the same shape;
    the rules themselves are the topics table, which the catalog keeps in step with
    the configuration. Runs inside the caller's transaction. Returns the slugs now set. Raises
    LookupError for an unknown release and UnknownTopics (a ValueError) naming topics
    that are not active ones (mailer.topics: the same check as a reader's choice).
    """
    row = (
        await session.execute(
            select(Release.id, Release.title, Release.text).where(Release.id == release_id)
        )
    ).one_or_none()
    if row is None:
        raise LookupError(f"no release with id {release_id}")
    topics = {t.id: t for t in (await session.scalars(select(Topic))).all()}
    if topic_slugs is None:
        rules = TopicRules(
            (t.id, t.slug, list(t.keywords or [])) for t in topics.values() if t.active
        )
        by_slug = {t.slug: t.id for t in topics.values()}
        chosen_ids = [by_slug[slug] for slug in rules.match_slugs(row.title, row.text)]
    else:
        chosen_ids = await resolve_topics(session, topic_slugs)
    await set_release_topics(session, release_id, chosen_ids)
    chosen = [topics[topic_id].slug for topic_id in chosen_ids]
    # A Release the caller already holds must show its new topics.
    release = await session.get(Release, release_id)
    if release is not None:
        await session.refresh(release, attribute_names=["topics"])
    return chosen
