from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from mailer.db import Database
from mailer.migrate import current_revision, ensure_schema, head_revision, upgrade
from mailer.models import Base


async def test_migrated_schema_matches_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert await current_revision(database) == head_revision()
        async with database.engine.connect() as connection:
            diff = await connection.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
            )
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        await database.dispose()


async def test_upgrade_from_empty_creates_every_table(tmp_path) -> None:
    database = Database(f"sqlite:///{tmp_path}/fresh.db")
    try:
        before, after = await upgrade(database)
        assert (before, after) == (None, head_revision())
        async with database.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(Base.metadata.tables) <= tables
        # A second upgrade is a no-op.
        assert await upgrade(database) == (head_revision(), head_revision())
    finally:
        await database.dispose()


async def test_sqlite_is_upgraded_automatically(tmp_path) -> None:
    database = Database(f"sqlite:///{tmp_path}/auto.db")
    try:
        await ensure_schema(database)
        assert await current_revision(database) == head_revision()
    finally:
        await database.dispose()
