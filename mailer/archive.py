"""The public archive: which releases readers may see, and the data of every archive
page and feed.

One function builds the data of each page (:func:`list_releases`,
:func:`release_detail`, :func:`digest_view`, :func:`feed`, :func:`sitemap_entries`),
each in a read session of its own; the web shell renders it as HTML, Atom or JSON
Feed and adds nothing of its own.

A release is public when it is not merged into another (the survivor stands for
it), not excluded from digests (exclusion is how editors drop what the collector
should not have picked up), not withdrawn, past its embargo, and already collected
at ``now``. Withdrawal and embargo also rule planning (:mod:`mailer.digest`):
what the archive may not show is never mailed either.

Full-text search folds accents on both databases: SQLite through an FTS5 table
with ``remove_diacritics``, PostgreSQL through a text search configuration with
``unaccent`` (both made by migration 0006). All words must match.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, func, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal
from text_unidecode import unidecode

from mailer.db import Database, execute_past_moved_rows
from mailer.message import SourceLink, content_key, credit_line, shown_publication
from mailer.models import (
    SEARCH_COLUMN,
    SEARCH_TABLE,
    ContentGroup,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Release,
    ReleaseLink,
    ReleaseTopic,
    Topic,
    Watermark,
)

MAX_SEARCH_WORDS = 12
MAX_SEARCH_CHARS = 200
SLUG_LENGTH = 80
# URLs per sitemap file (the protocol allows 50,000); files are id ranges.
SITEMAP_CHUNK = 2_000
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)
# Finished digests' release ids, by public id (see _carried_releases).
_FINISHED_DIGESTS: OrderedDict[str, frozenset[int]] = OrderedDict()
_FINISHED_DIGESTS_KEPT = 512
# Up to this many search matches are fetched first and sorted (see _search_condition).
_FEW_MATCHES = 2000
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
# Sending states in which a planned delivery can still be changed.
_UNSENT = (DeliveryStatus.PENDING, DeliveryStatus.DEFERRED)
_OPEN_SENDS = (DigestStatus.QUEUED, DigestStatus.SENDING, DigestStatus.PAUSED)


class ArchiveInputError(ValueError):
    """A filter a reader typed (month, search, position) cannot be used; says why."""


class NotPublic(LookupError):
    """No such release or digest, or not public (yet)."""


@dataclass
class ReleaseWithdrawn(Exception):
    """The release was withdrawn: its page answers 410 with this notice."""

    title: str
    withdrawn_at: datetime
    note: str | None


@dataclass
class ReleaseMoved(Exception):
    """The address is an old one (another slug, a merged duplicate): go to ``path``."""

    path: str


@dataclass(frozen=True)
class TopicRef:
    slug: str
    name: str


@dataclass(frozen=True)
class ReleaseSummary:
    id: int
    title: str
    published_at: datetime
    published_estimated: bool
    publisher: str | None
    summary: str
    topics: tuple[TopicRef, ...] = ()
    published_date_only: bool = False

    @property
    def published(self) -> datetime | date:
        return shown_publication(self.published_at, self.published_date_only)

    @property
    def slug(self) -> str:
        return release_slug(self.title)

    @property
    def path(self) -> str:
        return release_path(self.id, self.title)


@dataclass(frozen=True)
class ReleaseDetail(ReleaseSummary):
    html: str = ""
    text: str = ""
    image_url: str | None = None
    image_alt: str | None = None
    photo_credit: str | None = None
    # The release's own address elsewhere; None: the archive page is the original.
    external_url: str | None = None
    sources: tuple[SourceLink, ...] = ()
    # When readers last saw it change: edits, or the end of its embargo.
    updated_at: datetime = _LONG_AGO

    @property
    def credit(self) -> str | None:
        return credit_line(self.photo_credit)


@dataclass(frozen=True)
class ArchiveQuery:
    text: str = ""
    topic: str = ""
    month: str = ""
    # Keyset positions: the id of the last release of the newer page, or of the first
    # release of the older page.
    before: int | None = None
    after: int | None = None

    def filters(self) -> dict[str, str]:
        """The query-string filters (no position) for links to other pages."""
        return {
            k: v for k, v in (("q", self.text), ("topic", self.topic), ("month", self.month)) if v
        }


@dataclass(frozen=True)
class ArchivePage:
    query: ArchiveQuery
    releases: list[ReleaseSummary]
    topics: list[TopicRef]
    topic: TopicRef | None
    # Ids for the ?after= (newer) and ?before= (older) links; None: no such page.
    newer_after: int | None
    older_before: int | None
    # Why a filter the reader typed could not be used (then there are no releases).
    error: str | None = None


@dataclass(frozen=True)
class DigestView:
    public_id: str
    sent_at: datetime
    releases: list[ReleaseSummary]
    # Releases the digest carried that have been withdrawn since.
    withdrawn: int


@dataclass(frozen=True)
class Feed:
    topic: TopicRef | None
    entries: list[ReleaseDetail]
    # None when there are no entries.
    updated: datetime | None
    etag: str


@dataclass(frozen=True)
class SitemapEntry:
    path: str
    updated: datetime


@dataclass
class PulledFromDigests:
    """What withdrawing (or embargoing) did to digests not yet sent."""

    deliveries_changed: int = 0
    deliveries_cancelled: int = 0
    details: dict[str, Any] = field(default_factory=dict)


# --- rules --------------------------------------------------------------------------


class unindexed(ColumnElement[Any]):
    """A column that SQLite must not pick an index for (written ``+column``).

    The archive lists releases newest first, so the one index worth using is the
    one on published_at, which ends the scan after a page of rows. Without table
    statistics SQLite takes "withdrawn_at IS NULL" for a selective equality and
    walks that index instead, then sorts every release (2 s at 100,000). The unary
    plus is SQLite's documented way to keep a term off an index; PostgreSQL plans
    from its statistics and gets the column itself.
    """

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.type = column.type


@compiles(unindexed)
def _column_itself(element: unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(unindexed, "sqlite")
def _column_without_index(element: unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.column, **kw))


def public_conditions(now: datetime) -> tuple[ColumnElement[bool], ...]:
    embargo_until = unindexed(Release.embargo_until)
    return (
        unindexed(Release.merged_into_id).is_(None),
        Release.excluded.is_(False),
        unindexed(Release.withdrawn_at).is_(None),
        or_(embargo_until.is_(None), embargo_until <= now),
        unindexed(Release.first_seen_at) <= now,
    )


def mailable_conditions(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """What digest planning may send: neither withdrawn nor under embargo."""
    return (
        Release.withdrawn_at.is_(None),
        or_(Release.embargo_until.is_(None), Release.embargo_until <= now),
    )


@lru_cache(maxsize=20_000)
def release_slug(title: str) -> str:
    """``budget-adopted`` from "Budget adopted!": accents dropped, other scripts
    transliterated (text-unidecode), cut at a word boundary.

    Written out rather than python-slugify's ``slugify``, which gives nearly the
    same result ten times slower (64 us a title): a sitemap file slugs thousands.
    """
    folded = "".join(
        c for c in unicodedata.normalize("NFKD", title) if not unicodedata.combining(c)
    )
    if not folded.isascii():
        folded = unidecode(folded)
    words = _NOT_SLUG.sub(" ", folded.lower().replace("'", "")).split()
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > SLUG_LENGTH:
            break
        slug = candidate
    return slug or (words[0][:SLUG_LENGTH] if words else "release")


def release_path(release_id: int, title: str) -> str:
    return f"/releases/{release_id}-{release_slug(title)}"


def search_words(query: str) -> list[str]:
    if len(query) > MAX_SEARCH_CHARS:
        raise ArchiveInputError(f"A search has at most {MAX_SEARCH_CHARS} characters.")
    words = re.findall(r"\w+", query.casefold())
    if len(words) > MAX_SEARCH_WORDS:
        raise ArchiveInputError(f"A search has at most {MAX_SEARCH_WORDS} words.")
    return words


def month_range(month: str, timezone: str) -> tuple[datetime, datetime]:
    """The start and end of ``YYYY-MM`` in the site's timezone, as UTC."""
    match = _MONTH.match(month)
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1900:
        raise ArchiveInputError(f"{month!r} is not a month; use the form 2024-03.")
    year, number = int(match.group(1)), int(match.group(2))
    zone = ZoneInfo(timezone)
    start = datetime(year, number, 1, tzinfo=zone)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


