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
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import zip_longest
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Table,
    any_,
    bindparam,
    delete,
    distinct,
    func,
    literal_column,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import raiseload
from sqlalchemy.sql.expression import Executable

from mailer.collect.boilerplate import joined_normalised, normalise
from mailer.collect.dedupe import MAX_DISTANCE, Comparable, SimhashIndex, distance, to_unsigned
from mailer.collect.extract import Candidate
from mailer.collect.topics import TopicRules
from mailer.models import Release, ReleaseLink, ReleaseTopic, utcnow

# Near-duplicates are looked for among releases published this close to the candidate.
NEAR_DUPLICATE_WINDOW = timedelta(days=45)
# Exact text matches need at least this many words to mean "the same release".
EXACT_MATCH_MIN_WORDS = 8
_CHUNK = 500
# Stored releases whose text a candidate is compared with, closest fingerprints first.
_COMPARED = 8
# Characters of normalised text a collection run keeps of what it wrote (see
# RecentReleases.keep_text): some 16-32 MB, the texts of 10,000-20,000 releases.
_KEPT_CHARACTERS = 16_000_000
# Serialises the matching-and-storing step across processes on PostgreSQL (SQLite
# already serialises writers with BEGIN IMMEDIATE).
_STORE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mailer.collect.store").digest()[:8], "big") >> 1
_STORE_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
# Statements run once or more per source, built once (see ReleaseStore._statement).
_STATEMENTS: dict[tuple[str, str], Executable] = {}
# Releases stored since the index was last brought up to date.
_STORED_SINCE = select(
    Release.id, Release.simhash, Release.published_at, Release.merged_into_id
).where(Release.id > bindparam("max_id"))


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


