"""What happens when releases arrive, whichever way they came: a scheduled or
"Collect now" collection, `mailer collect`, `mailer ingest`, the admin's "Add
release" or the API. One rule for all of them: readers who chose "as soon as
published" get the new releases now (a send of frequency "immediately").

The send is queued in the outbox like any other; the delivery worker of
`mailer serve` (or `mailer worker`) delivers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select

from mailer.config import Settings
from mailer.db import Database
from mailer.models import Digest, Frequency, Subscriber, SubscriberStatus
from mailer.send import start_digest


async def releases_arrived(
    database: Database,
    settings: Settings,
    release_ids: Sequence[int],
    *,
    now: datetime | None = None,
) -> Digest | None:
    """Queue the "as soon as published" send for newly arrived releases; returns
    it (None: nothing arrived, or nobody chose "as soon as published"). A send
    that finds nothing new for anyone is recorded as done with no recipients."""
    if not release_ids:
        return None
    async with database.session() as session:
        waiting = await session.scalar(
            select(Subscriber.id)
            .where(
                Subscriber.status == SubscriberStatus.CONFIRMED,
                Subscriber.frequency == Frequency.IMMEDIATELY,
            )
            .limit(1)
        )
    if waiting is None:
        return None
    return await start_digest(
        database,
        settings,
        frequency=Frequency.IMMEDIATELY.value,
        kind="scheduled",
        created_by="arrival",
        now=now,
    )
