"""Shared fixtures.

Database tests run against SQLite always and against PostgreSQL when it answers at
MAILER_TEST_POSTGRES_URL (default postgresql://127.0.0.1:5432/test). Under CI
(CI=true) an unreachable PostgreSQL is an error, never a silent skip. Each test
run works in its own throw-away PostgreSQL database, so parallel runs do not meet.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from mailer.config import Settings, settings_from_mapping
from mailer.context import AppContext
from mailer.db import Database
from mailer.migrate import upgrade
from mailer.models import Base
from tests.support.smtp import SmtpServer

POSTGRES_URL = os.environ.get("MAILER_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _postgres_admin(sql: str) -> None:
    import asyncpg

    url = make_url(POSTGRES_URL)
    connection = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    name = f"mailer_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required under CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    async def migrate() -> None:
        database = Database(url)
        await upgrade(database)
        await database.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database with no schema at all (for migration tests), dropped after."""
    name = f"mailer_empty_{uuid.uuid4().hex[:8]}"
    asyncio.run(_postgres_admin(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "template.db"

    async def migrate() -> None:
        database = Database(f"sqlite:///{path}")
        await upgrade(database)
        await database.dispose()

    asyncio.run(migrate())
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty, migrated database; the test runs once per backend."""
    if request.param == "sqlite":
        target = tmp_path / "mailer.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite:///{target}"
        return
    url = request.getfixturevalue("postgres_url")
    _truncate_all(url)
    yield url


@pytest.fixture
def postgres_database_url(postgres_url: str) -> str:
    """An emptied PostgreSQL database, for tests only PostgreSQL can run."""
    _truncate_all(postgres_url)
    return postgres_url


def _truncate_all(url: str) -> None:
    async def truncate() -> None:
        database = Database(url)
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        async with database.transaction() as session:
            await session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await database.dispose()

    asyncio.run(truncate())


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """For tests whose subject does not depend on the database backend."""
    target = tmp_path / "mailer.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


def make_settings(tmp_path: Path, database_url: str, **sections: Any) -> Settings:
    """Settings as a site would write them, with the data folder under tmp_path."""
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "database": {"url": database_url},
        "secret_key": "test-secret-key-0123456789abcdef",
        "site": {"name": "Test Press Office", "postal_address": "1 Test Street, Vilnius"},
        "sender": {"from": "Press Office <press@example.org>", "list_id": "press.example.org"},
        "smtp": {"embedded": True},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return settings_from_mapping(raw, config_path=tmp_path / "config.yaml", environ={})


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


@pytest.fixture
def app(settings: Settings) -> AppContext:
    return AppContext(settings=settings)


@pytest.fixture
async def database(app: AppContext) -> AsyncIterator[Database]:
    """An open database for `app`, schema current and catalog synced."""
    async with app.database() as database:
        yield database


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()
