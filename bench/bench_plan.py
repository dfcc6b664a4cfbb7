"""How long plan_digest takes for a large list, and what one send stores (run by hand).

    python bench/bench_plan.py [--readers 20000] [--releases 20] [--explain] [--database URL]

Fills a fresh database (SQLite in a temporary folder unless --database is given;
on PostgreSQL give an empty scratch database, it is migrated first) with confirmed
readers, a third of them with a topic, and new releases, then plans two sends to
everyone: the first (no reader planned before) and a second after as many new
releases arrived (readers with watermarks: the daily case). For each it prints the
wall time and the process CPU time (user + system) of planning, and on PostgreSQL
how much the send's tables grew (pg_total_relation_size: rows plus indexes) per
reader, after planning and after the messages are marked sent (status, sent
time) and the tables vacuumed, as a worker leaves them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, text

from mailer.config import settings_from_mapping
from mailer.context import AppContext
from mailer.db import Database
from mailer.digest import SelectionReport, plan_digest
from mailer.migrate import upgrade
from mailer.models import (
    ContentGroup,
    Delivery,
    Digest,
    DigestStatus,
    Release,
    ReleaseTopic,
    Subscriber,
    SubscriberStatus,
    SubscriberTopic,
    Topic,
    utcnow,
)

MEASURED_TABLES = ("deliveries", "content_groups", "watermarks", "subscribers")


def _process_cpu(pid: int) -> float | None:
    """User + system seconds of a local process (the PostgreSQL backend doing the
    work), or None when it is not on this machine: a measure the other load on a
    shared machine hardly changes, unlike wall time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _fill_readers(database: Database, readers: int, topic_ids: list[int]) -> None:
    since = utcnow() - timedelta(days=3)
    if database.dialect == "postgresql":
        # Server-side: a million rows through executemany would take longer than the plan.
        async with database.transaction() as session:
            await session.execute(
                text(
                    "INSERT INTO subscribers (email, email_key, status, frequency, created_at, "
                    "confirmed_at, digest_since, soft_bounces, link_key) "
                    "SELECT 'reader' || n || '@example.org', 'reader' || n || '@example.org', "
                    "'confirmed', 'daily', :since, :since, :since, 0, md5(n::text) "
                    "FROM generate_series(1, :readers) AS n"
                ),
                {"since": since, "readers": readers},
            )
            for index, topic_id in enumerate(topic_ids):
                await session.execute(
                    text(
                        "INSERT INTO subscriber_topics (subscriber_id, topic_id) "
                        "SELECT id, :topic FROM subscribers WHERE id % :every = :which"
                    ),
                    {"topic": topic_id, "every": 3 * len(topic_ids), "which": index},
                )
        async with database.engine.connect() as connection:
            await connection.execute(text("COMMIT"))
            await connection.execute(text("VACUUM ANALYZE"))
        return
    async with database.transaction() as session:
        for start in range(0, readers, 50_000):
            await session.execute(
                insert(Subscriber),
                [
                    {
                        "email": f"reader{n}@example.org",
                        "email_key": f"reader{n}@example.org",
                        "status": SubscriberStatus.CONFIRMED,
                        "confirmed_at": since,
                        "digest_since": since,
                    }
                    for n in range(start, min(readers, start + 50_000))
                ],
            )
        subscriber_ids = list((await session.scalars(select(Subscriber.id))).all())
        await session.execute(
            insert(SubscriberTopic),
            [
                {"subscriber_id": s, "topic_id": topic_ids[n % len(topic_ids)]}
                for n, s in enumerate(subscriber_ids[::3])
            ],
        )


async def _add_releases(database: Database, count: int, topic_ids: list[int], tag: str) -> None:
    now = utcnow()
    async with database.transaction() as session:
        for n in range(count):
            release = Release(
                title=f"Release {tag}{n}",
                published_at=now - timedelta(minutes=n + 1),
                first_seen_at=now - timedelta(minutes=n + 1),
                content_hash=f"{tag}{n:063d}"[:64],
            )
            session.add(release)
            await session.flush()
            await session.execute(
                insert(ReleaseTopic),
                [{"release_id": release.id, "topic_id": topic_ids[n % len(topic_ids)]}],
            )


