"""The audit log: who did what, when, to what.

The domain functions that change things (mailer.subscribers, mailer.accounts) call
:func:`record_in` inside the transaction that makes the change, so the log never
claims an action that did not happen nor misses one that did, whichever shell (the
admin, the API, the CLI) asked for it. :func:`record` is for shells whose domain
does not write its own entry yet.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.db import Database
from mailer.models import AuditEntry, utcnow

MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str | None
    target_id: str | None
    details: dict[str, Any]

    @property
    def target(self) -> str:
        if self.target_type is None:
            return ""
        return f"{self.target_type} {self.target_id}" if self.target_id else self.target_type

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "details": self.details,
        }


def _clean(details: Mapping[str, Any] | None) -> dict[str, Any]:
    # Details are for people reading the log; a huge value (a pasted file) is cut.
    cleaned: dict[str, Any] = {}
    for key, value in (details or {}).items():
        if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
            value = value[:MAX_DETAIL_CHARS] + "…"
        elif not isinstance(value, str | int | float | bool | type(None) | list | dict):
            value = str(value)
        cleaned[str(key)] = value
    return cleaned


def entry(
    actor: str,
    action: str,
    target_type: str | None = None,
    target_id: str | int | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> AuditEntry:
    return AuditEntry(
        at=at or utcnow(),
        actor=actor[:120],
        action=action[:60],
        target_type=target_type[:40] if target_type else None,
        target_id=str(target_id)[:60] if target_id is not None else None,
        details=_clean(details),
    )


async def record_in(
    session: AsyncSession,
    actor: str,
    action: str,
    target_type: str | None = None,
    target_id: str | int | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """Add an entry to the caller's transaction."""
    session.add(entry(actor, action, target_type, target_id, details, at=at))
    await session.flush()


async def record(
    database: Database,
    actor: str,
    action: str,
    target_type: str | None = None,
    target_id: str | int | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """Add an entry in a transaction of its own."""
    async with database.transaction() as session:
        await record_in(session, actor, action, target_type, target_id, details, at=at)


def _conditions(search: str | None, actor: str | None, action: str | None) -> list[Any]:
    conditions: list[Any] = []
    if actor:
        conditions.append(AuditEntry.actor == actor)
    if action:
        conditions.append(AuditEntry.action == action)
    if search:
        pattern = f"%{search.lower()}%"
        conditions.append(
            or_(
                func.lower(AuditEntry.actor).like(pattern),
                func.lower(AuditEntry.action).like(pattern),
                func.lower(AuditEntry.target_type).like(pattern),
                func.lower(AuditEntry.target_id).like(pattern),
            )
        )
    return conditions


async def _entries(
    session: AsyncSession, conditions: list[Any], limit: int, offset: int
) -> list[AuditView]:
    rows = await session.scalars(
        select(AuditEntry)
        .where(*conditions)
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [
        AuditView(r.id, r.at, r.actor, r.action, r.target_type, r.target_id, dict(r.details or {}))
        for r in rows
    ]


async def query(
    database: Database,
    *,
    search: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditView], int]:
    """Newest first; returns one page and the total number of matching entries."""
    conditions = _conditions(search, actor, action)
    async with database.session() as session:
        total = await session.scalar(select(func.count(AuditEntry.id)).where(*conditions))
        return await _entries(session, conditions, limit, offset), total or 0


@dataclass(frozen=True)
class AuditLog:
    """One page of the log as the admin shows it."""

    entries: list[AuditView]
    # Entries matching in all, and the page shown (a page past the end shows the last).
    total: int
    page: int
    # Every action name in the log, for the filter menu.
    actions: list[str]


async def log_page(
    database: Database, *, search: str = "", action: str = "", page: int = 1, size: int = 50
) -> AuditLog:
    """Page ``page`` (from 1) of the entries matching ``search`` and ``action``, newest first."""
    conditions = _conditions(search, None, action)
    async with database.session() as session:
        total = await session.scalar(select(func.count(AuditEntry.id)).where(*conditions)) or 0
        page = min(max(page, 1), max(1, math.ceil(total / size)))
        entries = await _entries(session, conditions, size, (page - 1) * size)
        actions = await session.scalars(select(AuditEntry.action).distinct().order_by("action"))
        return AuditLog(entries, total, page, list(actions))
