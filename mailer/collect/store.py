"""Storing candidates: one release per real-world release, however many sources
carry it.

A candidate is the same release as a stored one when it has the same GUID from
the same source, the same canonical URL, the same normalised text, or nearly the
same text (SimHash candidates confirmed by shingle containment). Several stored
releases that turn out to be one are folded into the earliest: links, topics and
"already sent to" rows move over, so nobody receives it twice.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, distinct, func, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import raiseload

from mailer.collect.dedupe import SimhashIndex, is_near_duplicate, word_count
from mailer.collect.extract import Candidate
from mailer.collect.topics import TopicRules
from mailer.models import Release, ReleaseLink, ReleaseTopic, SubscriberRelease, utcnow

# Near-duplicates are looked for among releases published this close to the candidate.
NEAR_DUPLICATE_WINDOW = timedelta(days=45)
# Exact text matches need at least this many words to mean "the same release".
EXACT_MATCH_MIN_WORDS = 8
_CHUNK = 500
# Serialises the matching-and-storing step across processes on PostgreSQL (SQLite
# already serialises writers with BEGIN IMMEDIATE).
_STORE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mailer.collect.store").digest()[:8], "big") >> 1


class Outcome(enum.StrEnum):
    NEW = "new"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    # Another source's copy of a release already stored: linked, not new.
    MERGED = "merged"


@dataclass
class Stored:
    outcome: Outcome
    release_id: int


def _fit(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else value


def _fit_guid(guid: str) -> str:
    return guid if len(guid) <= 2000 else "sha256:" + hashlib.sha256(guid.encode()).hexdigest()


class ReleaseStore:
    """Matches and stores the candidates of one source run, inside one transaction."""

    def __init__(
        self,
        session: AsyncSession,
        *,
        source_id: int | None,
        source_name: str,
        rules: TopicRules,
        now: datetime | None = None,
    ) -> None:
        self.session = session
        self.source_id = source_id
        self.source_name = source_name[:200]
        self.rules = rules
        self.now = now or utcnow()
        self.index = SimhashIndex()
        self._links: dict[str, ReleaseLink] = {}
        self._by_url: dict[str, set[int]] = {}
        self._by_hash: dict[str, set[int]] = {}
        self._texts: dict[int, str] = {}
        self._merged_into: dict[int, int] = {}

    async def prepare(self, candidates: Sequence[Candidate]) -> None:
        """Load what matching needs in a few queries instead of several per candidate."""
        if self.session.bind is not None and self.session.bind.dialect.name == "postgresql":
            await self.session.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _STORE_LOCK_KEY}
            )
        guids = [_fit_guid(c.guid) for c in candidates]
        for chunk in _chunks(guids):
            rows = await self.session.scalars(
                select(ReleaseLink).where(self._link_owner(), ReleaseLink.guid.in_(chunk))
            )
            self._links.update({link.guid: link for link in rows})
        urls = sorted({c.url for c in candidates if c.url})
        for chunk in _chunks(urls):
            rows = await self.session.execute(
                select(Release.canonical_url, Release.id).where(
                    Release.canonical_url.in_(chunk), Release.merged_into_id.is_(None)
                )
            )
            for url, release_id in rows:
                self._by_url.setdefault(url, set()).add(release_id)
            rows = await self.session.execute(
                select(ReleaseLink.url, ReleaseLink.release_id).where(ReleaseLink.url.in_(chunk))
            )
            for url, release_id in rows:
                self._by_url.setdefault(url, set()).add(release_id)
        hashes = sorted({c.content_hash for c in candidates})
        for chunk in _chunks(hashes):
            rows = await self.session.execute(
                select(Release.content_hash, Release.id).where(
                    Release.content_hash.in_(chunk), Release.merged_into_id.is_(None)
                )
            )
            for digest, release_id in rows:
                self._by_hash.setdefault(digest, set()).add(release_id)
        dates = [c.published for c in candidates if c.published] + [self.now]
        since = min(dates) - NEAR_DUPLICATE_WINDOW
        rows = await self.session.execute(
            select(Release.id, Release.simhash).where(
                Release.merged_into_id.is_(None), Release.published_at >= since
            )
        )
        for release_id, fingerprint in rows:
            self.index.add(release_id, fingerprint)

    def _link_owner(self):  # type: ignore[no-untyped-def]
        if self.source_id is not None:
            return ReleaseLink.source_id == self.source_id
        return (ReleaseLink.source_id.is_(None)) & (ReleaseLink.source_name == self.source_name)

    def _live(self, release_id: int) -> int:
        while release_id in self._merged_into:
            release_id = self._merged_into[release_id]
        return release_id

    async def store(self, candidate: Candidate) -> Stored:
        guid = _fit_guid(candidate.guid)
        url = candidate.url if candidate.url and len(candidate.url) <= 2000 else None
        digest = candidate.content_hash
        fingerprint = candidate.simhash
        link = self._links.get(guid)

        matched: list[int] = []
        if link is not None:
            matched.append(link.release_id)
        if url:
            matched.extend(sorted(self._by_url.get(url, ())))
        if word_count(candidate.text) >= EXACT_MATCH_MIN_WORDS:
            matched.extend(sorted(self._by_hash.get(digest, ())))
        matched = list(dict.fromkeys(self._live(i) for i in matched))
        if not matched:
            matched = await self._near_duplicates(candidate, fingerprint)

        if not matched:
            release_id = await self._create(candidate, guid, url, digest, fingerprint)
            return Stored(Outcome.NEW, release_id)

        releases = await self._load(matched)
        survivor = min(releases, key=lambda r: (r.published_at, r.id))
        folded = False
        for other in releases:
            if other.id != survivor.id:
                await self.fold(survivor, other)
                folded = True

        if link is None:
            self._add_link(survivor.id, candidate, url, guid, digest)
            self._remember(survivor.id, url, digest)
            _take_best_date(survivor, candidate.published, _precision_of(candidate))
            _fill_missing(survivor, candidate, url)
            await self._add_topics(survivor.id, self.rules.match(candidate.title, candidate.text))
            return Stored(Outcome.MERGED, survivor.id)

        link.release_id = survivor.id
        unchanged = link.content_hash == digest and link.title == _fit(candidate.title, 1000)
        if candidate.published is not None:
            link.published_at = candidate.published
            _take_best_date(survivor, candidate.published, _precision_of(candidate))
        if unchanged:
            return Stored(Outcome.UPDATED if folded else Outcome.UNCHANGED, survivor.id)
        # The release shows this source's text only if that is where its text came from.
        supplies_body = survivor.content_hash == link.content_hash or await self._sole_link(
            survivor.id
        )
        link.content_hash = digest
        link.title = _fit(candidate.title, 1000)
        if url:
            link.url = url
        if supplies_body:
            _apply_body(survivor, candidate, digest, fingerprint)
            survivor.updated_at = self.now
            self.index.add(survivor.id, fingerprint)
            self._texts[survivor.id] = candidate.text
            self._remember(survivor.id, url, digest)
            await self._add_topics(survivor.id, self.rules.match(candidate.title, candidate.text))
        return Stored(Outcome.UPDATED, survivor.id)

    async def _near_duplicates(self, candidate: Candidate, fingerprint: int) -> list[int]:
        if word_count(candidate.text) < EXACT_MATCH_MIN_WORDS:
            return []
        for release_id in self.index.candidates(fingerprint)[:8]:
            stored_text = self._texts.get(release_id)
            if stored_text is None:
                stored_text = await self.session.scalar(
                    select(Release.text).where(Release.id == release_id)
                )
                self._texts[release_id] = stored_text or ""
            if stored_text and is_near_duplicate(candidate.text, stored_text):
                return [self._live(release_id)]
        return []

    async def _load(self, ids: Iterable[int]) -> list[Release]:
        rows = await self.session.scalars(
            select(Release).where(Release.id.in_(list(ids))).options(raiseload("*"))
        )
        return list(rows)

    async def _sole_link(self, release_id: int) -> bool:
        count = await self.session.scalar(
            select(ReleaseLink.id).where(ReleaseLink.release_id == release_id).offset(1).limit(1)
        )
        return count is None

    async def _create(
        self, candidate: Candidate, guid: str, url: str | None, digest: str, fingerprint: int
    ) -> int:
        values = _body_values(candidate, digest, fingerprint)
        values.update(
            published_at=candidate.published or self.now,
            published_estimated=candidate.published is None,
            published_date_only=candidate.published is not None and candidate.published_date_only,
            first_seen_at=self.now,
            updated_at=self.now,
            canonical_url=url,
            excluded=False,
        )
        # A Core INSERT … RETURNING: one round trip, without a unit-of-work flush per
        # release (the links and topics below go out together at the next flush).
        with self.session.no_autoflush:
            release_id = await self.session.scalar(
                insert(Release).values(**values).returning(Release.id)
            )
        assert release_id is not None
        release = _NewRelease(release_id)
        self._add_link(release.id, candidate, url, guid, digest)
        for topic_id in self.rules.match(candidate.title, candidate.text):
            self.session.add(ReleaseTopic(release_id=release.id, topic_id=topic_id))
        self.index.add(release.id, fingerprint)
        self._texts[release.id] = candidate.text
        self._remember(release.id, url, digest)
        return release.id

    def _add_link(
        self, release_id: int, candidate: Candidate, url: str | None, guid: str, digest: str
    ) -> None:
        """This source's copy of a release: where it was found and under which id."""
        link = ReleaseLink(
            release_id=release_id,
            source_id=self.source_id,
            source_name=self.source_name,
            url=url,
            guid=guid,
            title=_fit(candidate.title, 1000),
            published_at=candidate.published,
            content_hash=digest,
            first_seen_at=self.now,
        )
        self.session.add(link)
        self._links[guid] = link

    def _remember(self, release_id: int, url: str | None, digest: str) -> None:
        if url:
            self._by_url.setdefault(url, set()).add(release_id)
        self._by_hash.setdefault(digest, set()).add(release_id)

    async def _add_topics(self, release_id: int, topic_ids: Iterable[int]) -> None:
        wanted = set(topic_ids)
        if not wanted:
            return
        have = set(
            await self.session.scalars(
                select(ReleaseTopic.topic_id).where(ReleaseTopic.release_id == release_id)
            )
        )
        for topic_id in sorted(wanted - have):
            self.session.add(ReleaseTopic(release_id=release_id, topic_id=topic_id))

    async def fold(self, survivor: Release, other: Release) -> None:
        """Make ``other`` part of ``survivor``: its links, topics and sent-to rows move."""
        session = self.session
        await session.flush()
        await session.execute(
            update(ReleaseLink)
            .where(ReleaseLink.release_id == other.id)
            .values(release_id=survivor.id)
            .execution_options(synchronize_session=False)
        )
        for link in self._links.values():
            if link.release_id == other.id:
                link.release_id = survivor.id
        topic_ids = set(
            await session.scalars(
                select(ReleaseTopic.topic_id).where(ReleaseTopic.release_id == other.id)
            )
        )
        await session.execute(delete(ReleaseTopic).where(ReleaseTopic.release_id == other.id))
        await self._add_topics(survivor.id, topic_ids)
        dialect_insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
        await session.execute(
            dialect_insert(SubscriberRelease)
            .from_select(
                ["subscriber_id", "release_id", "delivery_id"],
                select(
                    SubscriberRelease.subscriber_id,
                    literal(survivor.id),
                    SubscriberRelease.delivery_id,
                ).where(SubscriberRelease.release_id == other.id),
            )
            .on_conflict_do_nothing()
        )
        await session.execute(
            delete(SubscriberRelease).where(SubscriberRelease.release_id == other.id)
        )
        await session.execute(
            update(Release)
            .where(Release.merged_into_id == other.id)
            .values(merged_into_id=survivor.id)
            .execution_options(synchronize_session=False)
        )
        other.merged_into_id = survivor.id
        _take_best_date(survivor, other.published_at, _precision_of_release(other))
        for name in ("image_url", "image_alt", "photo_credit", "publisher", "canonical_url"):
            if getattr(survivor, name) is None and getattr(other, name) is not None:
                setattr(survivor, name, getattr(other, name))
        survivor.updated_at = self.now
        self.index.remove(other.id)
        self._merged_into[other.id] = survivor.id
        for ids in (*self._by_url.values(), *self._by_hash.values()):
            if other.id in ids:
                ids.discard(other.id)
                ids.add(survivor.id)


