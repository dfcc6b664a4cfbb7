"""Releases as editors see them: list and search, one release with its sources,
edit, exclude, withdraw, restore, embargo, and add one by hand.

The admin pages, the JSON API and the CLI call these functions and nothing else
for releases, so the three answer the same question the same way. Every change
writes its audit entry in the transaction that makes it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import archive, audit
from mailer.collect.ingest import ReleaseInputError, add_release
from mailer.collect.topics import retag_release
from mailer.config import Settings
from mailer.db import Database
from mailer.digest import queued_to
from mailer.models import (
    Release,
    ReleaseLink,
    ReleaseTopic,
    Topic,
    utcnow,
)
from mailer.textsearch import like_patterns

# Adding a release by hand is the collector's matching plus the editor's decision;
# it lives with the collector and is part of this module's interface.
__all__ = ["NoSuchRelease", "ReleaseInputError", "add_release"]

T = TypeVar("T")
TITLE_LIMIT = 1000
SUMMARY_LIMIT = 5000


class NoSuchRelease(LookupError):
    """No release with this id (or it was merged into another)."""

    def __init__(self) -> None:
        super().__init__("There is no such release.")


@dataclass(frozen=True)
class ReleaseFilter:
    """Which releases a listing shows. Merged duplicates are always left out."""

    # Words in the title or summary (case and accents as typed or not).
    search: str = ""
    topic: str = ""
    # Only releases a source with this name carried.
    source: str = ""
    # "excluded", "included", or anything else for both.
    show: str = ""
    # Published at or after.
    since: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = [Release.merged_into_id.is_(None)]
        if self.search:
            conditions.append(
                or_(
                    *(
                        match
                        for pattern in like_patterns(self.search)
                        for column in (Release.title, Release.summary)
                        for match in (func.lower(column).like(pattern), column.like(pattern))
                    )
                )
            )
        if self.topic:
            conditions.append(
                Release.id.in_(
                    select(ReleaseTopic.release_id)
                    .join(Topic, Topic.id == ReleaseTopic.topic_id)
                    .where(Topic.slug == self.topic)
                )
            )
        if self.source:
            conditions.append(
                Release.id.in_(
                    select(ReleaseLink.release_id).where(ReleaseLink.source_name == self.source)
                )
            )
        if self.show == "excluded":
            conditions.append(Release.excluded.is_(True))
        elif self.show == "included":
            conditions.append(Release.excluded.is_(False))
        if self.since is not None:
            conditions.append(Release.published_at >= self.since)
        return conditions


@dataclass(frozen=True)
class ReleasePage:
    """One page of a listing (newest publication first) and how many match in all.
    Each release carries its links and topics."""

    items: list[Release]
    total: int


async def list_releases(
    database: Database, wanted: ReleaseFilter, *, limit: int | None = 50, offset: int = 0
) -> ReleasePage:
    """``limit`` None: every match."""
    async with database.session() as session:
        return await _page(session, wanted.conditions(), limit, offset)


async def _page(
    session: AsyncSession, conditions: list[ColumnElement[bool]], limit: int | None, offset: int
) -> ReleasePage:
    total = await _count(session, conditions)
    return ReleasePage(await _items(session, conditions, limit, offset), total)


async def _count(session: AsyncSession, conditions: list[ColumnElement[bool]]) -> int:
    return await session.scalar(select(func.count(Release.id)).where(*conditions)) or 0


async def _items(
    session: AsyncSession, conditions: list[ColumnElement[bool]], limit: int | None, offset: int
) -> list[Release]:
    query = (
        select(Release)
        .where(*conditions)
        .order_by(Release.published_at.desc(), Release.id.desc())
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    return list((await session.scalars(query)).all())


@dataclass(frozen=True)
class ReleaseListing(ReleasePage):
    """The admin's list of releases: one page, the page it is, the topics to filter by."""

    page: int = 1
    topics: list[Topic] = field(default_factory=list)


async def release_listing(
    database: Database, wanted: ReleaseFilter, *, page: int, size: int
) -> ReleaseListing:
    """Page ``page`` (from 1) of the releases ``wanted``; past the end, the last page."""
    conditions = wanted.conditions()
    async with database.session() as session:
        total = await _count(session, conditions)
        page = min(max(page, 1), max(1, math.ceil(total / size)))
        items = await _items(session, conditions, size, (page - 1) * size)
        return ReleaseListing(items, total, page, await _active_topics(session))


async def active_topics(database: Database) -> list[Topic]:
    """The topics an editor can give a release, in configuration order."""
    async with database.session() as session:
        return await _active_topics(session)


async def _active_topics(session: AsyncSession) -> list[Topic]:
    return list((await session.scalars(select(Topic).where(Topic.active).order_by(Topic.id))).all())


async def get_release(database: Database, release_id: int) -> Release:
    async with database.session() as session:
        release = await session.get(Release, release_id)
    if release is None:
        raise NoSuchRelease()
    return release


@dataclass(frozen=True)
class AddedRelease:
    """A release added by hand as the editor sees it afterwards."""

    release: Release
    # "new", or "merged" when it was already stored.
    outcome: str


async def add_and_get_release(
    database: Database, settings: Settings, **fields: Any
) -> AddedRelease:
    """:func:`add_release` (same arguments, same errors), answering with the stored
    release, topics and sources included, for a shell that shows it at once."""
    release_id, outcome = await add_release(database, settings, **fields)
    return AddedRelease(await get_release(database, release_id), outcome)


@dataclass(frozen=True)
class ReleaseDetail:
    release: Release
    links: list[ReleaseLink]
    # (id, title) of the copies merged into it.
    merged: list[tuple[int, str]]
    # Readers it has been queued to.
    recipients: int
    topics: list[Topic] = field(default_factory=list)


