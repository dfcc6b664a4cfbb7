"""Migration 0008: subscriber_releases become watermarks, owed releases and content
groups without losing who received what, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url

from mailer.db import Database
from mailer.digest import plan_digest
from mailer.migrate import head_revision, upgrade
from mailer.models import (
    ContentGroup,
    Delivery,
    Digest,
    DigestStatus,
    Release,
    ReleaseTopic,
    Watermark,
    utcnow,
)
from tests.conftest import _postgres_admin, make_settings

NOW = utcnow()


def _stamp(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%d %H:%M:%S")


async def _fill_before_0008(database: Database) -> dict[str, int]:
    """Three readers and four releases as the old planner left them: Ona (health)
    got 1 and 4 but not 3 (left out by max_items), Jonas (everything) got all four,
    Rūta confirmed after they arrived and got nothing."""
    await upgrade(database, "0009")
    ids: dict[str, int] = {}
    async with database.write_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO topics (id, slug, name, keywords, active) VALUES "
                "(1, 'health', 'Health', '[]', true), (2, 'economy', 'Economy', '[]', true)"
            )
        )
        for n, topic in ((1, 1), (2, 2), (3, 1), (4, 1)):
            result = await connection.execute(
                insert(Release.__table__).values(
                    title=f"Release {n}",
                    published_at=NOW - timedelta(hours=10 - n),
                    first_seen_at=NOW - timedelta(hours=10 - n),
                    content_hash=f"{n:064d}",
                )
            )
            ids[f"r{n}"] = result.inserted_primary_key[0]
            await connection.execute(
                text(f"INSERT INTO release_topics VALUES ({ids[f'r{n}']}, {topic})")
            )
        for sid, email, since in ((1, "ona", 48), (2, "jonas", 48), (3, "ruta", 1)):
            await connection.execute(
                text(
                    "INSERT INTO subscribers (id, email, email_key, status, frequency, "
                    "created_at, confirmed_at, digest_since, soft_bounces, link_key) VALUES "
                    f"({sid}, '{email}@x.org', '{email}@x.org', 'confirmed', 'daily', "
                    f"'{_stamp(since)}', '{_stamp(since)}', '{_stamp(since)}', 0, 'k{sid}')"
                )
            )
        await connection.execute(text("INSERT INTO subscriber_topics VALUES (1, 1)"))
        await connection.execute(
            text(
                "INSERT INTO digests (id, public_id, kind, frequency, status, created_at, "
                f"recipient_count) VALUES (1, 'p1', 'scheduled', 'daily', 'done', "
                f"'{_stamp(0.5)}', 2)"
            )
        )
        r = ids
        sent = {1: [r["r4"], r["r1"]], 2: [r["r4"], r["r3"], r["r2"], r["r1"]]}
        for delivery_id, (subscriber_id, releases) in enumerate(sent.items(), start=1):
            await connection.execute(
                text(
                    "INSERT INTO deliveries (id, digest_id, subscriber_id, email, release_ids, "
                    "content_key, status, attempts, created_at, bounced) VALUES "
                    f"({delivery_id}, 1, {subscriber_id}, 'x', '{releases}', 'k{delivery_id}', "
                    f"'sent', 1, '{_stamp(0.5)}', false)"
                )
            )
            for release_id in releases:
                await connection.execute(
                    text(
                        "INSERT INTO subscriber_releases VALUES "
                        f"({subscriber_id}, {release_id}, {delivery_id})"
                    )
                )
    return ids


async def _check(database: Database, tmp_path: Path, url: str, ids: dict[str, int]) -> None:
    assert await upgrade(database) == ("0009", head_revision())
    async with database.session() as session:
        deliveries = {
            d.subscriber_id: d
            for d in await session.scalars(select(Delivery).order_by(Delivery.id))
        }
        readers = {w.subscriber_id: w for w in await session.scalars(select(Watermark))}
        groups = {g.id: g for g in await session.scalars(select(ContentGroup))}
    # Every message still says what it carried.
    assert deliveries[1].release_ids == [ids["r4"], ids["r1"]]
    assert deliveries[2].release_ids == [ids["r4"], ids["r3"], ids["r2"], ids["r1"]]
    assert readers[1].through_release_id == readers[2].through_release_id == ids["r4"]
    assert 3 not in readers
    # Ona is still owed release 3 (hers, never sent); Jonas is owed nothing.
    assert groups[readers[1].owed_group_id].held_ids == [ids["r3"]]
    assert readers[2].owed_group_id is None

    settings = make_settings(tmp_path, url)
    async with database.transaction() as session:
        session.add(
            Release(
                title="Release 5",
                published_at=NOW - timedelta(minutes=10),
                first_seen_at=NOW - timedelta(minutes=10),
                content_hash=f"{5:064d}",
            )
        )
        await session.flush()
        r5 = await session.scalar(select(Release.id).where(Release.title == "Release 5"))
        session.add(ReleaseTopic(release_id=r5, topic_id=1))
        digest = Digest(kind="manual", frequency="all", status=DigestStatus.SENDING)
        session.add(digest)
        await session.flush()
        await plan_digest(session, settings, digest, NOW)
        planned = {
            d.subscriber_id: d.release_ids
            for d in await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
        }
    # Nobody gets again what they got before the upgrade; Ona gets what she was owed.
    assert planned == {1: [r5, ids["r3"]], 2: [r5], 3: [r5]}


async def test_sqlite_upgrade_keeps_who_received_what(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    database = Database(url)
    try:
        ids = await _fill_before_0008(database)
        await _check(database, tmp_path, url, ids)
    finally:
        await database.dispose()


async def test_postgresql_upgrade_keeps_who_received_what(postgres_url: str, tmp_path) -> None:
    name = f"mailer_upgrade_{uuid.uuid4().hex[:8]}"
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    database = Database(url)
    try:
        ids = await _fill_before_0008(database)
        async with database.write_engine.begin() as connection:
            # Explicit ids were inserted above; the sequences follow as a restore would.
            for table in ("releases", "digests", "deliveries", "subscribers"):
                await connection.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
        await _check(database, tmp_path, url, ids)
    finally:
        await database.dispose()
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
