"""Bulk operations: CSV import and export of subscribers."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import enum
import json
import logging
import secrets
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import asyncpg
from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.db import Database, refresh_statistics
from mailer.models import (
    ConsentEvent,
    Frequency,
    Subscriber,
    SubscriberStatus,
    SubscriberTopic,
    Topic,
    search_key,
    utcnow,
)
from mailer.subscribers.optin import _consent, operator_audit
from mailer.subscribers.values import (
    _CHUNK,
    _TOPIC_SEPARATORS,
    ImportReport,
    InvalidField,
    InvalidFile,
    Origin,
    SubscriberError,
    SubscriberView,
    _iso,
    clean_name,
    normalize_address,
)
from mailer.suppression import (
    email_hash,
    email_key,
    suppressed_hashes,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _ImportRow:
    line: int
    email: str
    key: str
    name: str | None
    topic_ids: list[int]


class _Fate(enum.Enum):
    WAITING = "waiting"  # not written yet
    NEW = "new"
    EXISTING = "existing"
    SUPPRESSED = "suppressed"


@dataclass(slots=True)
class _Held:
    """An address that occurs more than once in the file: its rows are merged into
    ``row`` (the first row's line and address). A new subscriber is written with the
    first row's chunk, as merged so far; one that was there before is left alone.
    Once the whole file has been read, :meth:`_Writer.finish` applies the rest,
    reading back from the database what it needs (nothing else changed those rows)
    rather than keeping it here. Measured: 1,000,000 rows naming 500,000 addresses
    twice peak at 460 MB, about 700 bytes per repeated address over the flat 110 MB."""

    row: _ImportRow
    fate: _Fate = _Fate.WAITING


# Rows written per round trip: big enough that COPY is not dominated by round trips,
# small enough that memory does not depend on the file's length.
_IMPORT_CHUNK = 10_000


async def import_csv(
    database: Database,
    settings: Settings,
    source: TextIO | Path | str,
    *,
    status: SubscriberStatus = SubscriberStatus.PENDING,
    origin: Origin | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    name: str | None = None,
) -> ImportReport:
    """Import subscribers from CSV (columns ``email``, optional ``name`` and ``topics``).

    ``dry_run`` reports exactly what an import would do (the same code runs) and
    rolls everything back: the admin's preview before anything is written. ``name``
    is the file's name in the report and the consent records (default: the path's
    or the stream's name).

    Invalid rows are reported by line number and skipped; valid rows are imported in
    one transaction. Rows for one address are merged (topics united, the first name
    kept); an address already subscribed gets the file's topics added and, with
    ``status=confirmed``, is confirmed. Suppressed addresses are reported and never
    imported. Pending imports get their confirmation mail from the scheduler's
    resend job. ``topics`` lists slugs or names separated by ``;``, ``,`` or ``|``;
    empty means every topic.

    A million rows take minutes, not hours: common addresses are checked by a
    regular expression that agrees with email-validator (which judges the rest),
    and PostgreSQL receives new subscribers, their topics and consent records by
    COPY; SQLite by multi-row INSERTs in chunks.

    Memory does not grow with the file: it is read twice, never held. The first
    pass only finds which addresses occur more than once, keeping 8 bytes per row
    (a 64-bit hash, sorted in 256 buckets; far less than a set of addresses or of
    digests); the second writes the rows in chunks of ``_IMPORT_CHUNK``. Only the
    addresses that do repeat are kept until the end (see :class:`_Held`), so that
    later rows can be merged into a subscriber written with an earlier chunk. A
    stream that cannot be rewound is first copied to a temporary file.
    """
    if status not in (SubscriberStatus.PENDING, SubscriberStatus.CONFIRMED):
        raise InvalidField("status", "Imported subscribers are pending or confirmed.")
    now = now or utcnow()
    report = ImportReport()
    allow_special_use = settings.signup.allow_special_use_domains
    with contextlib.ExitStack() as stack:
        if isinstance(source, str | Path):
            path = Path(source)
            label = name or path.name
            await asyncio.to_thread(_check_utf8, path)

            def rewind() -> TextIO:
                try:
                    return stack.enter_context(path.open(encoding="utf-8-sig", newline=""))
                except OSError as exc:
                    raise InvalidFile(f"{path}: cannot read: {exc.strerror}") from None

        else:
            label = name or getattr(source, "name", "stdin")
            stream = source
            if not stream.seekable():
                stream = stack.enter_context(
                    tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
                )
                await asyncio.to_thread(shutil.copyfileobj, source, stream)
                stream.seek(0)
            start = stream.tell()

            def rewind() -> TextIO:
                stream.seek(start)
                return stream

        repeated = await asyncio.to_thread(_repeated_keys, rewind(), label, allow_special_use)

        async with database.session() as session:
            topics = (
                await session.execute(select(Topic.id, Topic.slug, Topic.name, Topic.active))
            ).all()
        topic_by_label: dict[str, int] = {}
        for topic_id, slug, topic_name, active in topics:
            if active:
                topic_by_label[slug.lower()] = topic_id
                topic_by_label.setdefault(topic_name.lower(), topic_id)

        rows = _parse_rows(rewind(), label, topic_by_label, report, allow_special_use)
        copy = database.dialect == "postgresql"
        async with database.transaction() as session:
            writer = _Writer(
                session, settings, status, origin, now, label, report, copy,
                await suppressed_hashes(session),
            )  # fmt: skip
            held: dict[str, _Held] = {}
            chunk: list[_ImportRow] = []
            for row in rows:
                if hash(row.key) in repeated:
                    seen = held.get(row.key)
                    if seen is not None:
                        report.merged_duplicates += 1
                        _merge(seen.row, row)
                        continue
                    held[row.key] = _Held(row)
                chunk.append(row)
                if len(chunk) >= _IMPORT_CHUNK:
                    await writer.write(chunk, held)
                    chunk = []
            await writer.write(chunk, held)
            await writer.finish(held)
            if dry_run:
                await session.rollback()
            else:
                await operator_audit(
                    session,
                    origin,
                    "subscriber.import",
                    None,
                    {
                        "file": label,
                        "status": status.value,
                        "imported": report.imported,
                        "updated": report.updated,
                        "unchanged": report.unchanged,
                        "rejected": report.rejected,
                    },
                    now,
                )
                # Every table the import filled; the list's counts are PostgreSQL's
                # estimates at this size too.
                await refresh_statistics(
                    session,
                    report.imported,
                    "subscribers",
                    "subscriber_topics",
                    "consent_events",
                )
    return report


def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8 before anything is read from it, naming the
    first bad byte (counted after a byte order mark), a megabyte at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with path.open("rb") as raw:
            data = raw.read(_READ_BYTES)
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
            while True:
                buffered = len(decoder.getstate()[0])
                try:
                    decoder.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    raise InvalidFile(
                        f"{path}: not UTF-8 text (byte {offset - buffered + exc.start}); "
                        "save the file as UTF-8 CSV"
                    ) from None
                if not data:
                    return
                offset += len(data)
                data = raw.read(_READ_BYTES)
    except FileNotFoundError:
        raise InvalidFile(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidFile(f"{path}: cannot read: {exc.strerror}") from None


_READ_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Columns:
    email: int
    name: int | None
    topics: int | None


def _read_header(reader: Any, label: str) -> _Columns:
    try:
        header = next(reader, None)
        while header is not None and not header:
            header = next(reader, None)  # csv.DictReader skips leading blank lines too
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InvalidFile(f"{label}: not a CSV file: {exc}") from None
    if not header:
        raise InvalidFile(f"{label}: the file is empty; the first line must name the columns")
    columns: dict[str, int] = {}
    for number, heading in enumerate(header):
        columns.setdefault(heading.strip().lower(), number)
    if "email" not in columns:
        found = ", ".join(repr(h) for h in header)
        raise InvalidFile(f"{label}: no 'email' column in the first line (found {found})")
    return _Columns(columns["email"], columns.get("name"), columns.get("topics"))


def _records(stream: TextIO, label: str) -> Iterator[tuple[int, _Columns, list[str]]]:
    """Each non-blank record with the line it starts on."""
    reader = csv.reader(stream)
    columns = _read_header(reader, label)
    try:
        for record in reader:
            if not any(value.strip() for value in record):
                continue  # blank line
            # line_num is where the record ends; a quoted field may span lines.
            yield reader.line_num - sum(value.count("\n") for value in record), columns, record
    except csv.Error as exc:
        raise InvalidFile(f"{label}, line {reader.line_num}: {exc}") from None


def _field(record: list[str], at: int | None) -> str | None:
    return record[at] if at is not None and at < len(record) else None


_BUCKETS = 256


def _repeated_keys(stream: TextIO, label: str, allow_special_use: bool) -> set[int]:
    """The hashes of the addresses that occur more than once in the file (plus, very
    rarely, a pair of different addresses whose hashes collide: those are then merely
    held like repeats, never merged). Errors are the second pass's to report.

    Python's ``hash`` of a str is stable within the process, which is all the two
    passes need. 8 bytes per row; each bucket is sorted on its own so the sort's
    temporary list is a 256th of the file."""
    buckets = [array("q") for _ in range(_BUCKETS)]
    for _line, columns, record in _records(stream, label):
        try:
            address = normalize_address(
                _field(record, columns.email) or "", allow_special_use=allow_special_use
            )
        except SubscriberError:
            continue
        digest = hash(email_key(address))
        buckets[digest % _BUCKETS].append(digest)
    repeated: set[int] = set()
    while buckets:
        previous = None
        for digest in sorted(buckets.pop()):
            if digest == previous:
                repeated.add(digest)
            previous = digest
    return repeated


def _parse_rows(
    stream: TextIO,
    label: str,
    topic_by_label: dict[str, int],
    report: ImportReport,
    allow_special_use: bool = False,
) -> Iterator[_ImportRow]:
    """The valid rows, in the file's order; invalid ones go to ``report.errors``."""
    for line, columns, record in _records(stream, label):
        try:
            address = normalize_address(
                _field(record, columns.email) or "", allow_special_use=allow_special_use
            )
            row_name = clean_name(_field(record, columns.name))
            topic_ids = _row_topics(_field(record, columns.topics), topic_by_label)
        except SubscriberError as exc:
            report.errors.append((line, str(exc)))
            continue
        yield _ImportRow(line, address, email_key(address), row_name, topic_ids)


def _merge(seen: _ImportRow, row: _ImportRow) -> None:
    """A later row for an address already in the file: the first name is kept, topics
    are united."""
    seen.name = seen.name or row.name
    # An earlier row with no topics meant "all"; united with anything it stays all.
    if seen.topic_ids and row.topic_ids:
        seen.topic_ids.extend(t for t in row.topic_ids if t not in seen.topic_ids)
    else:
        seen.topic_ids = []


def _row_topics(raw: str | None, topic_by_label: dict[str, int]) -> list[int]:
    if not raw:
        return []
    ids: list[int] = []
    for label in _TOPIC_SEPARATORS.split(raw):
        label = label.strip()
        if not label:
            continue
        topic_id = topic_by_label.get(label.lower())
        if topic_id is None:
            raise InvalidField("topics", f"there is no topic {label!r}")
        if topic_id not in ids:
            ids.append(topic_id)
    return ids


@dataclass
class _Existing:
    id: int
    status: SubscriberStatus
    name: str | None
    topic_ids: set[int]


async def _existing_by_key(session: AsyncSession, keys: list[str]) -> dict[str, _Existing]:
    found: dict[str, _Existing] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        rows = await session.execute(
            select(Subscriber.id, Subscriber.email_key, Subscriber.status, Subscriber.name).where(
                Subscriber.email_key.in_(chunk)
            )
        )
        for subscriber_id, key, status, name in rows:
            found[key] = _Existing(subscriber_id, status, name, set())
    by_id = {e.id: e for e in found.values()}
    ids = list(by_id)
    for start in range(0, len(ids), _CHUNK):
        rows = await session.execute(
            select(SubscriberTopic.subscriber_id, SubscriberTopic.topic_id).where(
                SubscriberTopic.subscriber_id.in_(ids[start : start + _CHUNK])
            )
        )
        for subscriber_id, topic_id in rows:
            by_id[subscriber_id].topic_ids.add(topic_id)
    return found


def _new_subscriber(
    row: _ImportRow, status: SubscriberStatus, now: datetime, confirmed: bool
) -> dict[str, Any]:
    return {
        "email": row.email,
        "email_key": row.key,
        "name": row.name,
        "name_key": search_key(row.name),
        "status": status,
        "frequency": Frequency.DAILY,
        "created_at": now,
        "confirmed_at": now if confirmed else None,
        "digest_since": now if confirmed else None,
        "confirm_nonce": None if confirmed else secrets.token_urlsafe(16),
        "soft_bounces": 0,
    }


def _import_consent(
    subscriber_id: int,
    row: _ImportRow,
    settings: Settings,
    origin: Origin | None,
    now: datetime,
    label: str,
    status: SubscriberStatus,
) -> dict[str, Any]:
    return _consent(
        subscriber_id,
        "import",
        settings,
        origin,
        now,
        {"file": label, "line": row.line, "status": status.value},
    )


async def _insert_new(
    session: AsyncSession,
    settings: Settings,
    new_rows: list[_ImportRow],
    status: SubscriberStatus,
    origin: Origin | None,
    now: datetime,
    label: str,
) -> None:
    confirmed = status is SubscriberStatus.CONFIRMED
    for start in range(0, len(new_rows), _CHUNK):
        chunk = new_rows[start : start + _CHUNK]
        await session.execute(
            insert(Subscriber.__table__),
            [_new_subscriber(row, status, now, confirmed) for row in chunk],
        )
        ids = dict(
            (
                await session.execute(
                    select(Subscriber.email_key, Subscriber.id).where(
                        Subscriber.email_key.in_([row.key for row in chunk])
                    )
                )
            ).all()
        )
        pairs = [
            {"subscriber_id": ids[row.key], "topic_id": t} for row in chunk for t in row.topic_ids
        ]
        if pairs:
            await session.execute(insert(SubscriberTopic.__table__), pairs)
        await session.execute(
            insert(ConsentEvent.__table__),
            [
                _import_consent(ids[row.key], row, settings, origin, now, label, status)
                for row in chunk
            ],
        )


async def _import_existing(
    session: AsyncSession,
    settings: Settings,
    wanted: dict[str, _ImportRow],
    existing: dict[str, _Existing],
    status: SubscriberStatus,
    origin: Origin | None,
    now: datetime,
    label: str,
    report: ImportReport,
) -> None:
    confirm_ids: list[int] = []
    names: list[dict[str, Any]] = []
    topic_pairs: list[dict[str, int]] = []
    events: list[dict[str, Any]] = []
    for key, current in existing.items():
        row = wanted[key]
        changed = False
        if row.name and not current.name:
            names.append({"sid": current.id, "new_name": row.name, "new_key": search_key(row.name)})
            changed = True
        # No topic rows means "all topics": adding some would narrow the subscription.
        if row.topic_ids and current.topic_ids:
            added = [t for t in row.topic_ids if t not in current.topic_ids]
            topic_pairs += [{"subscriber_id": current.id, "topic_id": t} for t in added]
            changed = changed or bool(added)
        if status is SubscriberStatus.CONFIRMED and current.status is SubscriberStatus.PENDING:
            confirm_ids.append(current.id)
            changed = True
        if changed:
            report.updated += 1
            events.append(
                _consent(
                    current.id,
                    "import",
                    settings,
                    origin,
                    now,
                    {"file": label, "line": row.line, "status": status.value, "merged": True},
                )
            )
        else:
            report.unchanged += 1
    if names:
        await session.execute(
            update(Subscriber.__table__)
            .where(Subscriber.__table__.c.id == bindparam("sid"))
            .values(name=bindparam("new_name"), name_key=bindparam("new_key")),
            names,
        )
    if topic_pairs:
        await session.execute(insert(SubscriberTopic.__table__), topic_pairs)
    for start in range(0, len(confirm_ids), _CHUNK):
        await session.execute(
            update(Subscriber)
            .where(Subscriber.id.in_(confirm_ids[start : start + _CHUNK]))
            .values(
                status=SubscriberStatus.CONFIRMED,
                confirmed_at=now,
                digest_since=now,
                confirm_nonce=None,
            )
        )
    if events:
        await session.execute(insert(ConsentEvent.__table__), events)


class _Writer:
    """Writes an import's rows a chunk at a time inside its transaction."""

    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        status: SubscriberStatus,
        origin: Origin | None,
        now: datetime,
        label: str,
        report: ImportReport,
        copy: bool,
        suppressed: set[str],
    ) -> None:
        self.session = session
        self.settings = settings
        self.status = status
        self.origin = origin
        self.now = now
        self.label = label
        self.report = report
        self.copy = copy
        self.suppressed = suppressed

    async def write(self, chunk: list[_ImportRow], held: dict[str, _Held]) -> None:
        """Write a chunk of rows, each for an address not in an earlier chunk. An
        address that repeats later is written as merged so far; if it is already
        subscribed, it waits for :meth:`finish`, which knows all its rows."""
        report = self.report
        wanted: dict[str, _ImportRow] = {}
        for row in chunk:
            # Hashing every row costs seconds on a big file; skip it when nothing is suppressed.
            if self.suppressed and email_hash(self.settings, row.email) in self.suppressed:
                report.suppressed.append((row.line, f"{row.email} is on the suppression list"))
                if row.key in held:
                    held[row.key].fate = _Fate.SUPPRESSED
            else:
                wanted[row.key] = row
        if not wanted:
            return
        if self.copy:
            existing = await _existing_by_key_copy(self.session, list(wanted))
        else:
            existing = await _existing_by_key(self.session, list(wanted))
        new_rows = [row for key, row in wanted.items() if key not in existing]
        await self._write_new(new_rows)
        report.imported += len(new_rows)
        for row in new_rows:
            if row.key in held:
                held[row.key].fate = _Fate.NEW
        for key in [key for key in existing if key in held]:
            held[key].fate = _Fate.EXISTING
            del existing[key]
        await self._update_existing(wanted, existing)

    async def _update_existing(
        self, wanted: dict[str, _ImportRow], existing: dict[str, _Existing]
    ) -> None:
        await _import_existing(
            self.session,
            self.settings,
            wanted,
            existing,
            self.status,
            self.origin,
            self.now,
            self.label,
            self.report,
        )

    async def _write_new(self, new_rows: list[_ImportRow]) -> None:
        write = _copy_new if self.copy else _insert_new
        await write(
            self.session,
            self.settings,
            new_rows,
            self.status,
            self.origin,
            self.now,
            self.label,
        )

    async def finish(self, held: dict[str, _Held]) -> None:
        """Apply what later rows of a repeated address added: to a subscriber this
        import created, the name if it had none and the topics (no topics meaning
        all); to one that was there before, the whole merged row, as if its rows had
        been one. A chunk at a time, like the rows: a file can repeat every address."""
        before: list[_ImportRow] = []
        created: list[_ImportRow] = []
        for late in held.values():
            if late.fate is _Fate.EXISTING:
                before.append(late.row)
            elif late.fate is _Fate.NEW:
                created.append(late.row)
            if len(before) >= _IMPORT_CHUNK:
                await self._merge_existing(before)
                before = []
            if len(created) >= _IMPORT_CHUNK:
                await self._merge_created(created)
                created = []
        await self._merge_existing(before)
        await self._merge_created(created)

    async def _lookup(self, rows: list[_ImportRow]) -> dict[str, _Existing]:
        keys = [row.key for row in rows]
        if self.copy:
            return await _existing_by_key_copy(self.session, keys)
        return await _existing_by_key(self.session, keys)

    async def _merge_existing(self, rows: list[_ImportRow]) -> None:
        if rows:
            existing = await self._lookup(rows)
            await self._update_existing({row.key: row for row in rows}, existing)

    async def _merge_created(self, rows: list[_ImportRow]) -> None:
        """Subscribers written by this import with their first rows: the database
        holds what was written, the row what all their rows make together."""
        if not rows:
            return
        written = await self._lookup(rows)
        names: list[dict[str, Any]] = []
        everything: list[int] = []
        pairs: list[dict[str, int]] = []
        for row in rows:
            current = written[row.key]
            if row.name and not current.name:
                names.append(
                    {"sid": current.id, "new_name": row.name, "new_key": search_key(row.name)}
                )
            if not current.topic_ids:
                continue  # written with every topic; merging cannot narrow it
            if not row.topic_ids:
                everything.append(current.id)  # a later row asked for every topic
            else:
                pairs += [
                    {"subscriber_id": current.id, "topic_id": t}
                    for t in row.topic_ids
                    if t not in current.topic_ids
                ]
        table = Subscriber.__table__
        topics = SubscriberTopic.__table__
        if names:
            await self.session.execute(
                update(table)
                .where(table.c.id == bindparam("sid"))
                .values(name=bindparam("new_name"), name_key=bindparam("new_key")),
                names,
            )
        for start in range(0, len(everything), _CHUNK):
            chunk = everything[start : start + _CHUNK]
            await self.session.execute(delete(topics).where(topics.c.subscriber_id.in_(chunk)))
        if pairs:
            await self.session.execute(insert(topics), pairs)