async def recipient_count(session: AsyncSession, release_id: int) -> int:
    """How many readers a release has been queued to (sent or about to be)."""
    release = await session.get(Release, release_id)
    return await queued_to(session, release) if release is not None else 0


async def release_detail(database: Database, release_id: int) -> ReleaseDetail:
    """A release with every source's copy, what was merged into it, and the topics
    an editor can choose from."""
    async with database.session() as session:
        release = await session.get(Release, release_id)
        if release is None:
            raise NoSuchRelease()
        links = await session.scalars(
            select(ReleaseLink).where(ReleaseLink.release_id == release_id).order_by(ReleaseLink.id)
        )
        merged = await session.execute(
            select(Release.id, Release.title).where(Release.merged_into_id == release_id)
        )
        topics = await session.scalars(select(Topic).where(Topic.active).order_by(Topic.id))
        return ReleaseDetail(
            release,
            list(links.all()),
            [(row.id, row.title) for row in merged],
            await recipient_count(session, release_id),
            list(topics.all()),
        )


async def _edit(
    session: AsyncSession,
    settings: Settings,
    release: Release,
    *,
    title: str | None,
    summary: str | None,
    topics: list[str] | None,
    excluded: bool | None,
) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    if title is not None:
        title = " ".join(title.split())
        if not title:
            raise ReleaseInputError("A release needs a title.")
        if len(title) > TITLE_LIMIT:
            raise ReleaseInputError(f"A title has at most {TITLE_LIMIT} characters.")
        if title != release.title:
            changed["title"] = release.title = title
    if summary is not None:
        summary = summary.strip()
        if len(summary) > SUMMARY_LIMIT:
            raise ReleaseInputError(f"A summary has at most {SUMMARY_LIMIT} characters.")
        if summary != release.summary:
            changed["summary"] = True
            release.summary = summary
    if excluded is not None and excluded != release.excluded:
        changed["excluded"] = release.excluded = excluded
    if topics is not None:
        before = sorted(t.slug for t in release.topics)
        try:
            after = await retag_release(session, settings, release.id, topics)
        except ValueError as exc:
            raise ReleaseInputError(str(exc)) from None
        if sorted(after) != before:
            changed["topics"] = after
    if changed:
        release.updated_at = utcnow()
    return changed


async def _editable(session: AsyncSession, release_id: int) -> Release:
    release = await session.get(Release, release_id, with_for_update=True)
    if release is None or release.merged_into_id is not None:
        raise NoSuchRelease()
    return release


async def edit_release(
    database: Database,
    settings: Settings,
    release_id: int,
    *,
    actor: str,
    title: str | None = None,
    summary: str | None = None,
    topics: list[str] | None = None,
    excluded: bool | None = None,
) -> dict[str, Any]:
    """Apply an editor's edits (None: leave as is); returns what changed, which is
    also what the audit entry ("release.edit") records."""
    async with database.transaction() as session:
        release = await _editable(session, release_id)
        changed = await _edit(
            session,
            settings,
            release,
            title=title,
            summary=summary,
            topics=topics,
            excluded=excluded,
        )
        if changed:
            await audit.record_in(session, actor, "release.edit", "release", release_id, changed)
    return changed


async def set_excluded(
    database: Database, settings: Settings, release_id: int, excluded: bool, *, actor: str
) -> bool:
    """Exclude a release from digests, or include it again; False if it already was."""
    async with database.transaction() as session:
        release = await _editable(session, release_id)
        changed = await _edit(
            session, settings, release, title=None, summary=None, topics=None, excluded=excluded
        )
        if changed:
            action = "release.exclude" if excluded else "release.include"
            await audit.record_in(session, actor, action, "release", release_id)
    return bool(changed)


async def _archive_change(
    database: Database,
    release_id: int,
    change: Callable[[AsyncSession], Awaitable[T]],
    *,
    actor: str,
    action: str,
    details: Callable[[T], Mapping[str, Any] | None],
) -> T:
    try:
        async with database.transaction() as session:
            result = await change(session)
            if result is not False:  # restore: it was not withdrawn, nothing happened
                await audit.record_in(
                    session, actor, action, "release", release_id, details(result)
                )
            return result
    except archive.NotPublic:
        raise NoSuchRelease() from None


async def withdraw(
    database: Database, release_id: int, *, note: str | None, actor: str, now: datetime
) -> archive.PulledFromDigests:
    """Hide a release from the archive and take it out of every unsent digest."""
    return await _archive_change(
        database,
        release_id,
        lambda session: archive.withdraw_release(session, release_id, note=note, now=now),
        actor=actor,
        action="release.withdraw",
        details=lambda pulled: {
            "note": note,
            "deliveries_changed": pulled.deliveries_changed,
            "deliveries_cancelled": pulled.deliveries_cancelled,
        },
    )


async def restore(database: Database, release_id: int, *, actor: str, now: datetime) -> bool:
    """Undo a withdrawal; False (and no audit entry) if it was not withdrawn."""
    return await _archive_change(
        database,
        release_id,
        lambda session: archive.restore_release(session, release_id, now=now),
        actor=actor,
        action="release.restore",
        details=lambda _: None,
    )


async def embargo(
    database: Database, release_id: int, until: datetime | None, *, actor: str, now: datetime
) -> archive.PulledFromDigests:
    """Hold a release back (neither shown nor mailed) until ``until``; None lifts it."""
    return await _archive_change(
        database,
        release_id,
        lambda session: archive.set_embargo(session, release_id, until, now=now),
        actor=actor,
        action="release.embargo",
        details=lambda _: {"until": until.isoformat() if until else None},
    )