async def _search_condition(session: AsyncSession, words: list[str]) -> ColumnElement[bool]:
    """The condition "matches every word".

    PostgreSQL plans it well from the statistics of the stored text vectors (GIN
    for a rare word, the newest releases first for a common one). SQLite has no
    such statistics for FTS5, so the plan is chosen here by how many releases
    match: few, and their ids are fetched and sorted; many, and releases are walked
    newest first, each tested against the match set, until a page is full. Either
    plan alone is slow for the other case (1.4 s for a common word at 100,000
    releases; 0.1 s and growing for a rare one).
    """
    if session.get_bind().dialect.name == "postgresql":
        return text(
            f"releases.{SEARCH_COLUMN} @@ plainto_tsquery('mailer_search', :search)"
        ).bindparams(search=" ".join(words))
    # FTS5 query syntax: each word as a quoted string, all required (implicit AND).
    matching = select(text("rowid")).select_from(text(SEARCH_TABLE))
    matching = matching.where(text(f"{SEARCH_TABLE} MATCH :search")).params(
        search=" ".join(f'"{word}"' for word in words)
    )
    few = list(await session.scalars(matching.limit(_FEW_MATCHES + 1)))
    if len(few) <= _FEW_MATCHES:
        return Release.id.in_(few)
    return unindexed(Release.id).in_(matching)


