"""Migration 0014: deliveries lose their claim columns, address snapshot, Message-ID
and queue time, on SQLite and PostgreSQL, without changing what a send shows or
what is still to be sent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, text

from mailer.db import Database
from mailer.migrate import head_revision, upgrade
from mailer.models import Delivery, DeliveryStatus, Digest, utcnow
from mailer.retention import send_counts
from mailer.send.worker import Worker
from tests.conftest import make_settings
from tests.support.old_schema import insert_confirmed_reader

NOW = utcnow()


def _stamp(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%d %H:%M:%S")


async def _fill_at_0008(database: Database) -> None:
    """A send to three readers cut short: one message sent, one on the wire of a
    worker that was stopped for the upgrade, one not tried; and a test send."""
    await upgrade(database, "0008")
    async with database.write_engine.begin() as connection:
        for sid, name in ((1, "ona"), (2, "jonas"), (3, "ruta")):
            await insert_confirmed_reader(connection, sid, name, _stamp(48))
        await connection.execute(
            text(
                "INSERT INTO digests (id, public_id, kind, frequency, status, created_at, "
                "started_at, recipient_count) VALUES "
                f"(1, 'p1', 'scheduled', 'daily', 'sending', '{_stamp(2)}', '{_stamp(1)}', 3), "
                f"(2, 'p2', 'test', 'all', 'sending', '{_stamp(2)}', '{_stamp(1)}', 1)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO content_groups (id, digest_id, release_ids, content_key, held_ids, "
                "recipients) VALUES (1, 1, '[]', 'k1', '[]', 3), (2, 2, '[]', 'k2', '[]', 1)"
            )
        )
        rows = (
            (1, 1, "1", "'ona@x.org'", "sent", "'host-1-a'", "'<1.d1.x@x.org>'"),
            (2, 1, "2", "'jonas@x.org'", "sending", "'host-1-a'", "NULL"),
            (3, 1, "3", "'ruta@x.org'", "pending", "NULL", "NULL"),
            (4, 2, "NULL", "'editor@x.org'", "pending", "NULL", "NULL"),
        )
        for delivery_id, digest_id, subscriber, email, status, claimed_by, message_id in rows:
            await connection.execute(
                text(
                    "INSERT INTO deliveries (id, digest_id, subscriber_id, email, "
                    "content_group_id, status, attempts, claimed_by, message_id, created_at, "
                    f"bounced) VALUES ({delivery_id}, {digest_id}, {subscriber}, {email}, "
                    f"{digest_id}, '{status}', 0, {claimed_by}, {message_id}, '{_stamp(1)}', "
                    "false)"
                )
            )


async def _check(database: Database, tmp_path: Path, url: str) -> None:
    assert await upgrade(database) == ("0008", head_revision())
    async with database.session() as session:
        deliveries = {d.id: d for d in await session.scalars(select(Delivery))}
        digests = list(await session.scalars(select(Digest).order_by(Digest.id)))
        counts = await send_counts(session, digests)
    # The message on the wire of the stopped worker is to be sent again (its journal,
    # applied when a worker starts, marks it sent if the server took it).
    assert {i: d.status for i, d in deliveries.items()} == {
        1: DeliveryStatus.SENT,
        2: DeliveryStatus.PENDING,
        3: DeliveryStatus.PENDING,
        4: DeliveryStatus.PENDING,
    }
    # Readers' messages go to their address; the test send keeps its own.
    assert {i: d.email for i, d in deliveries.items()} == {
        1: "ona@x.org",
        2: "jonas@x.org",
        3: "ruta@x.org",
        4: "editor@x.org",
    }
    assert deliveries[4].test_address == "editor@x.org" and deliveries[1].test_address is None
    assert counts[1] == {"sent": 1, "pending": 2, "bounced": 0}
    assert counts[2] == {"pending": 1, "bounced": 0}

    settings = make_settings(tmp_path, url)
    worker = Worker(database, settings)
    claimed = await worker.claim(10)
    assert [(c.id, c.email) for c in claimed] == [
        (2, "jonas@x.org"),
        (3, "ruta@x.org"),
        (4, "editor@x.org"),
    ]
    # Claimed, they are in flight, not pending, and no second claim takes them.
    async with database.session() as session:
        counts = await send_counts(session, digests)
    assert counts[1] == {"sent": 1, "sending": 2, "bounced": 0}
    assert await Worker(database, settings).claim(10) == []


async def test_sqlite_upgrade_keeps_every_send_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    database = Database(url)
    try:
        await _fill_at_0008(database)
        await _check(database, tmp_path, url)
    finally:
        await database.dispose()


async def test_postgresql_upgrade_keeps_every_send_as_it_was(
    empty_postgres_url: str, tmp_path: Path
) -> None:
    database = Database(empty_postgres_url)
    try:
        await _fill_at_0008(database)
        await _check(database, tmp_path, empty_postgres_url)
    finally:
        await database.dispose()