async def _sizes(database: Database) -> dict[str, int]:
    if database.dialect != "postgresql":
        return {}
    async with database.session() as session:
        return {
            # Summed over partitions (deliveries is partitioned by status, migration 0015).
            table: await session.scalar(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) "
                    "FROM pg_partition_tree(CAST(:table AS regclass))"
                ),
                {"table": table},
            )
            for table in MEASURED_TABLES
        }


async def _mark_sent(database: Database, digest_id: int) -> None:
    """What a worker leaves on each row: status, sent time, attempts."""
    async with database.transaction() as session:
        await session.execute(
            text(
                "UPDATE deliveries SET status = 'sent', sent_at = :now, attempts = 1 "
                "WHERE digest_id = :digest"
            ),
            {"digest": digest_id, "now": utcnow().replace(tzinfo=None)},
        )
    if database.dialect == "postgresql":
        async with database.engine.connect() as connection:
            await connection.execute(text("COMMIT"))
            await connection.execute(text("VACUUM ANALYZE deliveries"))


def _growth(before: dict[str, int], after: dict[str, int], readers: int) -> str:
    if not before:
        return ""
    parts = [f"{t} {(after[t] - before[t]) / readers:.0f}" for t in MEASURED_TABLES]
    total = sum(after[t] - before[t] for t in MEASURED_TABLES) / readers
    return f"{total:.0f} B/reader ({', '.join(parts)})"


async def _send(database: Database, settings, readers: int, explain: bool, label: str) -> None:  # type: ignore[no-untyped-def]
    before = await _sizes(database)
    cpu, started = _cpu(), time.perf_counter()
    server_cpu = None
    async with database.transaction() as session:
        backend = None
        if database.dialect == "postgresql":
            backend = await session.scalar(text("SELECT pg_backend_pid()"))
            server_cpu = _process_cpu(backend)
        digest = Digest(kind="manual", frequency="all", status=DigestStatus.SENDING)
        session.add(digest)
        await session.flush()
        report = (
            SelectionReport(frequency="all", max_age=settings.digest.max_age) if explain else None
        )
        planned = await plan_digest(session, settings, digest, report=report)
        if backend is not None and server_cpu is not None:
            after = _process_cpu(backend)
            server_cpu = after - server_cpu if after is not None else None
    elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    planned_sizes = await _sizes(database)
    await _mark_sent(database, digest.id)
    sent_sizes = await _sizes(database)
    async with database.session() as session:
        groups = await session.scalar(
            select(func.count()).where(ContentGroup.digest_id == digest.id)
        )
        rows = await session.scalar(select(func.count()).where(Delivery.digest_id == digest.id))
    print(
        f"{label}: {database.dialect}, {readers:,} readers: planned {planned:,} deliveries "
        f"({rows:,} rows, {groups} content groups) in {elapsed:.2f} s wall, {cpu:.2f} s CPU "
        f"of this process (commit included)"
        + (
            f", {server_cpu:.2f} s CPU of the PostgreSQL backend (before the commit)"
            if server_cpu is not None
            else ""
        )
    )
    if before:
        print(f"  growth after planning: {_growth(before, planned_sizes, readers)}")
        print(f"  growth after sending + vacuum: {_growth(before, sent_sizes, readers)}")


async def run(readers: int, releases: int, database_url: str | None, explain: bool) -> None:
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
    if database_url:
        await upgrade(Database(settings.database.url))
    async with AppContext(settings=settings).database() as database:
        async with database.session() as session:
            topic_ids = list((await session.scalars(select(Topic.id))).all())
        started = time.perf_counter()
        await _fill_readers(database, readers, topic_ids)
        await _add_releases(database, releases, topic_ids, "a")
        print(f"filled {readers:,} readers in {time.perf_counter() - started:.1f} s")
        await _send(database, settings, readers, explain, "first send")
        await _add_releases(database, releases, topic_ids, "b")
        await _send(database, settings, readers, explain, "second send")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readers", "--subscribers", type=int, default=20_000)
    parser.add_argument("--releases", type=int, default=20)
    parser.add_argument(
        "--explain", action="store_true", help="plan with a SelectionReport (dry runs)"
    )
    parser.add_argument(
        "--database", help="an empty scratch database URL (default: a temporary SQLite file)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.readers, args.releases, args.database, args.explain))


if __name__ == "__main__":
    main()