async def _topic(session: AsyncSession, slug: str) -> tuple[TopicRef, ColumnElement[bool]]:
    """The topic and the condition "release is in it"; NotPublic for no such topic."""
    row = (
        await session.execute(select(Topic.id, Topic.slug, Topic.name).where(Topic.slug == slug))
    ).first()
    if row is None:
        raise NotPublic(f"There is no topic {slug!r}.")
    # EXISTS, probed per release in published order: an IN list would make the
    # planner read the whole topic and sort it.
    in_topic = (
        select(ReleaseTopic.release_id)
        .where(ReleaseTopic.release_id == Release.id, ReleaseTopic.topic_id == row.id)
        .exists()
    )
    return TopicRef(row.slug, row.name), in_topic


async def active_topics(database: Database) -> list[TopicRef]:
    """The topics a reader can browse, by name."""
    async with database.session() as session:
        return await _active_topics(session)


async def _active_topics(session: AsyncSession) -> list[TopicRef]:
    rows = await session.execute(
        select(Topic.slug, Topic.name).where(Topic.active.is_(True)).order_by(Topic.name)
    )
    return [TopicRef(slug, name) for slug, name in rows]


async def _topics_of(session: AsyncSession, ids: Sequence[int]) -> dict[int, tuple[TopicRef, ...]]:
    found: dict[int, list[TopicRef]] = {}
    if ids:
        rows = await session.execute(
            select(ReleaseTopic.release_id, Topic.slug, Topic.name)
            .join(Topic, Topic.id == ReleaseTopic.topic_id)
            .where(ReleaseTopic.release_id.in_(ids))
            .order_by(Topic.name)
        )
        for release_id, slug, name in rows:
            found.setdefault(release_id, []).append(TopicRef(slug, name))
    return {release_id: tuple(topics) for release_id, topics in found.items()}


_SUMMARY_COLUMNS = (
    Release.id,
    Release.title,
    Release.published_at,
    Release.published_estimated,
    Release.published_date_only,
    Release.publisher,
    Release.summary,
)


async def _summaries(session: AsyncSession, rows: Sequence[Any]) -> list[ReleaseSummary]:
    topics = await _topics_of(session, [row.id for row in rows])
    return [
        ReleaseSummary(
            id=row.id,
            title=row.title,
            published_at=row.published_at,
            published_estimated=row.published_estimated,
            published_date_only=bool(row.published_date_only),
            publisher=row.publisher,
            summary=row.summary,
            topics=topics.get(row.id, ()),
        )
        for row in rows
    ]


