"""Leadership: at most one process runs the scheduler's jobs at a time.

PostgreSQL: a session-level advisory lock held on a dedicated connection; it is
released by the server the moment that connection (or its process) dies.
SQLite: a lease row in the ``locks`` table, renewed while held; a process that dies
stops renewing and another takes over once the lease has expired.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from mailer.db import Database
from mailer.models import Lock, utcnow

LEASE = timedelta(seconds=60)


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class Leadership:
    def __init__(self, database: Database, name: str, holder: str, lease: timedelta = LEASE):
        self.database = database
        self.name = name
        self.holder = holder
        self.lease = lease
        self.is_leader = False
        self._connection: AsyncConnection | None = None

    async def refresh(self) -> bool:
        """Take or renew leadership if possible; returns whether we hold it now."""
        try:
            if self.database.is_sqlite:
                self.is_leader = await self._refresh_lease()
            else:
                self.is_leader = await self._refresh_advisory()
        except Exception:
            await self._drop_connection()
            self.is_leader = False
            raise
        return self.is_leader

    async def _refresh_lease(self) -> bool:
        now = utcnow()
        async with self.database.transaction() as session:
            lock = await session.get(Lock, self.name)
            if lock is None:
                session.add(Lock(name=self.name, holder=self.holder, expires_at=now + self.lease))
                return True
            if lock.holder == self.holder or lock.expires_at < now:
                lock.holder, lock.expires_at = self.holder, now + self.lease
                return True
            return False

    async def _refresh_advisory(self) -> bool:
        if self.is_leader and self._connection is not None:
            # Still ours as long as the connection is alive.
            await self._connection.execute(text("SELECT 1"))
            return True
        if self._connection is None:
            self._connection = await self.database.engine.connect()
        got = await self._connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"), {"key": _advisory_key(self.name)}
        )
        await self._connection.commit()
        return bool(got)

    async def release(self) -> None:
        if self.database.is_sqlite and self.is_leader:
            async with self.database.transaction() as session:
                lock = await session.get(Lock, self.name)
                if lock is not None and lock.holder == self.holder:
                    await session.delete(lock)
        if self._connection is not None and self.is_leader:
            await self._connection.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": _advisory_key(self.name)}
            )
            await self._connection.commit()
        self.is_leader = False
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if self.is_leader:
                # Never hand a connection that holds the lock back to the pool.
                await connection.invalidate()
            await connection.close()
        except Exception:  # noqa: S110 - the connection is already broken
            pass
