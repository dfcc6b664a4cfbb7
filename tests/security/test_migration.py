"""Finding 1, the schema half: migration 0007 on a database that holds readers.

Before it, SQLite gave a new subscriber the id of the highest erased one. The
upgrade must stop that, give every existing reader a fresh link key (so links
mailed before the upgrade, which cannot be told from links to a reused id, stop
working) and lose nothing on the way (the table rebuild must not cascade)."""

from __future__ import annotations

from sqlalchemy import text

from mailer.db import Database
from mailer.migrate import head_revision, upgrade

ROWS = """
INSERT INTO subscribers (id, email, email_key, status, frequency, created_at, soft_bounces)
VALUES (1, 'a@x.org', 'a@x.org', 'confirmed', 'daily', '2025-01-01 00:00:00', 0),
       (2, 'b@x.org', 'b@x.org', 'confirmed', 'daily', '2025-01-01 00:00:00', 0),
       (3, 'c@x.org', 'c@x.org', 'confirmed', 'daily', '2025-01-01 00:00:00', 0);
INSERT INTO topics (id, slug, name, keywords, active) VALUES (1, 'health', 'Health', '[]', true);
INSERT INTO subscriber_topics (subscriber_id, topic_id) VALUES (1, 1), (2, 1), (3, 1);
INSERT INTO consent_events (subscriber_id, action, at, details)
VALUES (1, 'signup', '2025-01-01 00:00:00', '{}'), (2, 'signup', '2025-01-01 00:00:00', '{}');
INSERT INTO digests (id, public_id, kind, frequency, status, created_at, recipient_count)
VALUES (1, 'pub1', 'manual', 'all', 'done', '2025-01-01 00:00:00', 2);
INSERT INTO deliveries (id, digest_id, subscriber_id, email, release_ids, content_key, status,
                        attempts, created_at, bounced)
VALUES (1, 1, 1, 'a@x.org', '[]', 'k', 'sent', 1, '2025-01-01 00:00:00', false),
       (2, 1, 2, 'b@x.org', '[]', 'k', 'sent', 1, '2025-01-01 00:00:00', false);
INSERT INTO admin_users (id, username, password_hash, role, created_at, failed_logins, active)
VALUES (1, 'alice', 'x', 'admin', '2025-01-01 00:00:00', 0, true);
"""


def _revision_before_security() -> str:
    """The revision before the security migration."""
    from alembic.script import ScriptDirectory

    from mailer.migrate import alembic_config

    previous = ScriptDirectory.from_config(alembic_config()).get_revision("0007").down_revision
    assert isinstance(previous, str)
    return previous


async def _fill_and_upgrade(database: Database) -> None:
    before = _revision_before_security()
    await upgrade(database, before)
    async with database.write_engine.begin() as connection:
        for statement in filter(str.strip, ROWS.split(";")):
            await connection.execute(text(statement))
        # The newest reader is erased before the upgrade: the id SQLite used to reuse.
        await connection.execute(text("DELETE FROM subscriber_topics WHERE subscriber_id = 3"))
        await connection.execute(text("DELETE FROM subscribers WHERE id = 3"))
    assert await upgrade(database) == (before, head_revision())


async def _check(database: Database) -> None:
    async with database.write_engine.begin() as connection:
        keys = (await connection.execute(text("SELECT id, link_key FROM subscribers"))).all()
        assert sorted(i for i, _ in keys) == [1, 2]
        assert all(key and len(key) >= 20 for _, key in keys)
        assert len({key for _, key in keys}) == 2
        # Nothing lost to a cascade while the tables were rebuilt.
        count = "SELECT count(*) FROM {}"
        for table, expected in (
            ("subscriber_topics", 2),
            ("consent_events", 2),
            ("deliveries", 2),
            ("admin_users", 1),
        ):
            assert (await connection.execute(text(count.format(table)))).scalar() == expected
        linked = await connection.execute(
            text("SELECT count(*) FROM consent_events WHERE subscriber_id IS NOT NULL")
        )
        assert linked.scalar() == 2
        # An id freed before the upgrade left no trace and may be handed out once
        # (the link keys make that harmless); from now on none is handed out twice.
        insert = (
            "INSERT INTO subscribers (email, email_key, status, frequency, created_at, "
            "soft_bounces, link_key) VALUES ('{0}', '{0}', 'pending', 'daily', "
            "'2025-01-02 00:00:00', 0, 'key-{0}')"
        )
        ids = []
        for address in ("d@x.org", "e@x.org"):
            await connection.execute(text(insert.format(address)))
            new_id = (
                await connection.execute(
                    text(f"SELECT id FROM subscribers WHERE email = '{address}'")
                )
            ).scalar()
            ids.append(new_id)
            await connection.execute(text(f"DELETE FROM subscribers WHERE id = {new_id}"))
    assert ids[1] > ids[0], f"id {ids[1]} was handed out again"


async def test_upgrade_stops_id_reuse_and_rekeys_every_reader_on_sqlite(tmp_path) -> None:
    database = Database(f"sqlite:///{tmp_path}/old.db")
    try:
        await _fill_and_upgrade(database)
        await _check(database)
        async with database.engine.connect() as connection:
            schema = (
                await connection.execute(
                    text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
                )
            ).all()
        rebuilt = {name for name, sql in schema if "AUTOINCREMENT" in (sql or "")}
        assert {"subscribers", "deliveries", "admin_users"} <= rebuilt
    finally:
        await database.dispose()


async def test_upgrade_rekeys_every_reader_on_postgresql(empty_postgres_url: str) -> None:
    database = Database(empty_postgres_url)
    try:
        await _fill_and_upgrade(database)
        async with database.write_engine.begin() as connection:
            # Explicit ids were inserted above; the sequences follow as a restore would.
            for table in ("subscribers", "deliveries", "admin_users"):
                await connection.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
            await connection.execute(text("SELECT setval('subscribers_id_seq', 3)"))
        await _check(database)
    finally:
        await database.dispose()