# --- pages ------------------------------------------------------------------------------


async def list_releases(
    database: Database,
    query: ArchiveQuery,
    *,
    now: datetime,
    page_size: int,
    timezone: str,
) -> ArchivePage:
    """One page of the archive, newest first, by keyset on (published_at, id): a
    page deep in the archive costs what the first one does.

    A filter that cannot be used (a bad month, too long a search, a page that is
    gone) gives a page with ``error`` set and no releases; an unknown topic raises
    NotPublic.
    """
    async with database.session() as session:
        try:
            return await _list_releases(session, query, now, page_size, timezone)
        except ArchiveInputError as exc:
            error = str(exc)
        topics = await _active_topics(session)
    return ArchivePage(query, [], topics, None, None, None, error=error)


async def _list_releases(
    session: AsyncSession, query: ArchiveQuery, now: datetime, page_size: int, timezone: str
) -> ArchivePage:
    conditions = list(public_conditions(now))
    topic = None
    if query.topic:
        topic, in_topic = await _topic(session, query.topic)
        conditions.append(in_topic)
    if query.month:
        start, end = month_range(query.month, timezone)
        conditions += [Release.published_at >= start, Release.published_at < end]
    words = search_words(query.text)
    if words:
        conditions.append(await _search_condition(session, words))

    position = Release.published_at, Release.id
    anchor_id = query.before if query.before is not None else query.after
    newest_first = query.after is None
    if anchor_id is not None:
        anchor = await session.scalar(select(Release.published_at).where(Release.id == anchor_id))
        if anchor is None:
            raise ArchiveInputError("That page of the archive does not exist any more.")
        key = tuple_(*position)
        conditions.append(
            key < tuple_(anchor, anchor_id) if newest_first else key > tuple_(anchor, anchor_id)
        )
    order = (
        (Release.published_at.desc(), Release.id.desc())
        if newest_first
        else (Release.published_at.asc(), Release.id.asc())
    )
    rows = (
        await session.execute(
            select(*_SUMMARY_COLUMNS).where(*conditions).order_by(*order).limit(page_size + 1)
        )
    ).all()
    more = len(rows) > page_size
    rows = rows[:page_size]
    if not newest_first:
        rows.reverse()
    releases = await _summaries(session, rows)
    if newest_first:
        older = releases[-1].id if more and releases else None
        newer = releases[0].id if anchor_id is not None and releases else None
    else:
        newer = releases[0].id if more and releases else None
        older = releases[-1].id if releases else None
    return ArchivePage(
        query=query,
        releases=releases,
        topics=await _active_topics(session),
        topic=topic,
        newer_after=newer,
        older_before=older,
    )


async def _sources(session: AsyncSession, release_id: int) -> tuple[SourceLink, ...]:
    """Every source that carried the release, its merged duplicates' included."""
    merged = await session.scalars(select(Release.id).where(Release.merged_into_id == release_id))
    # One IN list, not "= id OR IN (subquery)": PostgreSQL answers that OR by
    # reading every link.
    rows = await session.execute(
        select(ReleaseLink.source_name, ReleaseLink.url)
        .where(ReleaseLink.release_id.in_([release_id, *merged]))
        .order_by(ReleaseLink.id)
    )
    seen: dict[tuple[str, str | None], SourceLink] = {}
    for name, url in rows:
        seen.setdefault((name, url), SourceLink(name, url))
    return tuple(seen.values())


def _detail(
    release: Release, topics: tuple[TopicRef, ...], sources: tuple[SourceLink, ...]
) -> ReleaseDetail:
    updated = release.updated_at
    if release.embargo_until is not None and release.embargo_until > updated:
        updated = release.embargo_until
    return ReleaseDetail(
        id=release.id,
        title=release.title,
        published_at=release.published_at,
        published_estimated=release.published_estimated,
        published_date_only=bool(release.published_date_only),
        publisher=release.publisher,
        summary=release.summary,
        topics=topics,
        html=release.html,
        text=release.text,
        image_url=release.image_url,
        image_alt=release.image_alt,
        photo_credit=release.photo_credit,
        external_url=release.canonical_url,
        sources=sources,
        updated_at=updated,
    )