class RecentReleases:
    """SimHash fingerprints of the live releases published since ``since``: where
    near-duplicates are looked for.

    One collection run shares one of these among its sources: it is loaded once and
    then brought up to date at each source's turn with the releases stored since
    (``id > max_id``, in commit order as every store holds the store lock), while
    the store updates it for the releases it changes itself. Loading the whole
    window again for every source cost as much as everything else together once
    a run had a few thousand releases. A fingerprint is only a lead: each one is
    checked against the release's current row before its text is compared."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next source loads the window again. For after a
        rolled-back transaction, whose changes the index had taken in."""
        self.index = SimhashIndex()
        self.published: dict[int, datetime] = {}
        self.since: datetime | None = None
        self.max_id = 0
        # Keys whose fingerprint was added, changed or removed since ``mark``.
        self.touched: set[int] = set()
        # Normalised texts this run wrote: release id -> (content hash, normalised
        # text, words), oldest first, at most _KEPT_CHARACTERS in all (see keep_text).
        self.texts: dict[int, tuple[str, str, int]] = {}
        self._kept_characters = 0

    def keep_text(self, release_id: int, digest: str, comparable: Comparable) -> None:
        """Keep the normalised text this run wrote for a release, under the content
        hash written with it. A later source that compares a candidate with that
        release reads its row all the same (to see it is still live and unchanged)
        but, when the row's hash is this one, does not normalise its text again: the
        same hash is the same normalised text. Only the normalised text is kept, not
        its shingles (about ten times its size), and only the newest
        _KEPT_CHARACTERS characters of them."""
        old = self.texts.pop(release_id, None)
        if old is not None:
            self._kept_characters -= len(old[1])
        self.texts[release_id] = (digest, comparable.normalised, comparable.words)
        self._kept_characters += len(comparable.normalised)
        while self._kept_characters > _KEPT_CHARACTERS:
            oldest = next(iter(self.texts))
            self._kept_characters -= len(self.texts.pop(oldest)[1])

    def kept_text(self, release_id: int, digest: str) -> Comparable | None:
        """A Comparable of the text kept for ``release_id`` if it was kept under
        ``digest`` (a new one: shingles made for one store are not kept)."""
        kept = self.texts.get(release_id)
        if kept is None or kept[0] != digest:
            return None
        return Comparable(kept[1], kept[2])

    def mark(self) -> None:
        """Start noting which entries change, for ``near_again``."""
        self.touched = set()

    async def bring_up_to_date(self, session: AsyncSession, since: datetime) -> None:
        columns = (Release.id, Release.simhash, Release.published_at)
        live = Release.merged_into_id.is_(None)
        if self.since is None:
            self.max_id = await session.scalar(select(func.max(Release.id))) or 0
            rows = await session.execute(
                select(*columns).where(live, Release.published_at >= since)
            )
            self.since = since
            self._add_all(rows)
            return
        if since < self.since:
            rows = await session.execute(
                select(*columns).where(
                    live,
                    Release.published_at >= since,
                    Release.published_at < self.since,
                    Release.id <= self.max_id,
                )
            )
            self.since = since
            self._add_all(rows)
        rows = await session.execute(_STORED_SINCE, {"max_id": self.max_id})
        for release_id, fingerprint, published, merged_into in rows:
            self.max_id = max(self.max_id, release_id)
            if merged_into is None and published >= self.since:
                self.put(release_id, fingerprint, published)
            else:
                self.forget(release_id)

    def _add_all(self, rows: Iterable[tuple[int, int, datetime]]) -> None:
        for release_id, fingerprint, published in rows:
            self.put(release_id, fingerprint, published)

    def put(self, release_id: int, fingerprint: int, published: datetime) -> None:
        self.index.add(release_id, fingerprint)
        self.published[release_id] = published
        self.touched.add(release_id)

    def forget(self, release_id: int) -> None:
        self.index.remove(release_id)
        self.published.pop(release_id, None)
        self.touched.add(release_id)

    def rename(self, old: int, new: int) -> None:
        fingerprint = self.index.value(old)
        published = self.published.get(old)
        self.forget(old)
        if fingerprint is not None and published is not None:
            self.put(new, fingerprint, published)

    def near(self, fingerprint: int, since: datetime) -> list[int]:
        """Releases published since ``since`` whose fingerprint is close, closest first."""
        return self._published_since(self.index.candidates(fingerprint), since)

    def _published_since(self, release_ids: Iterable[int], since: datetime) -> list[int]:
        published = self.published
        return [i for i in release_ids if published.get(i, since) >= since]

    def close(self, fingerprint: int) -> list[tuple[int, int]]:
        """(distance, release id) of every close fingerprint, closest first: what
        ``near`` filters, kept by a caller that asks again with ``near_again``."""
        return self.index.scored(fingerprint)

    def near_again(
        self, close: list[tuple[int, int]], fingerprint: int, since: datetime
    ) -> list[int]:
        """What ``near(fingerprint, since)`` answers now, given what ``close`` answered
        at ``mark`` or after: its entries that did not change since, and the changed
        entries checked one by one as the index would (a shared band, within
        MAX_DISTANCE). Cheaper than asking the index again, which scores every
        release sharing a band (hundreds once a run has stored thousands)."""
        touched = self.touched
        scored = [pair for pair in close if pair[1] not in touched] if touched else list(close)
        if touched:
            unsigned = to_unsigned(fingerprint)
            bands = unsigned.to_bytes(8, "little")
            for release_id in touched:
                value = self.index.value(release_id)
                if value is None:
                    continue
                apart = distance(unsigned, value)
                if apart <= MAX_DISTANCE and any(
                    map(operator.eq, bands, value.to_bytes(8, "little"))
                ):
                    scored.append((apart, release_id))
            scored.sort()
        return self._published_since((i for _, i in scored), since)


@dataclass
class _NewLink:
    """A link of this batch not yet written (see ReleaseStore.write)."""

    release_id: int
    source_id: int | None
    source_name: str
    url: str | None
    guid: str
    title: str | None
    published_at: datetime | None
    content_hash: str | None
    first_seen_at: datetime

    def row(self, real: dict[int, int]) -> dict[str, object]:
        values = dict(self.__dict__)
        values["release_id"] = real.get(self.release_id, self.release_id)
        return values


class _NewRelease(SimpleNamespace):
    """A release of this batch not yet written: it has a provisional negative id
    until ReleaseStore.write inserts it with the others."""

    id: int

    def row(self) -> dict[str, object]:
        return {name: value for name, value in vars(self).items() if name != "id"}