# --- PostgreSQL: COPY -------------------------------------------------------------------------


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside the session's transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not driver.is_in_transaction():
        raise RuntimeError("bulk import must run inside the import's transaction")
    return driver


async def _existing_by_key_copy(session: AsyncSession, keys: list[str]) -> dict[str, _Existing]:
    """Subscribers among ``keys``: one join against the keys as an array, not a
    query per thousand keys."""
    driver = await _driver(session)
    rows = await driver.fetch(
        "SELECT s.id, s.email_key, s.status, s.name FROM subscribers s "
        "JOIN unnest($1::text[]) AS k(key) ON s.email_key = k.key",
        keys,
    )
    found = {
        r["email_key"]: _Existing(r["id"], SubscriberStatus(r["status"]), r["name"], set())
        for r in rows
    }
    by_id = {e.id: e for e in found.values()}
    if by_id:
        pairs = await driver.fetch(
            "SELECT subscriber_id, topic_id FROM subscriber_topics "
            "WHERE subscriber_id = ANY($1::int[])",
            list(by_id),
        )
        for pair in pairs:
            by_id[pair["subscriber_id"]].topic_ids.add(pair["topic_id"])
    return found


def _copy_columns(table: Table, given: Sequence[str]) -> tuple[list[str], list[Any]]:
    """The table's columns for COPY: ``given`` first, then every other column that
    has a Python-side default (COPY does not run those), with that default."""
    names = list(given)
    defaults: list[Any] = []
    for column in table.columns:
        if column.name in given or column.primary_key:
            continue
        default = column.default
        if default is None or not (default.is_scalar or default.is_callable):
            continue
        names.append(column.name)
        defaults.append(default)
    return names, defaults