async def release_detail(
    database: Database, release_id: int, slug: str | None, *, now: datetime
) -> ReleaseDetail:
    """The release page's data. Raises NotPublic, ReleaseWithdrawn, or ReleaseMoved
    (a merged duplicate or a wrong slug: one address per release)."""
    async with database.session() as session:
        return await _release_detail(session, release_id, slug, now)


async def _release_detail(
    session: AsyncSession, release_id: int, slug: str | None, now: datetime
) -> ReleaseDetail:
    release = await session.get(Release, release_id)
    if release is None:
        raise NotPublic("There is no release at this address.")
    if release.merged_into_id is not None:
        survivor = await session.get(Release, release.merged_into_id)
        if survivor is not None:
            raise ReleaseMoved(release_path(survivor.id, survivor.title))
    if release.withdrawn_at is not None:
        raise ReleaseWithdrawn(release.title, release.withdrawn_at, release.withdrawn_note)
    visible = await session.scalar(
        select(Release.id).where(Release.id == release_id, *public_conditions(now))
    )
    if visible is None:
        raise NotPublic("There is no release at this address.")
    if slug != release_slug(release.title):
        raise ReleaseMoved(release_path(release.id, release.title))
    topics = await _topics_of(session, [release.id])
    return _detail(release, topics.get(release.id, ()), await _sources(session, release.id))


async def digest_view(database: Database, public_id: str, *, now: datetime) -> DigestView:
    """The web version of a digest: the releases its sent messages carried (every
    reader's selection together), newest first, without anything personal."""
    async with database.session() as session:
        return await _digest_view(session, public_id, now)


async def _digest_view(session: AsyncSession, public_id: str, now: datetime) -> DigestView:
    digest = (
        await session.execute(
            select(Digest.id, Digest.status, Digest.started_at, Digest.created_at).where(
                Digest.public_id == public_id
            )
        )
    ).first()
    if digest is None:
        raise NotPublic("There is no digest at this address.")
    carried = await _carried_releases(session, digest.id, public_id, digest.status)
    if not carried:
        raise NotPublic("There is no digest at this address.")
    ids = sorted(carried)
    # A release merged since the digest went out is shown as its survivor.
    survivors = dict(
        (
            await session.execute(
                select(Release.id, Release.merged_into_id).where(
                    Release.id.in_(ids), Release.merged_into_id.is_not(None)
                )
            )
        ).all()
    )
    shown_ids = {survivors.get(i, i) for i in ids}
    rows = (
        await session.execute(
            select(*_SUMMARY_COLUMNS)
            .where(Release.id.in_(shown_ids), *public_conditions(now))
            .order_by(Release.published_at.desc(), Release.id.desc())
        )
    ).all()
    withdrawn = await session.scalar(
        select(func.count()).where(Release.id.in_(shown_ids), Release.withdrawn_at.is_not(None))
    )
    return DigestView(
        public_id=public_id,
        sent_at=digest.started_at or digest.created_at,
        releases=await _summaries(session, rows),
        withdrawn=withdrawn or 0,
    )


