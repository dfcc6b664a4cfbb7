"""Alembic environment. Run through `mailer db upgrade`, which passes the URL and
the configured Database in ``config.attributes``; plain ``alembic`` is not needed."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from mailer.models import Base, is_unmapped_object

target_metadata = Base.metadata


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # The full-text search table and index are made by hand in migration 0006.
    return not is_unmapped_object(name)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    database = context.config.attributes["database"]
    async with database.engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()


def run_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())