def _default_value(default: Any) -> Any:
    return default.arg if default.is_scalar else default.arg(None)


async def _copy(driver: Any, table: Table, given: Sequence[str], rows: Iterable[tuple]) -> None:
    names, defaults = _copy_columns(table, given)
    if defaults:
        rows = (row + tuple(_default_value(d) for d in defaults) for row in rows)
    await driver.copy_records_to_table(table.name, columns=names, records=rows)


def _copy_record(values: dict[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    """One COPY record, in ``names`` order, from the row the INSERT path writes: the
    two paths cannot drift apart. COPY takes enums by value and JSON as text."""
    return tuple(_copy_value(values[name]) for name in names)


def _copy_value(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return json.dumps(value)
    return value


_SUBSCRIBER_COPY = (
    "id",
    "email",
    "email_key",
    "name",
    "name_key",
    "status",
    "frequency",
    "created_at",
    "confirmed_at",
    "digest_since",
    "confirm_nonce",
    "soft_bounces",
)
_CONSENT_COPY = (
    "subscriber_id",
    "action",
    "at",
    "ip",
    "user_agent",
    "form_url",
    "wording_version",
    "details",
)


async def _copy_new(
    session: AsyncSession,
    settings: Settings,
    new_rows: list[_ImportRow],
    status: SubscriberStatus,
    origin: Origin | None,
    now: datetime,
    label: str,
) -> None:
    if not new_rows:
        return
    driver = await _driver(session)
    # Ids are taken from the table's own sequence up front, so one COPY each can
    # write the subscribers and the rows that point at them.
    ids = [
        r[0]
        for r in await driver.fetch(
            "SELECT nextval(pg_get_serial_sequence('subscribers', 'id')) "
            "FROM generate_series(1, $1)",
            len(new_rows),
        )
    ]
    confirmed = status is SubscriberStatus.CONFIRMED
    subscribers = (
        _copy_record(
            {"id": subscriber_id, **_new_subscriber(row, status, now, confirmed)},
            _SUBSCRIBER_COPY,
        )
        for subscriber_id, row in zip(ids, new_rows, strict=True)
    )
    try:
        await _copy(driver, Subscriber.__table__, _SUBSCRIBER_COPY, subscribers)
    except asyncpg.UniqueViolationError:
        raise InvalidFile(
            f"{label}: an address in the file was added by someone else during the "
            "import; nothing was imported, run the import again"
        ) from None
    topics = (
        (subscriber_id, topic_id)
        for subscriber_id, row in zip(ids, new_rows, strict=True)
        for topic_id in row.topic_ids
    )
    await _copy(driver, SubscriberTopic.__table__, ("subscriber_id", "topic_id"), topics)
    consents = (
        _copy_record(
            _import_consent(subscriber_id, row, settings, origin, now, label, status),
            _CONSENT_COPY,
        )
        for subscriber_id, row in zip(ids, new_rows, strict=True)
    )
    await _copy(driver, ConsentEvent.__table__, _CONSENT_COPY, consents)


# --- export -----------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "email",
    "name",
    "topics",
    "status",
    "frequency",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "suppression",
)


def suppression_text(view: SubscriberView) -> str:
    if not view.suppression:
        return ""
    details = " ".join((view.suppression_details or "").split())
    return f"{view.suppression}: {details}" if details else view.suppression


def export_csv(subscribers: Iterable[SubscriberView], out: TextIO) -> int:
    """Write subscribers as CSV that :func:`import_csv` reads back; returns the row count."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for s in subscribers:
        writer.writerow(
            [
                s.email,
                s.name or "",
                ";".join(s.topics),
                s.shown_status,
                s.frequency.value,
                _iso(s.created_at),
                _iso(s.confirmed_at) or "",
                _iso(s.unsubscribed_at) or "",
                suppression_text(s),
            ]
        )
        count += 1
    return count
