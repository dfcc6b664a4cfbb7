"""Guarantee: what a slow source delivers late still reaches readers who confirmed
before mailer collected it, whatever publication date the source gives it.

The collector records when it first saw a release; planning goes by that. Here
both halves run for real: a feed read by the collector, then a send planned.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import format_datetime

from sqlalchemy import select

from mailer.collect import collect_source
from mailer.config import Settings
from mailer.db import Database
from mailer.models import Delivery, Subscriber, SubscriberStatus, utcnow
from mailer.send import start_digest
from tests.collect.conftest import rss_feed, source, stored_releases
from tests.collect.server import LocalServer

BODIES = {
    "s-1": "The Financial Supervisory Agency fined two banks a total of 1.2 million euro for "
    "weak checks on the origin of their clients' money. Both banks have appealed.",
    "s-2": "The agency licensed a new non-life insurer that will sell motor and property "
    "policies from March. It must hold capital of at least 4 million euro.",
}


def _feed(items: list[tuple[str, str, str]]) -> str:
    """The agency's feed with items of (guid, title, RFC 822 date)."""
    return rss_feed(
        "Slow agency",
        "https://slow.example.lt",
        [(guid, title, published, BODIES[guid]) for guid, title, published in items],
    )


async def _confirm_reader(database: Database, address: str, at: datetime) -> None:
    async with database.transaction() as session:
        session.add(
            Subscriber(
                email=address,
                email_key=address,
                status=SubscriberStatus.CONFIRMED,
                created_at=at,
                confirmed_at=at,
                digest_since=at,
            )
        )


async def _planned_titles(database: Database, settings: Settings) -> dict[str, list[str]]:
    digest = await start_digest(database, settings)
    titles = {r.id: r.title for r in await stored_releases(database)}
    async with database.session() as session:
        rows = await session.scalars(select(Delivery).where(Delivery.digest_id == digest.id))
        return {row.email: sorted(titles[i] for i in row.release_ids) for row in rows}


async def test_back_dated_release_collected_after_confirmation_reaches_the_reader(
    server: LocalServer, open_database, database_url: str
) -> None:
    now = utcnow()
    server.serve(
        "/slow",
        _feed([("s-1", "Agency fines two banks", format_datetime(now - timedelta(days=2)))]),
    )
    agency = [source("Slow agency", "feed", url=server.url("/slow"))]
    async with open_database(database_url, agency) as (settings, database):
        await _confirm_reader(database, "reader@example.net", now - timedelta(days=1))
        result = await collect_source(database, settings, "Slow agency")
        assert result.new == 1
        [fined] = await stored_releases(database)
        assert fined.published_at < now - timedelta(days=1) < fined.first_seen_at
        assert await _planned_titles(database, settings) == {
            "reader@example.net": ["Agency fines two banks"]
        }


async def test_release_collected_before_the_reader_confirmed_stays_in_the_archive(
    server: LocalServer, open_database, database_url: str
) -> None:
    now = utcnow()
    published = format_datetime(now - timedelta(days=2))
    server.serve("/slow", _feed([("s-1", "Agency fines two banks", published)]))
    agency = [source("Slow agency", "feed", url=server.url("/slow"))]
    async with open_database(database_url, agency) as (settings, database):
        assert (await collect_source(database, settings, "Slow agency")).new == 1
        await _confirm_reader(database, "reader@example.net", utcnow())
        # The next run finds one more release from the same two days ago.
        server.serve(
            "/slow",
            _feed(
                [
                    ("s-1", "Agency fines two banks", published),
                    ("s-2", "Agency licenses a new insurer", published),
                ]
            ),
        )
        assert (await collect_source(database, settings, "Slow agency")).new == 1
        assert await _planned_titles(database, settings) == {
            "reader@example.net": ["Agency licenses a new insurer"]
        }