async def _carried_releases(
    session: AsyncSession, digest_id: int, public_id: str, status: DigestStatus
) -> frozenset[int]:
    """The ids of the releases the digest's sent messages carried.

    One delivery per distinct content is enough (the rest carried the same), but
    finding them reads every delivery of the send (20,000 rows: most of the page's
    time). A finished send never changes, so its answer is kept.
    """
    cached = _FINISHED_DIGESTS.get(public_id)
    if cached is not None:
        _FINISHED_DIGESTS.move_to_end(public_id)
        return cached
    groups = select(ContentGroup.release_ids).where(ContentGroup.digest_id == digest_id)
    pruned = await session.scalar(select(Digest.delivery_counts).where(Digest.id == digest_id))
    if pruned is None:
        # A group was sent to someone when not all of its rows are unsent (sent rows
        # are not indexed one by one: models.Delivery).
        unsent = (
            select(func.count())
            .where(
                Delivery.digest_id == digest_id,
                Delivery.status != DeliveryStatus.SENT,
                Delivery.content_group_id == ContentGroup.id,
            )
            .scalar_subquery()
        )
        groups = groups.where(ContentGroup.recipients > unsent)
    else:
        # retention.deliveries pruned the rows: every message of the send with
        # content carried its group's releases ("sent" is in the kept counts).
        groups = groups.where(ContentGroup.recipients > 0)
    carried: set[int] = set()
    for (release_ids,) in await session.execute(groups):
        carried.update(int(i) for i in release_ids)
    result = frozenset(carried)
    if status in (DigestStatus.DONE, DigestStatus.CANCELLED):
        _FINISHED_DIGESTS[public_id] = result
        if len(_FINISHED_DIGESTS) > _FINISHED_DIGESTS_KEPT:
            _FINISHED_DIGESTS.popitem(last=False)
    return result


async def feed(database: Database, topic_slug: str | None, *, now: datetime, limit: int) -> Feed:
    """The newest public releases (of one topic), with full content, for Atom and JSON Feed."""
    async with database.session() as session:
        return await _feed(session, topic_slug, now, limit)


async def _feed(session: AsyncSession, topic_slug: str | None, now: datetime, limit: int) -> Feed:
    conditions = list(public_conditions(now))
    topic = None
    if topic_slug is not None:
        topic, in_topic = await _topic(session, topic_slug)
        conditions.append(in_topic)
    releases = (
        await session.scalars(
            select(Release)
            .where(*conditions)
            .order_by(Release.published_at.desc(), Release.id.desc())
            .limit(limit)
        )
    ).all()
    topics = await _topics_of(session, [r.id for r in releases])
    entries = [
        _detail(r, topics.get(r.id, ()), tuple(SourceLink(k.source_name, k.url) for k in r.links))
        for r in releases
    ]
    updated = max((e.updated_at for e in entries), default=None)
    # A withdrawal removes an entry without adding one: the feed changed then too.
    last_withdrawal = await session.scalar(select(func.max(Release.withdrawn_at)))
    if updated is not None and last_withdrawal is not None and last_withdrawal > updated:
        updated = last_withdrawal
    fingerprint = hashlib.sha256(
        repr((topic, [(e.id, e.updated_at.isoformat(), e.title) for e in entries])).encode()
    ).hexdigest()[:32]
    return Feed(topic=topic, entries=entries, updated=updated, etag=f'"{fingerprint}"')


async def sitemap_files(database: Database, *, now: datetime) -> int:
    """How many release sitemap files there are (id ranges of SITEMAP_CHUNK)."""
    async with database.session() as session:
        return await _sitemap_files(session, now)


async def _sitemap_files(session: AsyncSession, now: datetime) -> int:
    highest = await session.scalar(select(func.max(Release.id)).where(*public_conditions(now)))
    return 0 if highest is None else highest // SITEMAP_CHUNK + 1


async def sitemap_entries(database: Database, number: int, *, now: datetime) -> list[SitemapEntry]:
    """The release pages of sitemap file ``number``; NotPublic past the last file."""
    async with database.session() as session:
        if number < 0 or number >= await _sitemap_files(session, now):
            raise NotPublic("There is no such sitemap.")
        rows = (
            await session.execute(
                select(Release.id, Release.title, Release.updated_at, Release.embargo_until)
                .where(
                    Release.id >= number * SITEMAP_CHUNK,
                    Release.id < (number + 1) * SITEMAP_CHUNK,
                    *public_conditions(now),
                )
                .order_by(Release.id)
            )
        ).all()
    return [
        SitemapEntry(
            release_path(row.id, row.title),
            max(row.updated_at, row.embargo_until or row.updated_at),
        )
        for row in rows
    ]


# --- editors: withdraw and embargo ------------------------------------------------------


