from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import inspect

from mailer.cli import main
from mailer.db import Database
from mailer.migrate import (
    SchemaOutdated,
    current_revision,
    ensure_schema,
    head_revision,
    upgrade,
)
from mailer.models import Base, is_unmapped_object


async def test_migrated_schema_matches_models(database_url: str) -> None:
    database = Database(database_url)
    try:
        assert await current_revision(database) == head_revision()
        async with database.engine.connect() as connection:
            diff = await connection.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(
                        c, opts={"include_name": lambda name, *_: not is_unmapped_object(name)}
                    ),
                    Base.metadata,
                )
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


async def test_postgresql_with_an_old_schema_is_refused_not_changed(
    empty_postgres_url: str,
) -> None:
    """Only SQLite is upgraded behind the operator's back; PostgreSQL says what to run."""
    url = empty_postgres_url
    database = Database(url)
    try:
        with pytest.raises(SchemaOutdated, match="run `mailer db upgrade`"):
            await ensure_schema(database)
        assert await current_revision(database) is None
        result = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["subscribers", "list"],
            env={"MAILER_DATABASE_URL": url, "MAILER_CONFIG": "config.yaml"},
        )
        assert result.exit_code == 1
        assert "mailer db upgrade" in result.output
        upgraded = await asyncio.to_thread(
            CliRunner().invoke,
            main,
            ["db", "upgrade"],
            env={"MAILER_DATABASE_URL": url, "MAILER_CONFIG": "config.yaml"},
        )
        assert upgraded.exit_code == 0, upgraded.output
        assert await current_revision(database) == head_revision()
    finally:
        await database.dispose()
