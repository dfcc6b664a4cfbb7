"""The suppression list: addresses that must never be mailed again.

Only a keyed hash of the lower-cased address is stored, so erasing a subscriber
removes the address itself while still keeping them from being re-added by an
import or a stale list. The key is derived from the site's secret key.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.config import Settings
from mailer.models import Suppression


def email_key(address: str) -> str:
    """The identity of an address: whitespace-trimmed and lower-cased."""
    return address.strip().lower()


def email_hash(settings: Settings, address: str) -> str:
    key = hashlib.sha256(b"mailer.suppression:" + settings.get_secret_key().encode()).digest()
    return hmac.new(key, email_key(address).encode(), hashlib.sha256).hexdigest()


async def is_suppressed(session: AsyncSession, settings: Settings, address: str) -> bool:
    found = await session.scalar(
        select(Suppression.id).where(Suppression.email_hash == email_hash(settings, address))
    )
    return found is not None


async def suppressed_hashes(session: AsyncSession) -> set[str]:
    return set((await session.scalars(select(Suppression.email_hash))).all())


async def suppress(
    session: AsyncSession, settings: Settings, address: str, reason: str, details: str | None = None
) -> None:
    """Add an address (idempotent: an existing entry keeps its first reason)."""
    values = {"email_hash": email_hash(settings, address), "reason": reason, "details": details}
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(
        insert(Suppression).values(**values).on_conflict_do_nothing(index_elements=["email_hash"])
    )


async def unsuppress(session: AsyncSession, settings: Settings, address: str) -> None:
    """Lift suppression: only for an address that signed up and confirmed anew."""
    await session.execute(
        delete(Suppression).where(Suppression.email_hash == email_hash(settings, address))
    )