async def _editable_release(session: AsyncSession, release_id: int) -> Release:
    release = await session.get(Release, release_id, with_for_update=True)
    if release is None or release.merged_into_id is not None:
        raise NotPublic("There is no such release.")
    return release


async def withdraw_release(
    session: AsyncSession, release_id: int, *, note: str | None, now: datetime
) -> PulledFromDigests:
    """Hide a release from the archive and take it out of every digest not yet sent.

    Runs in the caller's write transaction. The release stays in the database (its
    page answers 410 with the notice); ``restore_release`` undoes it.
    """
    release = await _editable_release(session, release_id)
    if note is not None:
        note = " ".join(note.split())[:500] or None
    release.withdrawn_at = now
    release.withdrawn_note = note
    release.updated_at = now
    return await pull_from_unsent_digests(session, release_id)


async def restore_release(session: AsyncSession, release_id: int, *, now: datetime) -> bool:
    """Undo a withdrawal; returns False when the release was not withdrawn."""
    release = await _editable_release(session, release_id)
    if release.withdrawn_at is None:
        return False
    release.withdrawn_at = None
    release.withdrawn_note = None
    release.updated_at = now
    return True


async def set_embargo(
    session: AsyncSession, release_id: int, embargo_until: datetime | None, *, now: datetime
) -> PulledFromDigests:
    """Set or clear a release's embargo; a future one also takes it out of unsent digests."""
    release = await _editable_release(session, release_id)
    release.embargo_until = embargo_until
    release.updated_at = now
    if embargo_until is not None and embargo_until > now:
        return await pull_from_unsent_digests(session, release_id)
    return PulledFromDigests()


async def pull_from_unsent_digests(session: AsyncSession, release_id: int) -> PulledFromDigests:
    """Remove a release from every planned delivery not yet handed to the sender.

    Deliveries carry their releases through their content group: each group of an
    unfinished send that holds the release gets a copy without it, and its unsent
    deliveries move to the copy (so the sender renders the new content instead of
    reusing a cached body). A delivery left with no release is cancelled. The copy
    holds the release as still owed to those readers (mailer.digest), so a send
    after the embargo ends, or after the release is restored, brings it to them.
    A message the sender has already claimed (status sending) is on its way.
    """
    outcome = PulledFromDigests()
    groups = (
        await session.execute(
            select(ContentGroup)
            .join(Digest, Digest.id == ContentGroup.digest_id)
            .where(Digest.status.in_(_OPEN_SENDS))
        )
    ).scalars()
    for group in list(groups):
        if release_id not in group.release_ids:
            continue
        unsent = (Delivery.digest_id == group.digest_id) & (Delivery.content_group_id == group.id)
        unsent &= Delivery.status.in_(_UNSENT)
        if not await session.scalar(select(func.count()).where(unsent)):
            continue
        remaining = [i for i in group.release_ids if i != release_id]
        held = [*group.held_ids, release_id]
        copy = ContentGroup(
            digest_id=group.digest_id,
            release_ids=remaining,
            content_key=content_key(remaining),
            held_ids=held,
            recipients=0,
        )
        session.add(copy)
        await session.flush()
        moved_readers = select(Delivery.subscriber_id).where(unsent)
        # The readers' record of what they are owed follows their message.
        await session.execute(
            update(Watermark)
            .where(Watermark.owed_group_id == group.id, Watermark.subscriber_id.in_(moved_readers))
            .values(owed_group_id=copy.id)
            .execution_options(synchronize_session=False)
        )
        values: dict[str, Any] = {"content_group_id": copy.id}
        if not remaining:
            values.update(
                status=DeliveryStatus.CANCELLED,
                last_error="its only release was withdrawn before sending",
            )
        moved = await execute_past_moved_rows(
            session,
            update(Delivery)
            .where(unsent)
            .values(**values)
            .execution_options(synchronize_session=False),
        )
        count = moved.rowcount or 0
        copy.recipients = count if remaining else 0
        group.recipients -= count
        if remaining:
            outcome.deliveries_changed += count
        else:
            outcome.deliveries_cancelled += count
    return outcome
