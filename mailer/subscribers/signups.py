"""Signups per day, for the dashboard."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from mailer.db import Database, day_of
from mailer.models import ConsentEvent


async def signups_per_day(
    database: Database, days: int, *, now: datetime
) -> list[tuple[date, int]]:
    """(day, signups) for the last ``days`` days up to today, oldest first, zeros included."""
    first = now.date() - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    day = func.date(ConsentEvent.at)
    async with database.session() as session:
        rows = await session.execute(
            select(day, func.count())
            .where(ConsentEvent.action == "signup", ConsentEvent.at >= since)
            .group_by(day)
        )
        counts = {day_of(d): n for d, n in rows}
    return [
        (first + timedelta(days=i), counts.get(first + timedelta(days=i), 0)) for i in range(days)
    ]
