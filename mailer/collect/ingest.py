"""`mailer ingest`: release files given by hand, stored as from a source of their own."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.collect.extract import Candidate, EntryError
from mailer.collect.files import SUPPORTED_SUFFIXES, is_supported, read_release_file
from mailer.collect.store import Outcome, store_candidates
from mailer.config import Settings
from mailer.db import Database
from mailer.models import Source, SourceStatus, utcnow

log = logging.getLogger(__name__)

INGEST_SOURCE = "Manual ingest"


@dataclass
class IngestedRelease:
    path: str
    candidate: Candidate
    outcome: Outcome | None = None
    release_id: int | None = None


@dataclass
class IngestReport:
    source: str
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
            kind="ingest",
            origin=origin,
            enabled=False,
            status=SourceStatus.OK,
            interval_seconds=0,
            options={},
        )
        session.add(source)
        await session.flush()
    return source


async def ingest_paths(
    database: Database | None,
    settings: Settings,
    paths: Iterable[str | Path],
    dry_run: bool = False,
    *,
    source_name: str = INGEST_SOURCE,
) -> IngestReport:
    """Read release files and store them (unless ``dry_run``). Bad files are reported
    in ``errors`` and the good ones are stored all the same."""
    report = IngestReport(source=source_name)
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
    if dry_run or not report.releases:
        return report
    if database is None:
        raise ValueError("a database is needed unless dry_run is set")
    from mailer.collect.runner import store_lock

    async with store_lock(database), database.transaction() as session:
        source = await label_source(session, source_name, origin="cli")
        now = utcnow()
        candidates = [item.candidate for item in report.releases]
        try:
            async with session.begin_nested():
                stored_all = await store_candidates(
                    session,
                    source_id=source.id,
                    source_name=source.name,
                    candidates=candidates,
                    now=now,
                    isolate=False,
                )
        except Exception:
            log.exception("storing the ingested releases failed; retrying one by one")
            stored_all = await store_candidates(
                session,
                source_id=source.id,
                source_name=source.name,
                candidates=candidates,
                now=now,
                isolate=True,
            )
        for item, stored in zip(report.releases, stored_all, strict=True):
            if isinstance(stored, Exception):
                report.errors.append(f"{item.path}: could not be stored ({stored})")
            else:
                item.outcome, item.release_id = stored.outcome, stored.release_id
        source.last_run_at = source.last_success_at = now
        source.total_releases = (source.total_releases or 0) + report.count(Outcome.NEW)
    return report