@dataclass
class _NewRelease:
    id: int


def _body_values(candidate: Candidate, digest: str, fingerprint: int) -> dict[str, object]:
    image = candidate.image_url
    return {
        "title": _fit(candidate.title, 1000) or "",
        "text": candidate.text,
        "html": candidate.html,
        "summary": candidate.summary,
        "image_url": image if image and len(image) <= 2000 else None,
        "image_alt": _fit(candidate.image_alt, 500),
        "photo_credit": _fit(candidate.photo_credit, 500),
        "publisher": _fit(candidate.publisher, 200),
        "content_hash": digest,
        "simhash": fingerprint,
    }


def _apply_body(release: Release, candidate: Candidate, digest: str, fingerprint: int) -> None:
    for name, value in _body_values(candidate, digest, fingerprint).items():
        setattr(release, name, value)


def _fill_missing(release: Release, candidate: Candidate, url: str | None) -> None:
    if release.canonical_url is None and url:
        release.canonical_url = url
    if release.image_url is None and candidate.image_url and len(candidate.image_url) <= 2000:
        release.image_url = candidate.image_url
        release.image_alt = _fit(candidate.image_alt, 500)
    if release.photo_credit is None and candidate.photo_credit:
        release.photo_credit = _fit(candidate.photo_credit, 500)
    if release.publisher is None and candidate.publisher:
        release.publisher = _fit(candidate.publisher, 200)


