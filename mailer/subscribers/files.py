"""Subscriber files an operator hands over or takes away: the admin's two-step import
(upload and preview, then confirm) and the export every shell offers.

The admin's upload is kept in ``data_dir/imports`` under a random token between the
preview and the confirmation, so the confirmed import reads exactly the file that
was previewed; an upload nobody confirms is deleted after a day.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from mailer.config import Settings
from mailer.db import Database
from mailer.models import SubscriberStatus, utcnow
from mailer.subscribers.bulk import export_csv, import_csv
from mailer.subscribers.optin import operator_audit
from mailer.subscribers.queries import list_subscribers
from mailer.subscribers.values import (
    IMPORT_STATUSES,
    ImportReport,
    InvalidField,
    InvalidFile,
    Origin,
    SubscriberError,
)

MAX_IMPORT_BYTES = 50 * 1024 * 1024
# An uploaded file waits this long for the operator to confirm the import.
IMPORT_KEEP_SECONDS = 24 * 3600
EXPORT_FORMATS = ("csv", "json")
_IMPORT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


class FileTooLarge(InvalidFile):
    pass


class UnknownUpload(SubscriberError):
    """The upload to import is not there (expired, already imported, or never was)."""


@dataclass(frozen=True)
class StagedImport:
    token: str
    filename: str
    status: SubscriberStatus
    # What importing it would do (a dry run of the same code).
    report: ImportReport


def import_status(raw: str | None) -> SubscriberStatus:
    """The status imported subscribers get (IMPORT_STATUSES; empty: pending)."""
    if raw in (None, ""):
        return SubscriberStatus.PENDING
    if raw not in IMPORT_STATUSES:
        raise InvalidField("status", f"Imported subscribers are {' or '.join(IMPORT_STATUSES)}.")
    return SubscriberStatus(raw)


def _import_dir(settings: Settings) -> Path:
    return settings.data_path / "imports"


def _clean_filename(raw: str | None) -> str:
    name = Path(raw or "upload.csv").name
    return re.sub(r"[^\w.@ -]", "_", name)[:100] or "upload.csv"


def _forget_stale_uploads(folder: Path) -> None:
    cutoff = time.time() - IMPORT_KEEP_SECONDS
    for path in folder.glob("*.csv"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            continue


def _upload_path(settings: Settings, token: str) -> Path:
    if not _IMPORT_TOKEN.match(token):
        raise UnknownUpload("This import is not known. Upload the file again.")
    path = _import_dir(settings) / f"{token}.csv"
    if not path.exists():
        raise UnknownUpload(
            "This upload has expired or was already imported. Upload the file again."
        )
    return path


async def _import_upload(
    database: Database,
    settings: Settings,
    path: Path,
    filename: str,
    status: SubscriberStatus,
    origin: Origin | None,
    now: datetime,
    *,
    dry_run: bool,
) -> ImportReport:
    # Read from the kept file as it goes (not into memory); the report and the consent
    # records name the file the operator chose.
    return await import_csv(
        database,
        settings,
        path,
        status=status,
        origin=origin,
        now=now,
        dry_run=dry_run,
        name=filename,
    )


async def stage_import(
    database: Database,
    settings: Settings,
    filename: str | None,
    raw: bytes,
    status: SubscriberStatus,
    *,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> StagedImport:
    """Keep an uploaded CSV file and report what importing it would do; nothing is
    imported until :func:`import_staged` is called with the token."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise FileTooLarge(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB.")
    try:
        # Checked here to word the refusal for the upload; the text is not kept.
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidFile(
            f"The file is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV."
        ) from None
    folder = _import_dir(settings)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(_forget_stale_uploads, folder)
    token = secrets.token_urlsafe(24)
    path = folder / f"{token}.csv"
    await asyncio.to_thread(path.write_bytes, raw)
    name = _clean_filename(filename)
    try:
        report = await _import_upload(
            database, settings, path, name, status, origin, now or utcnow(), dry_run=True
        )
    except SubscriberError:
        path.unlink(missing_ok=True)
        raise
    return StagedImport(token, name, status, report)


async def import_staged(
    database: Database,
    settings: Settings,
    token: str,
    filename: str | None,
    status: SubscriberStatus,
    *,
    origin: Origin | None = None,
    now: datetime | None = None,
) -> tuple[str, ImportReport]:
    """Import a file kept by :func:`stage_import` (once: the file is deleted after);
    returns the file name and the report. The import writes its audit entry."""
    path = _upload_path(settings, token)
    name = _clean_filename(filename)
    report = await _import_upload(
        database, settings, path, name, status, origin, now or utcnow(), dry_run=False
    )
    path.unlink(missing_ok=True)
    return name, report


async def export_subscribers(
    database: Database,
    settings: Settings,
    out: TextIO,
    *,
    status: str | None = None,
    fmt: str = "csv",
    origin: Origin | None = None,
    now: datetime | None = None,
) -> int:
    """Write subscribers (optionally of one of SHOWN_STATUSES) as CSV that
    :func:`import_csv` reads back, or as a JSON array; returns how many. Taking
    personal data out is written to the audit log."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidField("format", f"Export as {' or '.join(EXPORT_FORMATS)}.")
    views = await list_subscribers(database, status=status or None, settings=settings)
    if fmt == "json":
        json.dump([v.as_dict() for v in views], out, ensure_ascii=False, indent=2)
        out.write("\n")
        count = len(views)
    else:
        count = export_csv(views, out)
    async with database.transaction() as session:
        await operator_audit(
            session,
            origin,
            "subscriber.export",
            None,
            {"rows": count, "status": status or "all", "format": fmt},
            now or utcnow(),
        )
    return count
