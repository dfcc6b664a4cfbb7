"""A large send's outbox rows are in PostgreSQL's statistics once it is planned, so
workers' claims are planned for the rows there are (mailer.digest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from mailer import db
from mailer.context import AppContext
from mailer.send import start_digest
from tests.send.conftest import seed, write_config


async def test_a_planned_send_is_estimated_at_its_size(
    tmp_path: Path, postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "BULK_WRITE_ROWS", 30)
    settings = write_config(tmp_path, postgres_database_url, 25)
    async with AppContext(settings=settings).database() as database:
        await seed(database, 60)
        digest = await start_digest(database, settings)
        assert digest.recipient_count == 60
        async with database.session() as session:
            plan = await session.scalar(
                text(
                    "EXPLAIN (FORMAT JSON) SELECT id FROM deliveries "
                    "WHERE digest_id = :digest AND status = 'pending'"
                ),
                {"digest": digest.id},
            )
        estimated = plan[0]["Plan"]["Plan Rows"]
        # Without the new send's statistics this was a handful of rows.
        assert estimated >= 50