# How much a stored publication date says: first-seen estimate < a calendar day < a time.
_ESTIMATED, _DAY, _MOMENT = 0, 1, 2
# A time this close to a calendar day is that day's time (in some timezone).
_SAME_DAY = timedelta(hours=36)


def _precision_of(candidate: Candidate) -> int:
    return _DAY if candidate.published_date_only else _MOMENT


def _precision_of_release(release: Release) -> int:
    if release.published_estimated:
        return _ESTIMATED
    return _DAY if release.published_date_only else _MOMENT


def _take_best_date(release: Release, value: datetime | None, precision: int) -> None:
    """Keep the most precise date of the copies: a real date beats an estimate, and
    "15:10+03:00" beats the bare "2025-10-23" of the same day. Between equally
    precise dates (or a time days away from a bare date) the earliest wins."""
    if value is None:
        return
    current = _precision_of_release(release)
    earlier = value < release.published_at
    same_day = abs(value - release.published_at) <= _SAME_DAY
    if precision > current:
        better = current == _ESTIMATED or same_day or earlier
    elif precision == current:
        better = earlier
    else:
        better = precision != _ESTIMATED and earlier and not same_day
    if better:
        release.published_at = value
        release.published_estimated = precision == _ESTIMATED
        release.published_date_only = precision == _DAY


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


