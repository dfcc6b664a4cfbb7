"""Feed formats and bad feeds, collected over HTTP from the local test server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailer.collect import collect_source
from mailer.collect.feeds import SourceError, parse_feed
from tests.collect.conftest import source, source_row, stored_releases
from tests.collect.server import FIXTURES, LocalServer


@pytest.mark.parametrize(
    ("fixture", "content_type", "title", "published"),
    [
        ("rss091.xml", "application/rss+xml", "Customs office extends opening hours", None),
        (
            "rss10.rdf",
            "application/rdf+xml",
            "Annual inflation eased to 8.7 percent in June",
            datetime(2023, 7, 7, 6, 0, tzinfo=UTC),
        ),
        (
            "ministry.xml",
            "application/rss+xml",
            "Prime Minister Šimonytė: the Vilnius summit strengthened NATO's eastern flank",
            datetime(2023, 7, 12, 7, 0, tzinfo=UTC),
        ),
        (
            "aggregator.xml",
            "application/atom+xml",
            "LITHUANIA: Prime Minister Šimonytė says summit strengthened eastern flank",
            datetime(2023, 7, 13, 8, 0, tzinfo=UTC),
        ),
        (
            "feed.json",
            "application/feed+json",
            "Bank of Lithuania: interest rates will stay high for longer",
            datetime(2023, 7, 11, 9, 0, tzinfo=UTC),
        ),
    ],
)
async def test_each_feed_format_is_collected(
    server: LocalServer,
    open_database,
    sqlite_url: str,
    fixture: str,
    content_type: str,
    title: str,
    published: datetime | None,
) -> None:
    server.serve_fixture("/feed", fixture, content_type)
    async with open_database(sqlite_url, [source("Feed", "feed", url=server.url("/feed"))]) as (
        settings,
        database,
    ):
        result = await collect_source(database, settings, "Feed")
        assert result.error is None and result.new >= 1
        releases = await stored_releases(database)
    first = next(r for r in releases if r.title == title)
    if published is None:
        assert first.published_estimated is True
    else:
        assert first.published_at == published and first.published_estimated is False
    assert first.text and first.summary
    assert [link.source_name for link in first.links] == ["Feed"]


def test_ministry_feed_entry_is_clean_and_complete() -> None:
    parsed = parse_feed((FIXTURES / "ministry.xml").read_bytes(), url="https://urm.example.lt/rss")
    first = parsed.candidates[0]
    assert first.url == "https://urm.example.lt/news/vilnius-summit"  # tracking removed
    assert first.image_url == "https://urm.example.lt/images/summit.jpg"
    assert first.photo_credit == "Photo by Žygimantas Gedvila / BNS"
    assert first.publisher == "Ministry of Foreign Affairs of the Republic of Lithuania"
    for junk in ("BDAR", "Close", "Rating", "2.jpg", "Share on Facebook"):
        assert junk not in first.text and junk not in first.html
    assert parsed.errors == [] and parsed.warnings == []


def test_json_feed_drops_tracking_pixel_and_reads_the_date_line() -> None:
    parsed = parse_feed((FIXTURES / "feed.json").read_bytes(), url="https://lb.example.lt/feed")
    first, second = parsed.candidates
    assert "open.gif" not in first.html
    assert second.published == datetime(2023, 7, 4, tzinfo=UTC)
    assert second.text.startswith("The Bank of Lithuania published")


def test_declared_windows_1257_is_decoded() -> None:
    parsed = parse_feed((FIXTURES / "windows1257.xml").read_bytes())
    assert parsed.candidates[0].title == "Seimo pirmininkė susitiko su Žygimantu Pavilioniu"
    assert "Čmilytė-Nielsen" in parsed.candidates[0].text


def test_wrongly_declared_encoding_is_read_with_a_warning_or_the_sources_override() -> None:
    raw = (FIXTURES / "mislabelled.xml").read_bytes()
    guessed = parse_feed(raw)
    assert len(guessed.candidates) == 2
    assert any("declares utf-8 but is not valid utf-8" in w for w in guessed.warnings)
    fixed = parse_feed(raw, encoding="windows-1257")
    assert fixed.candidates[0].title == "Šiaulių savivaldybė skelbia konkursą"
    assert fixed.warnings == []


def test_missing_encoding_declaration_defaults_to_utf8() -> None:
    raw = (
        "<rss version='2.0'><channel><title>T</title><item><title>Žygimantas meets Šimonytė"
        "</title><guid>g1</guid><description>They met in Vilnius on Monday.</description>"
        "</item></channel></rss>"
    ).encode()
    assert parse_feed(raw).candidates[0].title == "Žygimantas meets Šimonytė"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ((FIXTURES / "malformed.xml").read_bytes(), "malformed feed: not well-formed"),
        ((FIXTURES / "not-a-feed.html").read_bytes(), "expected a feed but got an HTML page"),
        (b"", "the feed is empty"),
        (b"just some text, no markup", "not a feed"),
        (b'{"hello": "world"}', "not a JSON Feed"),
        (b'{"version": "https://jsonfeed.org/version/1.1", "items": [', "malformed JSON Feed"),
    ],
)
def test_bad_feed_documents_give_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_feed(body, url="https://press.example.org/rss")


def test_html_page_error_points_at_the_feed_it_links_to() -> None:
    with pytest.raises(SourceError, match=r"links to a feed at https://press.example.org/rss/"):
        parse_feed((FIXTURES / "not-a-feed.html").read_bytes(), url="https://press.example.org/")


def test_duplicate_guids_and_incomplete_entries_are_reported_per_entry() -> None:
    dupes = parse_feed((FIXTURES / "dupes.xml").read_bytes())
    assert [c.title for c in dupes.candidates] == ["First copy"]
    assert dupes.errors == ["entry 2 (same-guid): duplicate GUID in this feed; kept the first"]

    sloppy = parse_feed((FIXTURES / "incomplete.xml").read_bytes())
    untitled, unlinked = sloppy.candidates
    assert untitled.title.startswith("The municipality opens a new public library")
    assert any("no title; used the opening words" in w for w in sloppy.warnings)
    assert unlinked.url is None and unlinked.guid == "sloppy-2"
    assert sloppy.errors == ["entry 3 (sloppy-3): has neither a title nor any text"]


async def test_bad_entries_are_counted_and_the_good_ones_stored(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_fixture("/sloppy", "incomplete.xml", "application/rss+xml")
    server.serve_fixture("/dupes", "dupes.xml", "application/rss+xml")
    sources = [
        source("Sloppy", "feed", url=server.url("/sloppy")),
        source("Dupes", "feed", url=server.url("/dupes")),
    ]
    async with open_database(sqlite_url, sources) as (settings, database):
        sloppy = await collect_source(database, settings, "Sloppy")
        dupes = await collect_source(database, settings, "Dupes")
        row = await source_row(database, "Sloppy")
    assert (sloppy.new, sloppy.failed, sloppy.error) == (2, 1, None)
    assert (dupes.new, dupes.failed, dupes.error) == (1, 1, None)
    assert row.status == "ok"
    assert row.last_counts["errors"] == ["entry 3 (sloppy-3): has neither a title nor any text"]


@pytest.mark.parametrize(
    ("fixture", "content_type", "message"),
    [
        ("malformed.xml", "application/rss+xml", "malformed feed"),
        ("not-a-feed.html", "text/html", "expected a feed but got an HTML page"),
    ],
)
async def test_a_bad_feed_marks_its_source_failing_and_harms_nothing_else(
    server: LocalServer,
    open_database,
    sqlite_url: str,
    fixture: str,
    content_type: str,
    message: str,
) -> None:
    server.serve_fixture("/bad", fixture, content_type)
    server.serve_fixture("/good", "ministry.xml", "application/rss+xml")
    sources = [
        source("Bad", "feed", url=server.url("/bad")),
        source("Good", "feed", url=server.url("/good")),
    ]
    async with open_database(sqlite_url, sources) as (settings, database):
        bad = await collect_source(database, settings, "Bad")
        good = await collect_source(database, settings, "Good")
        row = await source_row(database, "Bad")
        releases = await stored_releases(database)
    assert bad.error is not None and message in bad.error
    assert row.status == "failing" and message in (row.last_error or "")
    assert row.last_error_at is not None and row.consecutive_failures == 1
    assert good.new == 2 and len(releases) == 2
