"""Rows written with plain SQL into a schema of an older migration (the models
describe only the newest one)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def insert_confirmed_reader(
    connection: AsyncConnection, subscriber_id: int, name: str, since: str
) -> None:
    """A confirmed daily reader ``<name>@x.org`` (link key ``k<id>``); ``since`` is a
    ``YYYY-MM-DD HH:MM:SS`` literal, which both databases read as a time."""
    await connection.execute(
        text(
            "INSERT INTO subscribers (id, email, email_key, name, name_key, status, "
            "frequency, created_at, confirmed_at, digest_since, soft_bounces, link_key) "
            f"VALUES ({subscriber_id:d}, '{name}@x.org', '{name}@x.org', '{name}', '{name}', "
            f"'confirmed', 'daily', '{since}', '{since}', '{since}', 0, 'k{subscriber_id:d}')"
        )
    )
