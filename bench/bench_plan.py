"""How long plan_digest takes for a large list (run by hand).

    python bench/bench_plan.py [--subscribers 20000] [--releases 25] [--explain] [--database URL]

Fills a fresh database (SQLite in a temporary folder unless --database is given)
with confirmed subscribers, a third of them with topics, and new releases, then
plans one send for everyone inside a write transaction and reports the time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from mailer.config import settings_from_mapping
from mailer.context import AppContext
from mailer.digest import SelectionReport, plan_digest
from mailer.models import (
    Digest,
    DigestStatus,
    Release,
    ReleaseTopic,
    Subscriber,
    SubscriberRelease,
    SubscriberStatus,
    SubscriberTopic,
    Topic,
    utcnow,
)


async def run(
    subscribers: int, releases: int, database_url: str | None, explain: bool = False
) -> None:
    folder = Path(tempfile.mkdtemp())
    settings = settings_from_mapping(
        {
            "data_dir": str(folder / "data"),
            "database": {"url": database_url or f"sqlite:///{folder / 'bench.db'}"},
            "secret_key": "bench-secret-key-0123456789abcdef",
            "topics": [
                {"name": "Economy", "keywords": ["budget"]},
                {"name": "Health", "keywords": ["hospital"]},
                {"name": "Foreign affairs", "keywords": ["embassy"]},
            ],
        },
        config_path=folder / "config.yaml",
        environ={},
    )
    now = utcnow()
    async with AppContext(settings=settings).database() as database:
        async with database.transaction() as session:
            topic_ids = list((await session.scalars(select(Topic.id))).all())
            await session.execute(
                insert(Subscriber),
                [
                    {
                        "email": f"reader{n}@example.org",
                        "email_key": f"reader{n}@example.org",
                        "status": SubscriberStatus.CONFIRMED,
                        "confirmed_at": now - timedelta(days=3),
                        "digest_since": now - timedelta(days=3),
                    }
                    for n in range(subscribers)
                ],
            )
            subscriber_ids = list((await session.scalars(select(Subscriber.id))).all())
            await session.execute(
                insert(SubscriberTopic),
                [
                    {"subscriber_id": s, "topic_id": topic_ids[s % len(topic_ids)]}
                    for s in subscriber_ids[::3]
                ],
            )
            for n in range(releases):
                release = Release(
                    title=f"Release {n}",
                    published_at=now - timedelta(hours=n + 1),
                    first_seen_at=now - timedelta(hours=n + 1),
                    content_hash=f"{n:064d}",
                )
                session.add(release)
                await session.flush()
                await session.execute(
                    insert(ReleaseTopic),
                    [{"release_id": release.id, "topic_id": topic_ids[n % len(topic_ids)]}],
                )

        started = time.perf_counter()
        async with database.transaction() as session:
            digest = Digest(kind="manual", frequency="all", status=DigestStatus.SENDING)
            session.add(digest)
            await session.flush()
            report = (
                SelectionReport(frequency="all", max_age=settings.digest.max_age)
                if explain
                else None
            )
            planned = await plan_digest(session, settings, digest, report=report)
        elapsed = time.perf_counter() - started
        async with database.session() as session:
            pairs = await session.scalar(select(func.count()).select_from(SubscriberRelease))
        print(
            f"{database.dialect}: planned {planned:,} deliveries and {pairs:,} "
            f"subscriber-release rows in {elapsed:.2f}s (commit included)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--releases", type=int, default=25)
    parser.add_argument(
        "--explain", action="store_true", help="plan with a SelectionReport (dry runs)"
    )
    parser.add_argument("--database", help="a database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    asyncio.run(run(args.subscribers, args.releases, args.database, args.explain))


if __name__ == "__main__":
    main()