async def store_candidates(
    session: AsyncSession,
    *,
    source_id: int | None,
    source_name: str,
    candidates: Sequence[Candidate],
    now: datetime,
    isolate: bool,
) -> list[Stored | Exception]:
    """Store every candidate; one result per candidate, in order.

    ``isolate=False`` is the fast path: any failure propagates and the caller's
    transaction is lost. ``isolate=True`` wraps each candidate in a savepoint so
    that one that cannot be stored is returned as its exception and the others
    are kept; callers retry with it only after the fast path failed.
    """
    store = ReleaseStore(
        session,
        source_id=source_id,
        source_name=source_name,
        rules=await TopicRules.load(session),
        now=now,
    )
    await store.prepare(candidates)
    results: list[Stored | Exception] = []
    for candidate in candidates:
        if not isolate:
            results.append(await store.store(candidate))
            continue
        try:
            async with session.begin_nested():
                results.append(await store.store(candidate))
        except Exception as exc:
            results.append(exc)
    return results


async def source_release_counts(session: AsyncSession) -> dict[int, int]:
    """Releases each source contributed, merged copies included: the one count the
    CLI, the admin's dashboard and sources pages show (source id -> count)."""
    rows = await session.execute(
        select(ReleaseLink.source_id, func.count(distinct(ReleaseLink.release_id)))
        .where(ReleaseLink.source_id.is_not(None))
        .group_by(ReleaseLink.source_id)
    )
    return {source_id: count for source_id, count in rows}
