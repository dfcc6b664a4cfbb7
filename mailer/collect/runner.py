"""Running sources: fetch or read, extract, store, and record the source's health.

A run of one source never raises for that source's problems and never waits on
another source: each run has its own time limits, and ``collect_all`` runs them
side by side. Two runs of one source never overlap, neither in one process (a
set of running names per event loop) nor across processes (a lease row in the
``locks`` table).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.collect.extract import Candidate, EntryError
from mailer.collect.feeds import ParsedEntries, SourceError, parse_feed
from mailer.collect.fetch import Fetcher, FetchError, FetchPolicy, user_agent
from mailer.collect.files import is_supported, read_release_file
from mailer.collect.guard import AddressPolicy, OutsideFolderRoots, inside_roots
from mailer.collect.pages import extract_page, listing_links
from mailer.collect.store import Outcome, RecentReleases, store_candidates
from mailer.config import Settings
from mailer.db import Database
from mailer.models import Lock, ReleaseLink, Source, SourceKind, SourceStatus, utcnow

log = logging.getLogger(__name__)

COLLECT_CONCURRENCY = 8
LEASE = timedelta(minutes=15)
# Kept on the source row so that `mailer sources` and the admin can show them.
KEPT_MESSAGES = 20
COLLECTABLE_KINDS = SourceKind.collected()
FEED_ACCEPT = (
    "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9,"
    " application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"
)
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"


@dataclass
class SourceRunResult:
    source: str
    kind: str | None = None
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    # Copies of releases another source had already brought: linked, not new.
    merged: int = 0
    failed: int = 0
    # Why the source as a whole failed this run (None: it was read).
    error: str | None = None
    entry_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    new_release_ids: list[int] = field(default_factory=list)
    # Not run: already running elsewhere, disabled or unknown (see error).
    skipped: bool = False
    # This run disabled the source (HTTP 410).
    disabled: bool = False
    # The source answered 304 / the file did not change.
    not_modified: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> dict[str, Any]:
        return {
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "merged": self.merged,
            "failed": self.failed,
            "not_modified": self.not_modified,
            "errors": self.entry_errors[:KEPT_MESSAGES],
            "warnings": self.warnings[:KEPT_MESSAGES],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Gathered:
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchanged: int = 0
    not_modified: bool = False
    # New conditional-GET validators to keep (only when everything was read).
    etag: str | None = None
    last_modified: str | None = None
    keep_validators: bool = False
    seen_files: dict[str, Any] | None = None


ProgressCallback = Callable[[str, "SourceRunResult | None"], None]

_RUNNING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[str]]
_RUNNING = weakref.WeakKeyDictionary()


_STORE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]]
_STORE_LOCKS = weakref.WeakKeyDictionary()


def store_lock(database: Database) -> asyncio.Lock:
    """One collector write transaction at a time per database in this process.

    Writers queue here instead of in SQLite's busy handler, which sleeps in coarse
    steps and lets a busy stream of other writers starve it; and the matching step
    sees every release stored before it. Other processes are kept in step by
    SQLite's write lock or PostgreSQL's advisory lock (see store.py)."""
    locks = _STORE_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(str(database.url), asyncio.Lock())


@asynccontextmanager
async def _writing(database: Database) -> AsyncIterator[AsyncSession]:
    async with store_lock(database), database.transaction() as session:
        yield session


def _running_set() -> set[str]:
    return _RUNNING.setdefault(asyncio.get_running_loop(), set())


def _lock_name(name: str) -> str:
    wanted = f"collect:{name}"
    if len(wanted) <= 100:
        return wanted
    return "collect:" + hashlib.sha256(name.encode()).hexdigest()[:64]


def _holder() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


async def collect_source(
    database: Database,
    settings: Settings,
    name: str,
    *,
    fetcher: Fetcher | None = None,
    recent: RecentReleases | None = None,
) -> SourceRunResult:
    """Collect one enabled source now and record its health on the Source row.

    ``recent``: the near-duplicate index of a run of several sources (collect_all)."""
    started = time.monotonic()
    result = SourceRunResult(source=name)
    running = _running_set()
    key = f"{database.url}|{name}"
    if key in running:
        result.skipped = True
        result.error = "skipped: a collection of this source is already running"
        return result
    running.add(key)
    lease = _Lease(_lock_name(name), _holder())
    try:
        source = await _take_lease(database, name, lease)
        if source is None:
            result.skipped = True
            result.error = f"no enabled source named {name!r}"
            return result
        result.kind = source.kind
        if not lease.held:
            result.skipped = True
            result.error = "skipped: another process is collecting this source"
            return result
        try:
            await _run(database, settings, source, result, fetcher, recent, lease)
        finally:
            if lease.held:
                await _drop_lease(database, name, lease)
    finally:
        running.discard(key)
        result.seconds = time.monotonic() - started
    return result


async def collect_all(
    database: Database,
    settings: Settings,
    only: str | None = None,
    progress: ProgressCallback | None = None,
    *,
    concurrency: int = COLLECT_CONCURRENCY,
) -> list[SourceRunResult]:
    """Collect every enabled source (or just ``only``), several at a time.

    ``progress(name, None)`` is called when a source starts and
    ``progress(name, result)`` when it is done. Results come in source-name order.
    """
    async with database.session() as session:
        query = select(Source.name).where(Source.enabled, Source.kind.in_(COLLECTABLE_KINDS))
        if only is not None:
            query = query.where(Source.name == only)
        names = list((await session.scalars(query.order_by(Source.name))).all())
    slots = asyncio.Semaphore(max(1, concurrency))
    recent = RecentReleases()
    async with Fetcher(
        agent=user_agent(settings.site.base_url), addresses=address_policy(settings)
    ) as fetcher:

        async def one(name: str) -> SourceRunResult:
            async with slots:
                if progress:
                    progress(name, None)
                try:
                    outcome = await collect_source(
                        database, settings, name, fetcher=fetcher, recent=recent
                    )
                except Exception as exc:
                    # Only a database failure gets here; the other sources still run.
                    log.exception("collecting %s failed", name)
                    outcome = SourceRunResult(source=name, error=f"internal error: {exc}")
                if progress:
                    progress(name, outcome)
                return outcome

        return list(await asyncio.gather(*(one(name) for name in names)))


@dataclass
class _Lease:
    """A run's hold on its source's row in ``locks``. The transaction that records
    the run's outcome also ends the lease (one transaction fewer per source); only
    when that fails does a transaction of its own drop it."""

    name: str
    holder: str
    held: bool = False

    async def end_in(self, session: AsyncSession) -> None:
        """Delete the lock row in ``session``'s transaction; the caller clears
        ``held`` once that has committed."""
        connection = await session.connection()
        await connection.execute(_END_LEASE, {"lock_name": self.name, "lock_holder": self.holder})


# The statements run once per source, built once: executing a statement object again
# skips building it and computing its cache key, and running Core statements on the
# session's connection skips the ORM's per-statement work.
_LOCKS = Lock.__table__
_END_LEASE = delete(_LOCKS).where(
    _LOCKS.c.name == bindparam("lock_name"), _LOCKS.c.holder == bindparam("lock_holder")
)
_SOURCE_TO_RUN = select(Source).where(
    Source.name == bindparam("source_name"), Source.enabled, Source.kind.in_(COLLECTABLE_KINDS)
)
# The run's record: ``UPDATE sources SET <the keys given> WHERE id = :source_id``.
_RECORD = update(Source.__table__).where(Source.__table__.c.id == bindparam("source_id"))


def _lease_statement(dialect: str):  # type: ignore[no-untyped-def]
    """Take the lease: insert the lock row, or take it over once it has expired.
    RETURNING gives a row only when this holder's row was written (inserted, or
    taken over): that is holding the lease, without reading it back."""
    if dialect not in _TAKE_LEASE:
        insert = sqlite_insert if dialect == "sqlite" else pg_insert
        statement = insert(_LOCKS).values(
            name=bindparam("lock_name"),
            holder=bindparam("lock_holder"),
            expires_at=bindparam("lock_expires"),
        )
        _TAKE_LEASE[dialect] = statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
            where=_LOCKS.c.expires_at < bindparam("lock_now"),
        ).returning(_LOCKS.c.holder)
    return _TAKE_LEASE[dialect]


_TAKE_LEASE: dict[str, Any] = {}


async def _take_lease(database: Database, name: str, lease: _Lease) -> Source | None:
    """The enabled source named ``name`` (None: there is none) and, in the same
    transaction, the lease on it (``lease.held`` says whether it was free)."""
    now = utcnow()
    async with _writing(database) as session:
        source = await session.scalar(_SOURCE_TO_RUN, {"source_name": name})
        if source is None:
            return None
        connection = await session.connection()
        result = await connection.execute(
            _lease_statement(database.dialect),
            {
                "lock_name": lease.name,
                "lock_holder": lease.holder,
                "lock_expires": now + LEASE,
                "lock_now": now,
            },
        )
        current = result.scalar()
    lease.held = current == lease.holder
    return source


async def _drop_lease(database: Database, name: str, lease: _Lease) -> None:
    try:
        async with _writing(database) as session:
            await lease.end_in(session)
        lease.held = False
    except Exception:
        # The lease expires by itself; a stuck row only delays the next run.
        log.exception("could not release the collection lease of %s", name)


def _zone(options: dict[str, Any]) -> tzinfo:
    try:
        return ZoneInfo(str(options.get("timezone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


async def _run(
    database: Database,
    settings: Settings,
    source: Source,
    result: SourceRunResult,
    fetcher: Fetcher | None,
    recent: RecentReleases | None,
    lease: _Lease | None = None,
) -> None:
    options = dict(source.options or {})
    policy = FetchPolicy().with_options(options)
    gathered: _Gathered | None = None
    own_fetcher = None
    try:
        if fetcher is None and source.kind in ("feed", "page") and source.url:
            own_fetcher = fetcher = Fetcher(
                policy,
                agent=user_agent(settings.site.base_url),
                addresses=address_policy(settings),
            )
        gathered = await _gather(database, settings, source, options, policy, fetcher)
    except FetchError as exc:
        result.error = str(exc)
        result.disabled = exc.gone
    except SourceError as exc:
        result.error = str(exc)
    except Exception as exc:
        log.exception("source %s: unexpected failure", source.name)
        result.error = f"unexpected error: {type(exc).__name__}: {exc}"
    finally:
        if own_fetcher is not None:
            await own_fetcher.aclose()
    if gathered is None:
        await _record_failure(database, source.id, result, lease)
        return
    result.entry_errors.extend(gathered.errors)
    result.warnings.extend(gathered.warnings)
    result.failed += len(gathered.errors)
    result.unchanged += gathered.unchanged
    result.not_modified = gathered.not_modified
    await _store_and_record(database, source, gathered, result, recent, lease)


def address_policy(settings: Settings) -> AddressPolicy:
    return AddressPolicy.from_entries(settings.collector.allow_private_hosts)


def _allowed_path(settings: Settings, raw: str | None) -> Path:
    try:
        return inside_roots(Path(raw or ""), settings.folder_roots)
    except OutsideFolderRoots as exc:
        raise SourceError(str(exc)) from None


async def _gather(
    database: Database,
    settings: Settings,
    source: Source,
    options: dict[str, Any],
    policy: FetchPolicy,
    fetcher: Fetcher | None,
) -> _Gathered:
    zone = _zone(options)
    encoding = options.get("encoding") or None
    if source.kind == "folder":
        return _gather_folder(source, _allowed_path(settings, source.path), settings, zone)
    if source.kind == "feed" and not source.url:
        return _gather_feed_file(source, _allowed_path(settings, source.path), zone, encoding)
    assert fetcher is not None and source.url
    if source.kind == "feed":
        return await _gather_feed(source, policy, fetcher, zone, encoding)
    return await _gather_pages(database, source, options, policy, fetcher, zone)


def _apply(gathered: _Gathered, parsed: ParsedEntries) -> _Gathered:
    gathered.candidates.extend(parsed.candidates)
    gathered.errors.extend(parsed.errors)
    gathered.warnings.extend(parsed.warnings)
    return gathered


async def _gather_feed(
    source: Source, policy: FetchPolicy, fetcher: Fetcher, zone: tzinfo, encoding: str | None
) -> _Gathered:
    assert source.url
    response = await fetcher.get(
        source.url,
        etag=source.etag,
        last_modified=source.last_modified,
        accept=FEED_ACCEPT,
        policy=policy,
    )
    gathered = _Gathered(etag=source.etag, last_modified=source.last_modified)
    if response.not_modified:
        gathered.not_modified = True
        return gathered
    parsed = parse_feed(
        response.content,
        url=response.url,
        content_type=response.content_type,
        charset=response.charset,
        encoding=encoding,
        default_tz=zone,
    )
    gathered.etag, gathered.last_modified = response.etag, response.last_modified
    gathered.keep_validators = True
    return _apply(gathered, parsed)


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _unchanged_file(path: Path, seen: dict[str, Any] | None) -> tuple[bool, dict[str, Any]]:
    """Same size and time as last run, or the same bytes after a mere touch."""
    fingerprint = _fingerprint(path)
    if seen and seen.get("size") == fingerprint["size"]:
        if seen.get("mtime_ns") == fingerprint["mtime_ns"]:
            return True, seen
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if seen.get("sha256") == digest:
            return True, {**seen, **fingerprint}
    fingerprint["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return False, fingerprint


def _gather_feed_file(source: Source, path: Path, zone: tzinfo, encoding: str | None) -> _Gathered:
    if not path.is_file():
        raise SourceError(f"feed file {path} does not exist")
    seen = dict(source.seen_files or {})
    unchanged, fingerprint = _unchanged_file(path, seen.get(str(path)))
    gathered = _Gathered(seen_files={str(path): fingerprint})
    if unchanged:
        gathered.not_modified = True
        return gathered
    try:
        parsed = parse_feed(path.read_bytes(), url=None, encoding=encoding, default_tz=zone)
    except SourceError as exc:
        raise SourceError(f"{path}: {exc}") from None
    return _apply(gathered, parsed)


def _gather_folder(source: Source, folder: Path, settings: Settings, zone: tzinfo) -> _Gathered:
    if not folder.is_dir():
        raise SourceError(f"folder {folder} does not exist or is not a folder")
    previous = dict(source.seen_files or {})
    gathered = _Gathered(seen_files={})
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and is_supported(p) and not any(part.startswith(".") for part in p.parts)
    )
    for path in files:
        relative = path.relative_to(folder).as_posix()
        try:
            # A symlink inside the folder must not lead out of the allowed folders.
            inside_roots(path, settings.folder_roots)
        except OutsideFolderRoots:
            gathered.errors.append(f"{relative}: skipped, a link to a file outside the folder")
            continue
        try:
            unchanged, fingerprint = _unchanged_file(path, previous.get(relative))
        except OSError as exc:
            gathered.errors.append(f"{relative}: cannot read: {exc.strerror or exc}")
            continue
        assert gathered.seen_files is not None
        gathered.seen_files[relative] = fingerprint
        if unchanged:
            gathered.unchanged += 1
            continue
        try:
            parsed = read_release_file(
                path, guid=f"file:{relative}", label=relative, default_tz=zone
            )
        except EntryError as exc:
            gathered.errors.append(str(exc))
            continue
        _apply(gathered, parsed)
    return gathered


async def _gather_pages(
    database: Database,
    source: Source,
    options: dict[str, Any],
    policy: FetchPolicy,
    fetcher: Fetcher,
    zone: tzinfo,
) -> _Gathered:
    assert source.url
    selector = str(options.get("link_selector") or "")
    if not selector:
        raise SourceError("a page source needs a link_selector")
    listing = await fetcher.get(
        source.url,
        etag=source.etag,
        last_modified=source.last_modified,
        accept=PAGE_ACCEPT,
        policy=policy,
    )
    gathered = _Gathered(etag=source.etag, last_modified=source.last_modified)
    if listing.not_modified:
        gathered.not_modified = True
        return gathered
    encoding = options.get("encoding") or None
    links = listing_links(
        listing.content, url=listing.url, selector=selector, charset=encoding or listing.charset
    )
    async with database.session() as session:
        known = set(
            await session.scalars(
                select(ReleaseLink.guid).where(
                    ReleaseLink.source_id == source.id, ReleaseLink.guid.in_(links)
                )
            )
        )
    fresh = [link for link in links if link not in known]
    gathered.unchanged = len(links) - len(fresh)
    limit = int(options.get("max_pages") or 30)
    if len(fresh) > limit:
        gathered.warnings.append(
            f"{len(fresh)} new pages; read the first {limit}, the rest on the next runs"
        )
    batch = fresh[:limit]

    async def read(link: str) -> Candidate | str:
        try:
            page = await fetcher.get(link, accept=PAGE_ACCEPT, policy=policy)
            return extract_page(
                page.content,
                url=page.url,
                charset=encoding or page.charset,
                default_tz=zone,
                guid=link,
            )
        except (FetchError, EntryError) as exc:
            return f"{link}: {exc}"
        except Exception as exc:
            log.exception("page %s: unexpected failure", link)
            return f"{link}: could not be read ({type(exc).__name__}: {exc})"

    for outcome in await asyncio.gather(*(read(link) for link in batch)):
        if isinstance(outcome, str):
            gathered.errors.append(outcome)
        else:
            gathered.candidates.append(outcome)
            gathered.warnings.extend(outcome.warnings)
    # Keep the listing's validators only if every page was read: otherwise the next
    # run would get a 304 and never retry the pages that failed or were left over.
    gathered.keep_validators = not gathered.errors and len(fresh) <= limit
    if gathered.keep_validators:
        gathered.etag, gathered.last_modified = listing.etag, listing.last_modified
    return gathered


async def _store_and_record(
    database: Database,
    source: Source,
    gathered: _Gathered,
    result: SourceRunResult,
    recent: RecentReleases | None = None,
    lease: _Lease | None = None,
) -> None:
    async with store_lock(database):
        await _store_and_record_locked(database, source, gathered, result, recent, lease)


async def _store_and_record_locked(
    database: Database,
    source: Source,
    gathered: _Gathered,
    result: SourceRunResult,
    recent: RecentReleases | None,
    lease: _Lease | None,
) -> None:
    try:
        await _store_in_transaction(
            database, source, gathered, result, recent, lease, isolate=False
        )
    except Exception:
        # Something in the batch cannot be stored (the transaction is gone): do it
        # again one savepoint per release, so only that release is lost.
        log.exception("source %s: storing the batch failed; retrying one by one", source.name)
        if recent is not None:
            recent.reset()
        await _store_in_transaction(database, source, gathered, result, recent, lease, isolate=True)


async def _store_in_transaction(
    database: Database,
    source: Source,
    gathered: _Gathered,
    result: SourceRunResult,
    recent: RecentReleases | None,
    lease: _Lease | None,
    *,
    isolate: bool,
) -> None:
    now = utcnow()
    outcome = SourceRunResult(source=result.source)
    async with database.transaction() as session:
        if gathered.candidates:
            stored_all = await store_candidates(
                session,
                source_id=source.id,
                source_name=source.name,
                candidates=gathered.candidates,
                now=now,
                isolate=isolate,
                recent=recent,
            )
            for candidate, stored in zip(gathered.candidates, stored_all, strict=True):
                if isinstance(stored, Exception):
                    outcome.failed += 1
                    outcome.entry_errors.append(f"{candidate.guid}: could not be stored ({stored})")
                elif stored.outcome is Outcome.NEW:
                    outcome.new += 1
                    outcome.new_release_ids.append(stored.release_id)
                elif stored.outcome is Outcome.UPDATED:
                    outcome.updated += 1
                elif stored.outcome is Outcome.MERGED:
                    outcome.merged += 1
                else:
                    outcome.unchanged += 1
        counts = (outcome.new, outcome.updated, outcome.merged, outcome.unchanged, outcome.failed)
        final = SourceRunResult(**{**result.__dict__})
        final.new, final.updated, final.merged = counts[0], counts[1], counts[2]
        final.unchanged += counts[3]
        final.failed += counts[4]
        final.entry_errors = [*result.entry_errors, *outcome.entry_errors]
        final.new_release_ids = list(outcome.new_release_ids)
        # One UPDATE, not a SELECT of the row and an ORM flush (a source that was
        # removed meanwhile is simply not updated, as before).
        values: dict[str, Any] = {
            "status": SourceStatus.OK,
            "last_run_at": now,
            "last_success_at": now,
            "consecutive_failures": 0,
            "last_counts": final.counts(),
        }
        if gathered.keep_validators:
            values["etag"] = (gathered.etag or None) and gathered.etag[:500]
            values["last_modified"] = (gathered.last_modified or None) and (
                gathered.last_modified[:100]
            )
        if gathered.seen_files is not None:
            values["seen_files"] = gathered.seen_files
        connection = await session.connection()
        await connection.execute(_RECORD, {"source_id": source.id, **values})
        if lease is not None:
            await lease.end_in(session)
    # Only a committed transaction's counts are the run's.
    result.__dict__.update(final.__dict__)
    if lease is not None:
        lease.held = False


async def _record_failure(
    database: Database, source_id: int, result: SourceRunResult, lease: _Lease | None
) -> None:
    now = utcnow()
    async with _writing(database) as session:
        if lease is not None:
            await lease.end_in(session)
        row = await session.get(Source, source_id)
        if row is not None:
            row.last_run_at = now
            row.last_error = (result.error or "")[:5000]
            row.last_error_at = now
            row.consecutive_failures = (row.consecutive_failures or 0) + 1
            if result.disabled:
                row.enabled = False
                row.status = SourceStatus.DISABLED
                row.last_error = f"{result.error}; the source was disabled"
            else:
                row.status = SourceStatus.FAILING
            row.last_counts = result.counts()
    if lease is not None:
        lease.held = False
