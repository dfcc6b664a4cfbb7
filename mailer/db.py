"""Engine, sessions and transactions.

Everything talks to the database through one :class:`Database`: ``session()`` for
reads, ``transaction()`` for anything that writes. On SQLite the database runs in
WAL mode and ``transaction()`` begins ``IMMEDIATE``: the write lock is taken up
front, so concurrent writers from other tasks or processes wait on the busy
timeout instead of failing with "database is locked" when a deferred read lock
cannot be upgraded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Executable, event, text
from sqlalchemy.engine import URL, Result, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# How often a statement is tried again when the rows it waited for were moved to
# another partition meanwhile (see execute_past_moved_rows).
_MOVED_ROW_ATTEMPTS = 5
_WRITE_OPTION = "mailer_write_transaction"
# Rows written in one bulk operation from which PostgreSQL's statistics of the
# tables are refreshed at once (see refresh_statistics).
BULK_WRITE_ROWS = 10_000


def day_of(value: Any) -> date:
    """The calendar day of a SQL ``date(...)`` result: SQLite gives text, PostgreSQL
    a date (or a timestamp, depending on the expression)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


# Any error the database layer raises: shells map it to "try again" without
# importing the ORM themselves.
DatabaseError = SQLAlchemyError


class DatabaseURLError(ValueError):
    pass


def async_url(url: str, base_dir: Path | None = None) -> URL:
    """Map plain driver URLs to the async drivers; resolve relative SQLite paths."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise DatabaseURLError(f"{url!r} is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            path.parent.mkdir(parents=True, exist_ok=True)
            parsed = parsed.set(database=str(path))
        return parsed
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise DatabaseURLError(f"{url!r}: only sqlite and postgresql databases are supported")


class Database:
    def __init__(self, url: str | URL, *, base_dir: Path | None = None, echo: bool = False):
        self.url = async_url(
            str(url) if isinstance(url, str) else url.render_as_string(False), base_dir
        )
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        engine_args: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            engine_args["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        else:
            engine_args.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_args)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self.write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._reader = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer = async_sessionmaker(self.write_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A read session. Do not write through it: use :meth:`transaction`."""
        async with self._reader() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed on success, rolled back on any exception."""
        async with self._writer() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


async def refresh_statistics(session: AsyncSession, rows: int, *tables: str) -> None:
    """ANALYZE ``tables`` after ``rows`` were written to them in bulk (at least
    BULK_WRITE_ROWS), in the writing transaction: ANALYZE sees its rows.

    PostgreSQL plans from these statistics, and at this size its plans change:
    left stale, an import's subscriber_topics was read whole for every sender batch,
    and a new send's pending rows were estimated at a handful, so each claim gathered
    all of them (bench/RESULTS.md). Autovacuum would analyze the tables only later,
    and not at all where it is off. ANALYZE samples a fixed number of rows (a few
    hundred milliseconds at a million). SQLite's planner keeps no such estimates.
    """
    if rows >= BULK_WRITE_ROWS and session.bind.dialect.name == "postgresql":
        await session.execute(text(f"ANALYZE {', '.join(tables)}"))


def _moved_by_concurrent_update(error: DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) == "40001" and "another partition" in str(
        error.orig
    )


async def execute_past_moved_rows(session: AsyncSession, statement: Executable) -> Result[Any]:
    """Run an UPDATE or DELETE of deliveries that may race a worker recording results.

    On PostgreSQL a result moves a delivery to another partition (migration 0015).
    A statement that waited for that row's lock then fails instead of re-reading
    the row, as it would for an update in place. Run again, in a savepoint so the
    transaction survives, it takes a new snapshot and sees the row where it now is
    (sent, so most statements no longer match it). SQLite has no partitions and
    runs write transactions one at a time.
    """
    if session.bind.dialect.name == "sqlite":
        return await session.execute(statement)
    for attempt in range(1, _MOVED_ROW_ATTEMPTS + 1):
        try:
            async with session.begin_nested():
                return await session.execute(statement)
        except DBAPIError as error:
            if attempt == _MOVED_ROW_ATTEMPTS or not _moved_by_concurrent_update(error):
                raise
    raise AssertionError("unreachable")


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to the "begin" hook below; the driver's own
        # implicit BEGIN would always be DEFERRED.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")
