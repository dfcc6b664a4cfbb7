"""Database URLs and concurrent writers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from mailer.db import Database, DatabaseURLError, async_url
from mailer.models import AuditEntry


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///data/x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///data/x.db", "sqlite+aiosqlite"),
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg"),
    ],
)
def test_plain_and_async_driver_urls_both_work(tmp_path: Path, given: str, driver: str) -> None:
    url = async_url(given, tmp_path)
    assert url.drivername == driver
    if driver.startswith("sqlite"):
        assert url.database == str(tmp_path / "data" / "x.db")


def test_unsupported_database_is_a_clear_error() -> None:
    with pytest.raises(DatabaseURLError, match="only sqlite and postgresql"):
        async_url("mysql://u@h/db")
    with pytest.raises(DatabaseURLError, match="not a database URL"):
        async_url("not a url at all")


async def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    database = Database(sqlite_url)
    try:
        async with database.session() as session:
            assert (await session.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await session.scalar(text("PRAGMA foreign_keys"))) == 1
    finally:
        await database.dispose()


async def _write_many(database: Database, actor: str, count: int) -> None:
    for i in range(count):
        async with database.transaction() as session:
            # Read-then-write: the pattern that fails with "database is locked" when
            # a deferred transaction has to upgrade its lock under contention.
            await session.scalar(select(func.count()).select_from(AuditEntry))
            session.add(AuditEntry(actor=actor, action="test", target_id=str(i)))


WRITER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.test_db import _write_many
from mailer.db import Database
async def main():
    db = Database({url!r})
    await _write_many(db, sys.argv[1], 150)
    await db.dispose()
asyncio.run(main())
"""


async def test_concurrent_writers_tasks_and_processes_never_see_locked(database_url: str) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    script = WRITER.format(root=root, url=database_url)
    processes = [
        subprocess.Popen([sys.executable, "-c", script, f"proc{i}"], stderr=subprocess.PIPE)
        for i in range(3)
    ]
    database = Database(database_url)
    try:
        await asyncio.gather(*(_write_many(database, f"task{i}", 100) for i in range(4)))
        for process in processes:
            _, stderr = await asyncio.to_thread(process.communicate, timeout=120)
            assert process.returncode == 0, stderr.decode()
        async with database.session() as session:
            total = await session.scalar(select(func.count()).select_from(AuditEntry))
        assert total == 4 * 100 + 3 * 150
    finally:
        await database.dispose()
