"""What the admin's dashboard shows at a glance, read in one call: subscribers by
status, signups per day, how the recent sends went and every source's health.

Each part is the query its own area owns (mailer.subscribers, mailer.send,
mailer.sources); this module only puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from mailer.db import Database
from mailer.models import Source, SourceStatus
from mailer.send import DigestProgress, recent_sends
from mailer.sources import SourceHealth, list_sources
from mailer.subscribers import Count, counts_by_status
from mailer.subscribers.signups import signups_per_day


@dataclass(frozen=True)
class Overview:
    # Subscription status -> subscribers (PostgreSQL's estimate on large lists).
    by_status: dict[str, Count]
    # (day, signups), oldest first, days without any included.
    signups: list[tuple[date, int]]
    # The newest sends first.
    sends: list[DigestProgress]
    # Every source, hand-added releases' labels included: one count everywhere.
    sources: list[SourceHealth]

    @property
    def signups_total(self) -> int:
        return sum(count for _, count in self.signups)

    @property
    def failing_sources(self) -> list[Source]:
        return [h.source for h in self.sources if h.source.status is SourceStatus.FAILING]


async def overview(
    database: Database, *, signup_days: int, send_count: int, now: datetime
) -> Overview:
    """The dashboard's numbers: ``signup_days`` days of signups up to ``now`` and
    the newest ``send_count`` sends."""
    return Overview(
        by_status=await counts_by_status(database),
        signups=await signups_per_day(database, signup_days, now=now),
        sends=await recent_sends(database, limit=send_count),
        sources=await list_sources(database),
    )
