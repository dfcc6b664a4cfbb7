"""Migration 0015: on PostgreSQL deliveries are split by status into two partitions;
on both databases the per-reader unique key becomes a plain index and bounces lose
their foreign key. Who received what, what is still to send and which delivery a
bounce was about survive the upgrade and a downgrade."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, text

from mailer.db import Database
from mailer.migrate import head_revision, upgrade
from mailer.models import Bounce, Delivery, Digest, utcnow
from mailer.retention import send_counts
from tests.support.old_schema import insert_confirmed_reader

NOW = utcnow()
STATUSES = {1: "sent", 2: "sent", 3: "failed", 4: "pending", 5: "deferred"}


def _stamp(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%d %H:%M:%S")


async def _fill_at_0014(database: Database) -> None:
    await upgrade(database, "0014")
    async with database.write_engine.begin() as connection:
        for sid in STATUSES:
            await insert_confirmed_reader(connection, sid, f"r{sid}", _stamp(48))
        await connection.execute(
            text(
                "INSERT INTO digests (id, public_id, kind, frequency, status, created_at, "
                "started_at, recipient_count) VALUES "
                f"(1, 'p1', 'scheduled', 'daily', 'sending', '{_stamp(2)}', '{_stamp(1)}', 5)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO content_groups (id, digest_id, release_ids, content_key, held_ids, "
                "recipients) VALUES (1, 1, '[]', 'k1', '[]', 5)"
            )
        )
        for delivery_id, status in STATUSES.items():
            sent_at = f"'{_stamp(1)}'" if status == "sent" else "NULL"
            await connection.execute(
                text(
                    "INSERT INTO deliveries (id, digest_id, subscriber_id, content_group_id, "
                    "status, attempts, sent_at, bounced) VALUES "
                    f"({delivery_id}, 1, {delivery_id}, 1, '{status}', 1, {sent_at}, "
                    f"{'true' if delivery_id == 2 else 'false'})"
                )
            )
        if connection.dialect.name == "postgresql":
            # As rows inserted without an id would have left it.
            await connection.execute(text(f"SELECT setval('deliveries_id_seq', {max(STATUSES)})"))
        await connection.execute(
            text(
                "INSERT INTO bounces (id, delivery_id, email_hash, kind, received_at) "
                f"VALUES (1, 2, 'h', 'hard', '{_stamp(0.5)}')"
            )
        )


async def _state(database: Database) -> tuple[dict[int, str], dict[str, int], int | None]:
    async with database.session() as session:
        statuses = {d.id: d.status.value for d in await session.scalars(select(Delivery))}
        digest = await session.get(Digest, 1)
        assert digest is not None
        counts = (await send_counts(session, [digest]))[1]
        bounce = await session.get(Bounce, 1)
        assert bounce is not None
    return statuses, counts, bounce.delivery_id


async def _check(database: Database, postgresql: bool) -> None:
    assert await upgrade(database) == ("0014", head_revision())
    statuses, counts, bounced = await _state(database)
    assert statuses == STATUSES
    assert counts == {"sent": 2, "failed": 1, "pending": 1, "deferred": 1, "bounced": 1}
    assert bounced == 2
    async with database.write_engine.begin() as connection:
        if postgresql:
            placed = await connection.execute(
                text("SELECT id, tableoid::regclass FROM deliveries ORDER BY id")
            )
            assert {i: str(table) for i, table in placed} == {
                1: "deliveries_sent",
                2: "deliveries_sent",
                3: "deliveries_unsent",
                4: "deliveries_unsent",
                5: "deliveries_unsent",
            }
        # New rows take ids after the old ones, and a result moves its row.
        new_id = (
            await connection.execute(
                text(
                    "INSERT INTO deliveries (digest_id, subscriber_id, content_group_id, status, "
                    "attempts, bounced) VALUES (1, 1, 1, 'pending', 0, false) RETURNING id"
                )
            )
        ).scalar_one()
        assert new_id > max(STATUSES)
        await connection.execute(
            text("UPDATE deliveries SET status = 'sent' WHERE id = :id"), {"id": new_id}
        )
        await connection.execute(text("DELETE FROM deliveries WHERE id = :id"), {"id": new_id})

    # Down and up again: nothing lost either way.
    await upgrade(database, "0014")
    assert (await _state(database))[0] == STATUSES
    await upgrade(database)
    statuses, counts, bounced = await _state(database)
    assert statuses == STATUSES and bounced == 2
    assert counts["sent"] == 2


async def test_sqlite_upgrade_keeps_every_delivery(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/old.db")
    try:
        await _fill_at_0014(database)
        await _check(database, postgresql=False)
    finally:
        await database.dispose()


async def test_postgresql_upgrade_splits_deliveries_by_status(empty_postgres_url: str) -> None:
    database = Database(empty_postgres_url)
    try:
        await _fill_at_0014(database)
        await _check(database, postgresql=True)
    finally:
        await database.dispose()
