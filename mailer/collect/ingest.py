"""`mailer ingest`: release files given by hand, stored as from a source of their own."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import audit
from mailer.arrivals import releases_arrived
from mailer.collect.dates import Published, parse_published
from mailer.collect.extract import Candidate, EntryError, build_candidate
from mailer.collect.files import SUPPORTED_SUFFIXES, is_supported, read_release_file
from mailer.collect.runner import store_lock
from mailer.collect.store import Outcome, Stored, store_candidates
from mailer.collect.topics import retag_release
from mailer.config import Settings
from mailer.db import Database
from mailer.models import Digest, Release, Source, SourceKind, SourceStatus, utcnow

log = logging.getLogger(__name__)

INGEST_SOURCE = "Manual ingest"
ADMIN_SOURCE = "Added in the admin"
API_SOURCE = "Added through the API"


class ReleaseInputError(ValueError):
    """A release typed in by an editor (admin, API) cannot be stored as given."""


@dataclass
class IngestedRelease:
    path: str
    candidate: Candidate
    outcome: Outcome | None = None
    release_id: int | None = None
    # The stored release's title when this copy went into one already there.
    existing_title: str | None = None
    # When that release is new in this very run: the file it came from.
    merged_with_path: str | None = None


@dataclass
class IngestReport:
    source: str
    dry_run: bool = False
    # What the "as soon as published" rule did (None: nothing arrived).
    arrival: Digest | None = None
    releases: list[IngestedRelease] = field(default_factory=list)
    # One line per file or entry that could not be read or stored.
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.releases if r.outcome is outcome)


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files to read (folders are searched), and an error for each unusable path."""
    files: list[Path] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            errors.append(f"{raw}: no such file or folder")
        elif path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and is_supported(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                errors.append(
                    f"{raw}: no release files in this folder ({', '.join(SUPPORTED_SUFFIXES)})"
                )
            files.extend(found)
        else:
            files.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, errors


async def label_source(session: AsyncSession, name: str, *, origin: str) -> Source:
    """The Source row that labels releases added by hand (CLI ingest, admin). It is
    never enabled, so nothing schedules it; it exists so that those releases name
    where they came from like any collected one."""
    source = await session.scalar(select(Source).where(Source.name == name))
    if source is None:
        source = Source(
            name=name,
            kind=SourceKind.INGEST,
            origin=origin,
            enabled=False,
            status=SourceStatus.OK,
            interval_seconds=0,
            options={},
        )
        session.add(source)
        await session.flush()
    return source


async def store_by_hand(
    session: AsyncSession,
    *,
    source_name: str,
    origin: str,
    candidates: Sequence[Candidate],
    now: datetime,
    send: bool = True,
    added_by: str | None = None,
    isolate: bool = False,
) -> HandStored:
    """Store releases an editor added by hand (CLI ingest, admin, API), through the
    collector's own matching, and record the editor's decision: such a release
    goes out whatever its publication date (``exempt_from_max_age``), or, with
    ``send=False``, a new one is stored excluded from digests."""
    source = await label_source(session, source_name, origin=origin)
    results = await store_candidates(
        session,
        source_id=source.id,
        source_name=source.name,
        candidates=candidates,
        now=now,
        isolate=isolate,
    )
    outcome = HandStored(results)
    for stored in results:
        if isinstance(stored, Exception):
            continue
        release = await session.get(Release, stored.release_id)
        if release is None:
            continue
        if send and not release.exempt_from_max_age:
            # New, or a collected release the editor's copy now lets through.
            release.exempt_from_max_age = True
            outcome.arrived.append(release.id)
        elif not send and stored.outcome is Outcome.NEW:
            release.excluded = True
        if added_by and release.added_by is None:
            release.added_by = added_by[:100]
    source.last_run_at = source.last_success_at = now
    return outcome


@dataclass
class HandStored:
    results: list[Stored | Exception]
    # Releases that became sendable: what the "as soon as published" rule is told.
    arrived: list[int] = field(default_factory=list)


class _DryRun(Exception):
    pass


async def ingest_paths(
    database: Database | None,
    settings: Settings,
    paths: Iterable[str | Path],
    dry_run: bool = False,
    *,
    source_name: str = INGEST_SOURCE,
    send: bool = True,
) -> IngestReport:
    """Read release files and store them. Bad files are reported in ``errors`` and
    the good ones are stored all the same. ``dry_run``: the same reading and
    matching in a transaction that is rolled back (with no database: read only).
    ``send=False`` stores new releases excluded from digests."""
    report = IngestReport(source=source_name, dry_run=dry_run)
    files, report.errors = expand_paths(paths)
    for path in files:
        try:
            parsed = read_release_file(path, guid=f"file:{path}", label=str(path))
        except EntryError as exc:
            report.errors.append(str(exc))
            continue
        report.errors.extend(parsed.errors)
        report.warnings.extend(parsed.warnings)
        report.releases.extend(IngestedRelease(str(path), c) for c in parsed.candidates)
    if not report.releases or (dry_run and database is None):
        return report
    if database is None:
        raise ValueError("a database is needed unless dry_run is set")

    try:
        async with store_lock(database), database.transaction() as session:
            hand = await _store_files(session, report, source_name, send)
            new_here: dict[int, str] = {}
            for item, stored in zip(report.releases, hand.results, strict=True):
                if isinstance(stored, Exception):
                    report.errors.append(f"{item.path}: could not be stored ({stored})")
                    continue
                item.outcome, item.release_id = stored.outcome, stored.release_id
                if stored.outcome is Outcome.NEW:
                    new_here.setdefault(stored.release_id, item.path)
                else:
                    item.merged_with_path = new_here.get(stored.release_id)
                    item.existing_title = await session.scalar(
                        select(Release.title).where(Release.id == stored.release_id)
                    )
            if dry_run:
                raise _DryRun
    except _DryRun:
        return report
    report.arrival = await releases_arrived(database, settings, hand.arrived)
    return report


async def _store_files(
    session: AsyncSession, report: IngestReport, source_name: str, send: bool
) -> HandStored:
    """All files in one go; if that fails, again one savepoint per release so that
    only the one that cannot be stored is lost."""
    now = utcnow()
    candidates = [item.candidate for item in report.releases]

    async def store(isolate: bool) -> HandStored:
        return await store_by_hand(
            session,
            source_name=source_name,
            origin="cli",
            candidates=candidates,
            now=now,
            send=send,
            isolate=isolate,
        )

    try:
        async with session.begin_nested():
            return await store(isolate=False)
    except Exception:
        log.exception("storing the ingested releases failed; retrying one by one")
        return await store(isolate=True)


def editor_date(raw: str, timezone: str) -> Published | None:
    """A publication date typed by an editor: ``2025-10-23`` stays a date,
    ``2025-10-23 15:10`` is read in the site's timezone (or its own offset)."""
    if not raw.strip():
        return None
    published = parse_published(raw, default_tz=ZoneInfo(timezone))
    if published is None:
        raise ReleaseInputError(
            "Give the publication date as YYYY-MM-DD, or YYYY-MM-DD HH:MM, and not in the future."
        )
    return published


async def add_release(
    database: Database,
    settings: Settings,
    *,
    title: str,
    body: str,
    url: str | None = None,
    published: datetime | str | None = None,
    published_date_only: bool = False,
    topics: list[str] | None = None,
    added_by: str,
    send: bool = True,
    source_name: str = ADMIN_SOURCE,
    origin: str = "admin",
    now: datetime | None = None,
    embargo_until: datetime | None = None,
    audit_details: Mapping[str, Any] | None = None,
) -> tuple[int, str]:
    """Store a release typed in by an editor (admin or API); returns (release id,
    outcome). ``published`` given as text is read as an editor's date (see
    :func:`editor_date`). ``embargo_until`` holds a new release back (neither mailed
    nor shown in the archive) until then; a copy of a release already stored keeps
    that release's visibility. With ``audit_details`` the "release.add" audit entry
    (actor ``added_by``) is written in the same transaction.

    The text goes through the same cleaning and matching as a collected release;
    ``topics`` (slugs) replaces the keyword tagging when given. Like every release
    added by hand it goes out whatever its publication date unless ``send`` is
    False (then it is stored excluded from digests), and its arrival follows the
    one rule for "as soon as published" readers (:mod:`mailer.arrivals`).
    """
    if not title.strip():
        raise ReleaseInputError("A release needs a title.")
    if url and not url.startswith(("http://", "https://")):
        raise ReleaseInputError("The link must start with http:// or https://.")
    if isinstance(published, str):
        typed = editor_date(published, settings.digest.timezone)
        published, published_date_only = (typed.at, typed.date_only) if typed else (None, False)
    try:
        candidate = build_candidate(
            label="the new release",
            title=title,
            text=body,
            url=url or None,
            published=published,
            published_date_only=published_date_only,
        )
    except EntryError as exc:
        raise ReleaseInputError(str(exc)) from None
    now = now or utcnow()
    async with store_lock(database), database.transaction() as session:
        hand = await store_by_hand(
            session,
            source_name=source_name,
            origin=origin,
            candidates=[candidate],
            now=now,
            send=send,
            added_by=added_by,
        )
        (stored,) = hand.results
        if isinstance(stored, Exception):
            raise stored
        if embargo_until is not None and str(stored.outcome) == "new":
            release = await session.get(Release, stored.release_id)
            if release is not None:
                release.embargo_until = embargo_until
        if topics is not None:
            try:
                await retag_release(session, settings, stored.release_id, topics)
            except ValueError as exc:
                raise ReleaseInputError(str(exc)) from None
        if audit_details is not None:
            await audit.record_in(
                session,
                added_by,
                "release.add",
                "release",
                stored.release_id,
                {"title": title, "outcome": str(stored.outcome), **audit_details},
            )
    await releases_arrived(database, settings, hand.arrived, now=now)
    return stored.release_id, str(stored.outcome)