# A link this batch wrote: read back from the database if the same GUID comes again.
_WRITTEN = None


class ReleaseStore:
    """Matches and stores the candidates of one source run, inside one transaction.

    Matching happens in memory against what ``prepare`` loaded in a few queries;
    new releases, links and topics are written together by ``write`` (a bulk
    INSERT each), not one round trip per release. Until then a new release has a
    provisional negative id; ``real_id`` tells the one it got."""

    def __init__(
        self,
        session: AsyncSession,
        *,
        source_id: int | None,
        source_name: str,
        rules: TopicRules,
        now: datetime | None = None,
        recent: RecentReleases | None = None,
    ) -> None:
        self.session = session
        self.source_id = source_id
        self.source_name = source_name[:200]
        self.rules = rules
        self.now = now or utcnow()
        self.recent = recent if recent is not None else RecentReleases()
        self.since = self.now - NEAR_DUPLICATE_WINDOW
        self._links: dict[str, ReleaseLink | _NewLink | None] = {}
        self._by_url: dict[str, set[int]] = {}
        self._by_hash: dict[str, set[int]] = {}
        # Texts as dedupe compares them (None: no text to compare), by release id.
        self._comparables: dict[int, Comparable | None] = {}
        self._merged_into: dict[int, int] = {}
        self._loaded: dict[int, Release] = {}
        self._topics: dict[int, set[int]] = {}
        self._new: dict[int, _NewRelease] = {}
        self._new_links: list[_NewLink] = []
        self._new_topics: list[tuple[int, int]] = []
        self._next_key = -1
        self._real: dict[int, int] = {}
        bind = session.bind
        self._dialect = bind.dialect.name if bind is not None else ""
        self._sqlite = self._dialect == "sqlite"
        self._postgresql = self._dialect == "postgresql"
        # recent.close() of candidates, as prepare found it (by id of the candidate).
        self._close: dict[int, list[tuple[int, int]]] = {}

    async def prepare(self, candidates: Sequence[Candidate]) -> None:
        """Load what matching needs in a few queries instead of several per candidate."""
        if self._postgresql:
            await self.session.execute(_STORE_LOCK, {"key": _STORE_LOCK_KEY})
        guids = [_fit_guid(c.guid) for c in candidates]
        if self.source_id is not None:
            by_guid = self._statement(
                "links by guid",
                lambda: select(ReleaseLink).where(
                    ReleaseLink.source_id == bindparam("owner_id"),
                    self._in(ReleaseLink.guid, "values"),
                ),
            )
            owner: dict[str, object] = {"owner_id": self.source_id}
        else:
            by_guid = self._statement(
                "links by guid, no source row",
                lambda: select(ReleaseLink).where(
                    ReleaseLink.source_id.is_(None),
                    ReleaseLink.source_name == bindparam("owner_name"),
                    self._in(ReleaseLink.guid, "values"),
                ),
            )
            owner = {"owner_name": self.source_name}
        for chunk in _chunks(guids):
            rows = await self.session.scalars(by_guid, {"values": list(chunk), **owner})
            self._links.update({link.guid: link for link in rows})
        # The releases these links belong to: a feed read again is matched in memory.
        await self._load({link.release_id for link in self._links.values() if link})
        # Releases and links with a candidate's URL, and releases with its content
        # hash: one statement (UNION ALL, the first column telling which) per chunk.
        # Merged releases are left out here rather than in SQL: with the condition
        # ``merged_into_id IS NULL`` SQLite's planner took the index on merged_into_id
        # (true of nearly every row) over the one on the URL or the hash, and read
        # every live release twice per source.
        urls = sorted({c.url for c in candidates if c.url})
        hashes = sorted({c.content_hash for c in candidates})
        for url_chunk, hash_chunk in zip_longest(_chunks(urls), _chunks(hashes)):
            values: dict[str, object] = {}
            if url_chunk:
                values["urls"] = list(url_chunk)
            if hash_chunk:
                values["hashes"] = list(hash_chunk)
            statement = self._statement(
                "by url and hash " + " ".join(values),
                lambda keys=tuple(values): self._by_url_and_hash("urls" in keys, "hashes" in keys),
            )
            rows = await self.session.execute(statement, values)
            for is_hash, key, release_id, merged_into in rows:
                if merged_into is None:
                    found = self._by_hash if is_hash else self._by_url
                    found.setdefault(key, set()).add(release_id)
        dates = [c.published for c in candidates if c.published] + [self.now]
        self.since = min(dates) - NEAR_DUPLICATE_WINDOW
        await self.recent.bring_up_to_date(self.session, self.since)
        # The texts the candidates that nothing else matches will be compared with.
        # What the index answers is kept for storing, which only has to check the
        # entries that changed in between (recent.near_again).
        self.recent.mark()
        wanted: set[int] = set()
        for candidate in candidates:
            if self._known(candidate) or candidate.words < EXACT_MATCH_MIN_WORDS:
                continue
            close = self.recent.close(candidate.simhash)
            self._close[id(candidate)] = close
            wanted.update(self.recent.near_again(close, candidate.simhash, self.since)[:_COMPARED])
        await self._fetch_comparables(sorted(wanted - self._comparables.keys()))

    def _by_url_and_hash(self, urls: bool, hashes: bool):  # type: ignore[no-untyped-def]
        parts = []
        if urls:
            parts.append(
                select(
                    literal_column("0"),
                    Release.canonical_url,
                    Release.id,
                    Release.merged_into_id,
                ).where(self._in(Release.canonical_url, "urls"))
            )
            parts.append(
                select(
                    literal_column("0"),
                    ReleaseLink.url,
                    ReleaseLink.release_id,
                    literal_column("NULL"),
                ).where(self._in(ReleaseLink.url, "urls"))
            )
        if hashes:
            parts.append(
                select(
                    literal_column("1"),
                    Release.content_hash,
                    Release.id,
                    Release.merged_into_id,
                ).where(self._in(Release.content_hash, "hashes"))
            )
        return union_all(*parts)

    def _statement(self, name: str, build: Callable[[], Executable]) -> Executable:
        """The statement ``build`` makes for this database's dialect, built once per
        process: executing the same statement object again skips building it and
        computing its cache key (the values are given at execution)."""
        key = (self._dialect, name)
        statement = _STATEMENTS.get(key)
        if statement is None:
            statement = _STATEMENTS[key] = build()
        return statement

    def _in(self, column, name: str):  # type: ignore[no-untyped-def]
        """``column IN :name``, the list given at execution. On PostgreSQL
        ``column = ANY(:name)``: one statement text whatever the number of values,
        so asyncpg's prepared statements are reused instead of an ``IN (…)`` of
        another length being rendered, prepared and planned for each chunk; on
        SQLite an expanding ``IN``."""
        if self._postgresql:
            return column == any_(bindparam(name, type_=ARRAY(column.type)))
        return column.in_(bindparam(name, expanding=True))

    def _known(self, candidate: Candidate) -> bool:
        return (
            _fit_guid(candidate.guid) in self._links
            or bool(candidate.url and self._by_url.get(candidate.url))
            or bool(self._by_hash.get(candidate.content_hash))
        )

    def _link_owner(self):  # type: ignore[no-untyped-def]
        if self.source_id is not None:
            return ReleaseLink.source_id == self.source_id
        return (ReleaseLink.source_id.is_(None)) & (ReleaseLink.source_name == self.source_name)

    def _live(self, release_id: int) -> int:
        release_id = self._real.get(release_id, release_id)
        while release_id in self._merged_into:
            release_id = self._merged_into[release_id]
        return release_id

    def real_id(self, release_id: int) -> int:
        """The id a release got when written (ids of stored releases stay as they are)."""
        return self._real.get(release_id, release_id)

    async def _link(self, guid: str) -> ReleaseLink | _NewLink | None:
        if guid in self._links and self._links[guid] is _WRITTEN:
            self._links[guid] = await self.session.scalar(
                select(ReleaseLink).where(self._link_owner(), ReleaseLink.guid == guid)
            )
        return self._links.get(guid)

    async def store(self, candidate: Candidate) -> Stored:
        guid = _fit_guid(candidate.guid)
        url = candidate.url if candidate.url and len(candidate.url) <= 2000 else None
        digest = candidate.content_hash
        fingerprint = candidate.simhash
        link = await self._link(guid)

        matched: list[int] = []
        if link is not None:
            matched.append(link.release_id)
        if url:
            matched.extend(sorted(self._by_url.get(url, ())))
        if candidate.words >= EXACT_MATCH_MIN_WORDS:
            matched.extend(sorted(self._by_hash.get(digest, ())))
        matched = list(dict.fromkeys(self._live(i) for i in matched))
        if not matched:
            matched = await self._near_duplicates(candidate, fingerprint)
        if len(matched) > 1:
            # Folding works on written rows.
            await self.write()
            matched = list(dict.fromkeys(self._live(i) for i in matched))
            link = await self._link(guid)

        releases = await self._load(matched)
        if not releases:
            release_id = self._create(candidate, guid, url, digest, fingerprint)
            return Stored(Outcome.NEW, release_id)

        # The earliest publication wins; between equal dates, the first stored.
        survivor = min(releases, key=lambda r: (r.published_at, r.id < 0, abs(r.id)))
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
            self._dated(survivor)
            await self._add_topics(survivor.id, _topics_of(self.rules, candidate))
            return Stored(Outcome.MERGED, survivor.id)

        link.release_id = survivor.id
        unchanged = link.content_hash == digest and link.title == _fit(candidate.title, 1000)
        if candidate.published is not None:
            link.published_at = candidate.published
            _take_best_date(survivor, candidate.published, _precision_of(candidate))
            self._dated(survivor)
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
            self.recent.put(survivor.id, fingerprint, survivor.published_at)
            self._comparables[survivor.id] = comparable = _comparable(candidate)
            if comparable is not None and survivor.id > 0:
                self.recent.keep_text(survivor.id, digest, comparable)
            self._remember(survivor.id, url, digest)
            await self._add_topics(survivor.id, _topics_of(self.rules, candidate))
        return Stored(Outcome.UPDATED, survivor.id)

    def _dated(self, release: Release | _NewRelease) -> None:
        if release.id in self.recent.published:
            self.recent.published[release.id] = release.published_at

    async def _near_duplicates(self, candidate: Candidate, fingerprint: int) -> list[int]:
        if candidate.words < EXACT_MATCH_MIN_WORDS:
            return []
        close = self._close.get(id(candidate))
        if close is None:
            near = self.recent.near(fingerprint, self.since)
        else:
            near = self.recent.near_again(close, fingerprint, self.since)
        for release_id in near[:_COMPARED]:
            if release_id not in self._comparables:
                await self._fetch_comparables([release_id])
            stored = self._comparables.get(release_id)
            if stored is not None and candidate.comparable.is_near_duplicate(stored):
                return [self._live(release_id)]
        return []

    async def _fetch_comparables(self, ids: Sequence[int]) -> None:
        """The current text of stored releases the index points at. An index entry
        that is out of date (the release was merged, changed or is gone) is mended
        here, and only a text whose fingerprint is still close is kept."""
        stored_ids = [i for i in ids if i > 0]
        found: set[int] = set()
        statement = self._statement(
            "texts by id",
            lambda: select(
                Release.id,
                Release.text,
                Release.simhash,
                Release.merged_into_id,
                Release.content_hash,
            ).where(self._in(Release.id, "ids")),
        )
        for chunk in _chunks(stored_ids):
            rows = await self.session.execute(statement, {"ids": list(chunk)})
            for release_id, stored_text, fingerprint, merged_into, digest in rows:
                found.add(release_id)
                indexed = self.recent.index.value(release_id)
                if merged_into is not None:
                    self.recent.forget(release_id)
                    self._comparables[release_id] = None
                    continue
                if indexed is not None and indexed != to_unsigned(fingerprint):
                    published = self.recent.published[release_id]
                    self.recent.put(release_id, fingerprint, published)
                comparable = None
                if stored_text:
                    comparable = self.recent.kept_text(release_id, digest) or Comparable.of(
                        stored_text
                    )
                self._comparables[release_id] = comparable
        for release_id in ids:
            if release_id not in found and release_id not in self._new:
                self.recent.forget(release_id)
                self._comparables.setdefault(release_id, None)

    async def _load(self, ids: Iterable[int]) -> list[Release | _NewRelease]:
        ids = list(ids)
        missing = [i for i in ids if i > 0 and i not in self._loaded]
        statement = self._statement(
            "releases by id",
            lambda: select(Release).where(self._in(Release.id, "ids")).options(raiseload("*")),
        )
        for chunk in _chunks(missing):
            rows = await self.session.scalars(statement, {"ids": list(chunk)})
            self._loaded.update({release.id: release for release in rows})
        found: list[Release | _NewRelease] = []
        for release_id in ids:
            release = self._new.get(release_id) or self._loaded.get(release_id)
            if release is not None:
                found.append(release)
        return found

    async def _sole_link(self, release_id: int) -> bool:
        pending = sum(1 for link in self._new_links if link.release_id == release_id)
        if release_id in self._new:
            return pending <= 1
        stored = await self.session.scalars(
            select(ReleaseLink.id).where(ReleaseLink.release_id == release_id).limit(2)
        )
        return len(stored.all()) + pending <= 1

    def _create(
        self, candidate: Candidate, guid: str, url: str | None, digest: str, fingerprint: int
    ) -> int:
        key = self._next_key
        self._next_key -= 1
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
        release = _NewRelease(id=key, **values)
        self._new[key] = release
        self._add_link(key, candidate, url, guid, digest)
        self._topics[key] = set()
        self._add_new_topics(key, _topics_of(self.rules, candidate))
        self.recent.put(key, fingerprint, release.published_at)
        self._comparables[key] = _comparable(candidate)
        self._remember(key, url, digest)
        return key

    def _add_link(
        self, release_id: int, candidate: Candidate, url: str | None, guid: str, digest: str
    ) -> None:
        """This source's copy of a release: where it was found and under which id."""
        link = _NewLink(
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
        self._new_links.append(link)
        self._links[guid] = link

    def _remember(self, release_id: int, url: str | None, digest: str) -> None:
        if url:
            self._by_url.setdefault(url, set()).add(release_id)
        self._by_hash.setdefault(digest, set()).add(release_id)

    async def _add_topics(self, release_id: int, topic_ids: Iterable[int]) -> None:
        wanted = set(topic_ids)
        if not wanted:
            return
        if release_id not in self._topics:
            self._topics[release_id] = set(
                await self.session.scalars(
                    select(ReleaseTopic.topic_id).where(ReleaseTopic.release_id == release_id)
                )
            )
        self._add_new_topics(release_id, wanted)

    def _add_new_topics(self, release_id: int, topic_ids: Iterable[int]) -> None:
        have = self._topics[release_id]
        for topic_id in sorted(set(topic_ids) - have):
            have.add(topic_id)
            self._new_topics.append((release_id, topic_id))

    async def write(self) -> None:
        """Insert this batch's new releases, links and topics, a statement each."""
        new, self._new = self._new, {}
        links, self._new_links = self._new_links, []
        topics, self._new_topics = self._new_topics, []
        if not (new or links or topics):
            return
        connection = await self.session.connection()
        if new:
            rows = [release.row() for release in new.values()]
            ids = await _RELEASES.insert(connection, rows, with_ids=True)
            self._renumber(dict(zip(new, ids, strict=True)))
            for release, release_id in zip(new.values(), ids, strict=True):
                comparable = self._comparables.get(release_id)
                if comparable is not None and release.text:
                    self.recent.keep_text(release_id, str(release.content_hash), comparable)
        if links:
            for link in links:
                self._links[link.guid] = _WRITTEN
            await _LINKS.insert(connection, [link.row(self._real) for link in links])
        if topics:
            await _TOPICS.insert(
                connection,
                [
                    {"release_id": self.real_id(release_id), "topic_id": topic_id}
                    for release_id, topic_id in topics
                ],
            )

    def _renumber(self, real: dict[int, int]) -> None:
        """Provisional ids become the written ones wherever this store keeps them."""
        self._real.update(real)
        for ids in (*self._by_url.values(), *self._by_hash.values()):
            for old in ids & real.keys():
                ids.discard(old)
                ids.add(real[old])
        for old, new in real.items():
            self.recent.rename(old, new)
            if old in self._comparables:
                self._comparables[new] = self._comparables.pop(old)
            if old in self._topics:
                self._topics[new] = self._topics.pop(old)

    async def fold(self, survivor: Release, other: Release) -> None:
        """Make ``other`` part of ``survivor``: its links and topics move."""
        session = self.session
        await self.write()
        await session.flush()
        await session.execute(
            update(ReleaseLink)
            .where(ReleaseLink.release_id == other.id)
            .values(release_id=survivor.id)
            .execution_options(synchronize_session=False)
        )
        for link in self._links.values():
            if link is not None and link.release_id == other.id:
                link.release_id = survivor.id
        topic_ids = set(
            await session.scalars(
                select(ReleaseTopic.topic_id).where(ReleaseTopic.release_id == other.id)
            )
        )
        await session.execute(delete(ReleaseTopic).where(ReleaseTopic.release_id == other.id))
        self._topics.pop(other.id, None)
        await self._add_topics(survivor.id, topic_ids)
        # Nothing about readers moves: planning counts a press release as sent
        # when any of its copies was (mailer.digest, "Merges").
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
        self.recent.forget(other.id)
        self._dated(survivor)
        self._merged_into[other.id] = survivor.id
        for ids in (*self._by_url.values(), *self._by_hash.values()):
            if other.id in ids:
                ids.discard(other.id)
                ids.add(survivor.id)


# (column key, scalar default or None, bind processor or None)
_Spec = tuple[str, Any, Any]


class _DriverInsert:
    """A multi-row INSERT into ``table`` handed to the driver as SQL text with plain
    tuples: SQLAlchemy's executemany of a compiled INSERT cost more CPU per row
    (parameters built and processed per row, insertmanyvalues batching) than the
    rest of writing a batch.

    Values go through each column's own bind processor, and a column a row leaves
    out takes its scalar Python default, so the stored values are the ones the
    compiled INSERT stored. With ``with_ids`` the new rows' ids come back in row
    order: on PostgreSQL they are drawn from the table's sequence first
    (``nextval`` once per row, in order: the ids the INSERT would have drawn) and
    inserted explicitly; on SQLite a multi-row ``INSERT … RETURNING id`` is used,
    whose ids in ascending order are the rows' in order (SQLite numbers the rows
    it inserts upwards, and the transaction holds the write lock). The SQL is made
    from this table's own names, never from data."""

    # SQLite's limit on host parameters in one statement (since 3.32).
    _SQLITE_PARAMETERS = 32766

    def __init__(self, table: Table) -> None:
        self.table = table
        self._prepared: dict[tuple[str, bool], tuple[str, list[_Spec]]] = {}

    def _prepare(self, dialect: Dialect, explicit_id: bool) -> tuple[str, list[_Spec]]:
        """``INSERT INTO table (columns) VALUES`` and, per column, (key, default,
        bind processor)."""
        key = (dialect.name, explicit_id)
        if key not in self._prepared:
            generated = self.table.autoincrement_column
            specs = []
            for column in self.table.columns:
                if column is generated and not explicit_id:
                    continue
                default = column.default
                value = default.arg if default is not None and default.is_scalar else None
                specs.append((column.key, value, column.type._cached_bind_processor(dialect)))
            quote = dialect.identifier_preparer
            names = ", ".join(quote.quote(self.table.c[name].name) for name, _, _ in specs)
            table = quote.format_table(self.table)
            self._prepared[key] = (f"INSERT INTO {table} ({names}) VALUES ", specs)  # noqa: S608
        return self._prepared[key]

    @staticmethod
    def _tuples(specs: list[_Spec], rows: Iterable[dict[str, object]]) -> list[tuple[object, ...]]:
        return [
            tuple(
                process(row.get(name, default)) if process is not None else row.get(name, default)
                for name, default, process in specs
            )
            for row in rows
        ]

    async def insert(
        self,
        connection: AsyncConnection,
        rows: Sequence[dict[str, object]],
        *,
        with_ids: bool = False,
    ) -> list[int]:
        dialect = connection.dialect
        ids: list[int] = []
        if dialect.name == "postgresql":
            if with_ids:
                result = await connection.exec_driver_sql(
                    "SELECT nextval(pg_get_serial_sequence($1, 'id'))"
                    " FROM generate_series(1, $2::integer)",
                    (self.table.name, len(rows)),
                )
                ids = sorted(result.scalars().all())
                rows = [{**row, "id": i} for row, i in zip(rows, ids, strict=True)]
            insert, specs = self._prepare(dialect, explicit_id=with_ids)
            marks = ", ".join(f"${n}" for n in range(1, len(specs) + 1))
            await connection.exec_driver_sql(f"{insert}({marks})", self._tuples(specs, rows))
            return ids
        insert, specs = self._prepare(dialect, explicit_id=False)
        marks = "(" + ", ".join("?" * len(specs)) + ")"
        tuples = self._tuples(specs, rows)
        per_statement = self._SQLITE_PARAMETERS // len(specs)
        for start in range(0, len(tuples), per_statement):
            chunk = tuples[start : start + per_statement]
            statement = insert + ", ".join([marks] * len(chunk))
            flat = tuple(value for values in chunk for value in values)
            if with_ids:
                result = await connection.exec_driver_sql(statement + " RETURNING id", flat)
                ids.extend(sorted(result.scalars().all()))
            else:
                await connection.exec_driver_sql(statement, flat)
        return ids


_RELEASES = _DriverInsert(Release.__table__)
_LINKS = _DriverInsert(ReleaseLink.__table__)
_TOPICS = _DriverInsert(ReleaseTopic.__table__)


def _topics_of(rules: TopicRules, candidate: Candidate) -> list[int]:
    """``rules.match(title, text)``, reusing the text as dedupe normalised it."""
    text = candidate.comparable.normalised if candidate.text else ""
    return rules.match_normalised(joined_normalised(normalise(candidate.title), text))


def _comparable(candidate: Candidate) -> Comparable | None:
    return candidate.comparable if candidate.text else None


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
    recent: RecentReleases | None = None,
) -> list[Stored | Exception]:
    """Store every candidate; one result per candidate, in order.

    ``isolate=False`` is the fast path: any failure propagates and the caller's
    transaction is lost. ``isolate=True`` wraps each candidate in a savepoint so
    that one that cannot be stored is returned as its exception and the others
    are kept; callers retry with it only after the fast path failed. ``recent``
    carries the near-duplicate index from one source's batch to the next.
    """
    store = ReleaseStore(
        session,
        source_id=source_id,
        source_name=source_name,
        rules=await TopicRules.load(session),
        now=now,
        recent=recent,
    )
    await store.prepare(candidates)
    results: list[Stored | Exception] = []
    for candidate in candidates:
        if not isolate:
            results.append(await store.store(candidate))
            continue
        try:
            async with session.begin_nested():
                stored = await store.store(candidate)
                await store.write()
        except Exception as exc:
            results.append(exc)
        else:
            results.append(stored)
    await store.write()
    return [
        Stored(result.outcome, store.real_id(result.release_id))
        if isinstance(result, Stored)
        else result
        for result in results
    ]


async def source_release_counts(session: AsyncSession) -> dict[int, int]:
    """Releases each source contributed, merged copies included: the one count the
    CLI, the admin's dashboard and sources pages show (source id -> count)."""
    rows = await session.execute(
        select(ReleaseLink.source_id, func.count(distinct(ReleaseLink.release_id)))
        .where(ReleaseLink.source_id.is_not(None))
        .group_by(ReleaseLink.source_id)
    )
    return {source_id: count for source_id, count in rows}
