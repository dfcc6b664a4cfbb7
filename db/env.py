"""Alembic environment. Run through `mailer db upgrade`, which passes the URL and
the configured Database in ``config.attributes``; plain ``alembic`` is not needed."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from mailer.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
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
