"""How fast the public archive answers with a large archive (run by hand).

    python bench/archive.py [--releases 100000] [--database postgresql://127.0.0.1/bench]
                            [--requests 30] [--reuse]

Fills a fresh database (SQLite in a temporary folder unless --database is given; a
PostgreSQL database given here is emptied first) with releases of realistic size
(about 2 KB of text and HTML each, one or two of three topics, a source link),
spread over five years, plus a sent digest of 20,000 deliveries. Then it requests
every kind of archive page through the whole application (routing, middleware,
templates; over ASGI, so no socket) and prints the median, 95th percentile and
worst time per page. Target: every page within 100 ms at 100,000 releases.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select, text

from mailer import archive
from mailer.config import settings_from_mapping
from mailer.context import AppContext
from mailer.message import content_key
from mailer.migrate import upgrade
from mailer.models import (
    ContentGroup,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Release,
    ReleaseLink,
    ReleaseTopic,
    Topic,
)
from mailer.web.app import create_app

WORDS = (
    "ministry government budget hospital school road energy climate agriculture "
    "education culture defence justice health economy transport digital housing "
    "police border water forest tax pension employment research university"
).split()
ACCENTED = ["Šiauliai", "Kaunas", "Klaipėda", "Panevėžys", "Vilnius", "Žemaitija", "Ūkmergė"]


# A long tail of rarer words, drawn by Zipf's law as in real text.
SYLLABLES = "ka lo mi ne ru sa ti vo pe da gu ri".split()
TAIL = [a + b + c for a in SYLLABLES for b in SYLLABLES for c in SYLLABLES]
TAIL_WEIGHTS = [1 / rank for rank in range(1, len(TAIL) + 1)]


def paragraph(rng: random.Random, words: int = 60) -> str:
    """Four of the common words (each then in about a third of the releases) among
    words of the long tail."""
    chosen = rng.sample(WORDS, 4) + rng.choices(TAIL, TAIL_WEIGHTS, k=words - 4)
    rng.shuffle(chosen)
    return " ".join(chosen).capitalize() + "."


async def seed(database, count: int, now: datetime) -> tuple[int, str]:
    rng = random.Random(4287)
    async with database.session() as session:
        topics = dict((await session.execute(select(Topic.slug, Topic.id))).all())
    topic_ids = list(topics.values())
    start = now - timedelta(days=5 * 365)
    step = (now - start) / count
    batch = 5000
    for first in range(0, count, batch):
        releases, links, tagged = [], [], []
        for n in range(first, min(first + batch, count)):
            body = [paragraph(rng) for _ in range(3)]
            place = rng.choice(ACCENTED)
            published = start + step * n
            release_id = n + 1
            releases.append(
                {
                    "id": release_id,
                    "title": f"{rng.choice(WORDS).capitalize()} plan for {place}, number {n}",
                    "published_at": published,
                    "published_estimated": False,
                    "first_seen_at": published,
                    "updated_at": published,
                    "canonical_url": f"https://gov.example.lt/r/{n}" if n % 2 else None,
                    "text": "\n\n".join(body),
                    "html": "".join(f"<p>{p}</p>" for p in body),
                    "summary": body[0][:280],
                    "publisher": "Ministry of Finance",
                    "content_hash": f"{n:064d}",
                    "simhash": n,
                    "excluded": False,
                }
            )
            links.append(
                {
                    "release_id": release_id,
                    "source_name": "Government",
                    "url": f"https://gov.example.lt/r/{n}",
                    "guid": f"bench-{n}",
                    "first_seen_at": published,
                }
            )
            for topic_id in rng.sample(topic_ids, rng.choice((1, 1, 2))):
                tagged.append({"release_id": release_id, "topic_id": topic_id})
        async with database.transaction() as session:
            await session.execute(insert(Release.__table__), releases)
            await session.execute(insert(ReleaseLink.__table__), links)
            await session.execute(insert(ReleaseTopic.__table__), tagged)
    async with database.transaction() as session:
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(
                text("SELECT setval('releases_id_seq', (SELECT max(id) FROM releases))")
            )
        digest = Digest(
            kind="scheduled",
            frequency="daily",
            status=DigestStatus.DONE,
            created_at=now,
            started_at=now,
        )
        session.add(digest)
        await session.flush()
        newest = list(range(count - 25, count + 1))
        # Three selections (readers of different topics), as a real digest has a few.
        selections = [newest[-10:], newest[-20:-10], newest[::3]]
        groups = []
        for chosen in selections:
            group = ContentGroup(
                digest_id=digest.id,
                release_ids=chosen,
                content_key=content_key(chosen),
                held_ids=[],
                recipients=20_000 // 3,
            )
            session.add(group)
            groups.append(group)
        await session.flush()
        rows = []
        for subscriber in range(20_000):
            rows.append(
                {
                    "digest_id": digest.id,
                    "email": f"reader{subscriber}@example.org",
                    "content_group_id": groups[subscriber % 3].id,
                    "status": DeliveryStatus.SENT,
                    "attempts": 1,
                    "created_at": now,
                    "sent_at": now,
                    "bounced": False,
                }
            )
        await session.execute(insert(Delivery.__table__), rows)
        public_id = digest.public_id
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("ANALYZE"))
    return count, public_id


async def run(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp())
    url = args.database or f"sqlite:///{folder}/bench.db"
    settings = settings_from_mapping(
        {
            "data_dir": str(folder / "data"),
            "secret_key": "bench-secret-key-0123456789abcdef",
            "database": {"url": url},
            "site": {"name": "Press Office", "base_url": "https://news.example.org"},
            "topics": [{"name": "Economy"}, {"name": "Health"}, {"name": "Foreign affairs"}],
        },
        config_path=folder / "config.yaml",
        environ={},
    )
    context = AppContext(settings=settings)
    now = datetime.now(UTC)
    async with context.database(prepare=False) as database:
        if args.reuse:
            pass
        elif url.startswith("postgresql"):
            async with database.engine.begin() as connection:
                await connection.execute(text("DROP SCHEMA public CASCADE"))
                await connection.execute(text("CREATE SCHEMA public"))
                await connection.execute(
                    text("DROP TEXT SEARCH CONFIGURATION IF EXISTS mailer_search")
                )
        if not args.reuse:
            await upgrade(database)
    async with context.database() as database:
        if args.reuse:
            async with database.session() as session:
                public_id = await session.scalar(select(Digest.public_id).order_by(Digest.id))
                args.releases = await session.scalar(select(func.count(Release.id)))
            print(f"reusing {args.releases:,} releases ({url})")
        else:
            started = time.perf_counter()
            _, public_id = await seed(database, args.releases, now)
            elapsed = time.perf_counter() - started
            print(f"seeded {args.releases:,} releases in {elapsed:.1f}s ({url})")
        async with database.session() as session:
            middle = await session.scalar(
                select(Release.id).order_by(Release.id).offset(args.releases // 2).limit(1)
            )
            release = await session.get(Release, middle)
            deep = await session.scalar(select(func.min(Release.id)).where(Release.id > 2000))

    app = create_app(context, run_background=False)
    month = (now - timedelta(days=400)).strftime("%Y-%m")
    pages = {
        "archive, first page": "/releases",
        "archive, deep page (keyset)": f"/releases?before={deep}",
        "topic page": "/topics/health",
        "topic + month": f"/releases?topic=economy&month={month}",
        "search, word in a third": "/releases?q=hospital",
        "search, word in every release": "/releases?q=ministry",
        "search, rare word": f"/releases?q={TAIL[-1]}",
        "search, two words": "/releases?q=budget+klaipeda",
        "search, accents folded": "/releases?q=siauliai",
        "search + topic + month": f"/releases?q=energy&topic=health&month={month}",
        "release page": archive.release_path(release.id, release.title),
        "digest page (20,000 deliveries)": f"/digests/{public_id}",
        "Atom, all": "/releases.atom",
        "JSON Feed, topic": "/topics/economy.json",
        "sitemap index": "/sitemap.xml",
        "sitemap file": f"/sitemap-releases-{args.releases // archive.SITEMAP_CHUNK // 2}.xml",
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            # cpu: this process's CPU time per request (the app, and SQLite, which runs
            # in-process), which other load on the machine does not inflate.
            header = f"{'page':34} {'first':>8} {'median':>8} {'p95':>8} {'worst':>8} {'cpu':>8}"
            print(header + "  bytes")
            for label, path in pages.items():
                # The first request meets cold caches (SQLite pages, finished digests).
                began = time.perf_counter()
                warm = await client.get(path)
                first = (time.perf_counter() - began) * 1000
                assert warm.status_code == 200, (path, warm.status_code, warm.text[:300])
                for _ in range(2):
                    await client.get(path)
                times = []
                cpu_began = time.process_time()
                for _ in range(args.requests):
                    began = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - began) * 1000)
                    assert response.status_code == 200
                cpu = (time.process_time() - cpu_began) * 1000 / args.requests
                times.sort()
                p95 = times[max(0, round(len(times) * 0.95) - 1)]
                print(
                    f"{label:34} {first:7.1f}ms {statistics.median(times):7.1f}ms {p95:7.1f}ms "
                    f"{times[-1]:7.1f}ms {cpu:7.1f}ms  {len(response.content):,}"
                )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--database", help="a PostgreSQL URL (emptied first); default SQLite")
    parser.add_argument(
        "--reuse", action="store_true", help="measure a --database this script filled before"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
