from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.models import Release, Source
from tests.collect.server import FIXTURES, LocalServer
from tests.conftest import make_settings

TOPICS = [
    {"name": "Economy", "keywords": ["economy", "budget", "tax", "inflation", "investment"]},
    {"name": "Health", "keywords": ["health", "hospital", "vaccine", "medicine"]},
    {
        "name": "Foreign affairs",
        "keywords": ["foreign minister", "embassy", "NATO", "European Union", "diplomatic"],
    },
]


REPOSITORY = Path(__file__).parents[2]
TEST_COLLECTOR: dict[str, Any] = {
    "allow_private_hosts": ["127.0.0.1"],
    "folder_roots": [str(FIXTURES), str(REPOSITORY / "examples")],
}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    running = LocalServer().start()
    yield running
    running.stop()


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


def source(name: str, kind: str, **options: Any) -> dict[str, Any]:
    """A source as config.yaml would list it, with test-friendly HTTP limits."""
    return {"name": name, "kind": kind, "timeout": 2, "retries": 0, **options}


OpenDatabase = Callable[..., Any]


@pytest.fixture
def open_database(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """open_database(url, sources=[...]) -> an async context manager yielding
    (settings, database) with the schema current and the catalog synced."""

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opener(
        url: str, sources: list[dict[str, Any]], **sections: Any
    ) -> AsyncIterator[tuple[Settings, Database]]:
        # The test server is on loopback and fixtures live in the repository: allowed
        # here on purpose (tests/security checks that nothing else is).
        sections.setdefault(
            "collector",
            {**TEST_COLLECTOR, "folder_roots": [*TEST_COLLECTOR["folder_roots"], str(tmp_path)]},
        )
        settings = make_settings(tmp_path, url, sources=sources, topics=TOPICS, **sections)
        async with AppContext(settings=settings).database() as database:
            yield settings, database

    yield opener


async def stored_releases(database: Database) -> list[Release]:
    async with database.session() as session:
        rows = await session.scalars(
            select(Release)
            .where(Release.merged_into_id.is_(None))
            .options(selectinload(Release.links), selectinload(Release.topics))
            .order_by(Release.published_at, Release.id)
        )
        return list(rows.all())


async def source_row(database: Database, name: str) -> Source:
    async with database.session() as session:
        row = await session.scalar(select(Source).where(Source.name == name))
        assert row is not None
        return row


def rss_feed(channel: str, site: str, items: list[tuple[str, str, str, str]]) -> str:
    """An RSS 2.0 feed of ``channel`` at ``site`` with items of (guid, title, RFC 822
    date, description); item links are ``{site}/news/{guid}``."""
    entries = "".join(
        f"""
  <item>
    <title>{escape(title)}</title>
    <link>{site}/news/{guid}</link>
    <guid isPermaLink="false">{guid}</guid>
    <pubDate>{published}</pubDate>
    <description>{escape(body)}</description>
  </item>"""
        for guid, title, published, body in items
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel>
  <title>{escape(channel)}</title>
  <link>{site}/</link>
  <description>Press releases</description>{entries}
</channel></rss>"""
