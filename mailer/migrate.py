"""Schema migrations (Alembic scripts in db/), driven from Python.

Policy on an out-of-date schema: a SQLite database is upgraded automatically on
start (it is the embedded single-machine default and nobody else shares it); any
other database is left alone and the command refuses to run, saying to run
``mailer db upgrade``, because an operator should choose when a shared
production schema changes.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from mailer.db import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "db"


class SchemaOutdated(Exception):
    pass


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found in db/versions"
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(database: Database) -> str | None:
    async with database.engine.connect() as connection:
        return await connection.run_sync(_current)


async def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to ``revision``; returns (revision before, revision after)."""
    config = alembic_config()

    def _upgrade(connection: Connection) -> tuple[str | None, str]:
        before = _current(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return before, _current(connection) or ""

    # The write engine: on SQLite two processes upgrading at once serialise here.
    async with database.write_engine.connect() as connection:
        if not database.is_sqlite:
            async with connection.begin():
                return await connection.run_sync(_upgrade)
        # SQLite changes some tables by rebuilding them, and dropping the old copy
        # with foreign keys on would cascade into child rows. The pragma only
        # takes effect outside a transaction, hence the raw connection.
        await connection.run_sync(_sqlite_foreign_keys, False)
        try:
            async with connection.begin():
                result = await connection.run_sync(_upgrade)
                broken = await connection.run_sync(_sqlite_foreign_key_violations)
                if broken:
                    raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
            return result
        finally:
            await connection.run_sync(_sqlite_foreign_keys, True)


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    cursor.close()


def _sqlite_foreign_key_violations(connection: Connection) -> list[tuple[object, ...]]:
    return [tuple(row) for row in connection.exec_driver_sql("PRAGMA foreign_key_check")]


async def ensure_schema(database: Database) -> None:
    current = await current_revision(database)
    head = head_revision()
    if current == head:
        return
    if database.is_sqlite:
        await upgrade(database)
        return
    state = "empty" if current is None else f"at revision {current}"
    raise SchemaOutdated(
        f"the database schema is {state}, this mailer needs {head}: run `mailer db upgrade`"
    )
