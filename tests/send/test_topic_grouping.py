"""A reader who chose several topics gets, from the worker, the digest grouped under
them (the worker reads the choices of each claimed batch, not of every reader)."""

from __future__ import annotations

from pathlib import Path

from mailer.context import AppContext
from mailer.send import Worker, start_digest
from tests.conftest import make_settings
from tests.digest.conftest import TOPICS, add_release, add_subscriber
from tests.support.smtp import SmtpServer


async def test_a_reader_of_several_topics_gets_them_as_headings(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer
) -> None:
    settings = make_settings(
        tmp_path,
        database_url,
        topics=TOPICS,
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
    )
    async with AppContext(settings=settings).database() as database:
        async with database.transaction() as session:
            await add_subscriber(session, "both@example.org", topics=["economy", "health"])
            await add_subscriber(session, "one@example.org", topics=["economy"])
            await add_subscriber(session, "all@example.org")
            await add_release(session, "Budget approved", topics=["economy"])
            await add_release(session, "Hospital opens", topics=["health"])
        digest = await start_digest(database, settings)
        assert digest.recipient_count == 3
        stats = await Worker(database, settings, poll_interval=0.05).run(until_empty=True)
        assert stats.sent == 3

    texts = {
        m.rcpt_tos[0]: m.message.get_body(("plain",)).get_content() for m in smtp_server.messages
    }
    grouped = texts["both@example.org"]
    assert "ECONOMY" in grouped and "HEALTH" in grouped
    assert grouped.index("ECONOMY") < grouped.index("Budget approved")
    assert grouped.index("HEALTH") < grouped.index("Hospital opens")
    # One topic, or none chosen: one flat list, no headings.
    assert "Budget approved" in texts["one@example.org"]
    assert "Hospital opens" in texts["all@example.org"]
    for flat in (texts["one@example.org"], texts["all@example.org"]):
        assert "ECONOMY" not in flat and "HEALTH" not in flat
