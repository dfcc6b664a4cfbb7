"""Page sources, folder sources and feed files; running the same source twice at once."""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from mailer.collect import collect_source
from mailer.models import Lock, utcnow
from tests.collect.conftest import source, source_row, stored_releases
from tests.collect.server import FIXTURES, LocalServer

PAGES = FIXTURES / "pages"
HTML = "text/html; charset=utf-8"


def serve_pages(server: LocalServer) -> None:
    server.serve("/news", (PAGES / "listing.html").read_bytes(), HTML)
    server.serve(
        "/news/vaccination-campaign", (PAGES / "release-vaccination.html").read_bytes(), HTML
    )
    server.serve("/news/hospital-wing", (PAGES / "release-hospital.html").read_bytes(), HTML)


def page_source(server: LocalServer, **options: object) -> dict[str, object]:
    options = {"link_selector": ".news-list a.title", **options}
    return source("Health ministry", "page", url=server.url("/news"), **options)


async def test_page_source_reads_each_release_page(
    server: LocalServer, open_database, database_url: str
) -> None:
    serve_pages(server)
    async with open_database(database_url, [page_source(server)]) as (settings, database):
        first = await collect_source(database, settings, "Health ministry")
        second = await collect_source(database, settings, "Health ministry")
        releases = await stored_releases(database)
        row = await source_row(database, "Health ministry")
    assert (first.new, first.failed) == (2, 1)
    assert first.entry_errors == [f"{server.url('/news/withdrawn')}: HTTP 404 Not Found"]
    vaccination, hospital = sorted(releases, key=lambda r: r.title, reverse=True)
    assert vaccination.title == "Spring vaccination campaign opens in 60 municipalities"
    assert vaccination.published_at == datetime(2024, 3, 5, 7, 30, tzinfo=UTC)
    assert vaccination.image_url == server.url("/images/vaccination-point.jpg")
    assert vaccination.photo_credit == "Photo: Ministry of Health / Jonas Petraitis"
    assert vaccination.publisher == "Ministry of Health"
    assert f'href="{server.url("/portal")}"' in vaccination.html
    for junk in ("cookies", "Accept all", "Rate this", "Share on", "mailing list", "track()"):
        assert junk not in vaccination.text and junk not in vaccination.html
    assert hospital.published_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert hospital.publisher == "Ministry of Health of the Republic of Lithuania"
    assert hospital.text.startswith("A new wing of the Kaunas clinical hospital")
    assert {t.slug for t in hospital.topics} == {"economy", "health"}
    # Known pages are not fetched again; the failed one is retried.
    assert (second.new, second.unchanged, second.failed) == (0, 2, 1)
    assert len(server.hits("/news/hospital-wing")) == 1
    assert len(server.hits("/news/withdrawn")) == 2
    assert row.status == "ok"


async def test_page_source_whose_selector_matches_nothing_fails_clearly(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    serve_pages(server)
    broken = page_source(server, link_selector=".press-list a")
    async with open_database(sqlite_url, [broken]) as (settings, database):
        result = await collect_source(database, settings, "Health ministry")
    assert result.error == (
        "link_selector '.press-list a' matched no links on the listing page"
        " (has the site changed its layout?)"
    )


async def test_page_source_takes_at_most_max_pages_per_run(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    serve_pages(server)
    async with open_database(sqlite_url, [page_source(server, max_pages=1)]) as (
        settings,
        database,
    ):
        first = await collect_source(database, settings, "Health ministry")
        second = await collect_source(database, settings, "Health ministry")
    assert first.new == 1 and "read the first 1" in first.warnings[0]
    assert second.new == 1


def copy_examples(target: Path) -> Path:
    folder = target / "drop"
    shutil.copytree(Path(__file__).parents[2] / "examples" / "releases", folder)
    return folder


async def test_folder_source_picks_up_new_and_changed_files_only(
    tmp_path: Path, open_database, database_url: str
) -> None:
    folder = copy_examples(tmp_path)
    drop = source("Drop folder", "folder", path=str(folder))
    async with open_database(database_url, [drop]) as (settings, database):
        first = await collect_source(database, settings, "Drop folder")
        unchanged = await collect_source(database, settings, "Drop folder")

        (folder / "new-release.txt").write_text(
            "Customs office extends opening hours\n\nPublished 2024-08-01\n\n"
            "The customs office at the port will stay open until 22:00 on weekdays.",
            encoding="utf-8",
        )
        budget = folder / "2025-10-23-budget-2026.md"
        budget.write_text(
            budget.read_text(encoding="utf-8").replace("2.8 percent", "2.6 percent"),
            encoding="utf-8",
        )
        # Touched but not changed: no work.
        os.utime(folder / "2024-06-18-embassy-reopens.eml")
        changed = await collect_source(database, settings, "Drop folder")
        releases = await stored_releases(database)
    assert (first.new, first.failed, first.error) == (4, 0, None)
    assert (unchanged.new, unchanged.updated, unchanged.unchanged) == (0, 0, 4)
    assert (changed.new, changed.updated, changed.unchanged) == (1, 1, 3)
    titles = {r.title for r in releases}
    assert "Customs office extends opening hours" in titles
    budget_release = next(r for r in releases if r.title.startswith("Draft 2026 budget"))
    assert "2.6 percent" in budget_release.text
    assert len(releases) == 5


async def test_example_releases_read_cleanly(
    tmp_path: Path, open_database, sqlite_url: str
) -> None:
    folder = copy_examples(tmp_path)
    drop = source("Drop folder", "folder", path=str(folder))
    async with open_database(sqlite_url, [drop]) as (settings, database):
        await collect_source(database, settings, "Drop folder")
        releases = {r.title: r for r in await stored_releases(database)}
    summit = releases[
        "Prime Minister Šimonytė: the Vilnius summit strengthened NATO's eastern flank"
    ]
    assert summit.publisher == "Office of the Government of the Republic of Lithuania"
    assert summit.photo_credit == "Photo by Žygimantas Gedvila / BNS"
    assert summit.published_at == datetime(2023, 7, 12, tzinfo=UTC)
    assert {t.slug for t in summit.topics} == {"economy", "foreign-affairs"}
    embassy = releases["Lithuanian embassy in Kyiv resumes consular services"]
    assert embassy.published_at == datetime(2024, 6, 18, 8, 15, tzinfo=UTC)
    assert "Press Office" not in embassy.text  # the e-mail signature
    assert {t.slug for t in embassy.topics} == {"foreign-affairs"}
    vaccination = releases["Spring vaccination campaign opens in 60 municipalities"]
    assert vaccination.canonical_url == "https://sam.example.lt/news/spring-vaccination-campaign"
    assert "pixel" not in vaccination.html
    for release in releases.values():
        for junk in ("BDAR", "cookies", "Rating", "Share", "mailing list", "Subscribe", ".jpg"):
            assert junk not in release.text, (junk, release.title)
            assert junk not in release.summary


async def test_a_bad_file_in_the_folder_is_reported_and_the_rest_stored(
    tmp_path: Path, open_database, sqlite_url: str
) -> None:
    folder = copy_examples(tmp_path)
    (folder / "broken.xml").write_bytes(b"<rss><channel><item><title>x</tit")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02 not text")
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4")  # not a release file kind: ignored
    drop = source("Drop folder", "folder", path=str(folder))
    async with open_database(sqlite_url, [drop]) as (settings, database):
        result = await collect_source(database, settings, "Drop folder")
        again = await collect_source(database, settings, "Drop folder")
    assert result.new == 4 and result.failed == 2 and result.error is None
    assert any(e.startswith("binary.txt: looks like a binary file") for e in result.entry_errors)
    assert "broken.xml: entry 1: has neither a title nor any text" in result.entry_errors
    assert any(w.startswith("broken.xml: feed is not well-formed") for w in result.warnings)
    # Unchanged bad files are not reported again on every run.
    assert again.failed == 0


async def test_missing_folder_fails_the_source(
    tmp_path: Path, open_database, sqlite_url: str
) -> None:
    drop = source("Drop folder", "folder", path=str(tmp_path / "nowhere"))
    async with open_database(sqlite_url, [drop]) as (settings, database):
        result = await collect_source(database, settings, "Drop folder")
        row = await source_row(database, "Drop folder")
    assert "does not exist" in (result.error or "")
    assert row.status == "failing"


async def test_feed_from_a_file(tmp_path: Path, open_database, sqlite_url: str) -> None:
    feed = tmp_path / "ministry.xml"
    shutil.copy(FIXTURES / "ministry.xml", feed)
    local = source("Local feed", "feed", path=str(feed))
    async with open_database(sqlite_url, [local]) as (settings, database):
        first = await collect_source(database, settings, "Local feed")
        second = await collect_source(database, settings, "Local feed")
    assert first.new == 2 and second.not_modified and second.new == 0


async def test_one_source_never_runs_twice_at_once(
    server: LocalServer, open_database, database_url: str
) -> None:
    server.serve_slow("/slow-feed", delay=0.5, body=(FIXTURES / "ministry.xml").read_bytes())
    feed = source("Feed", "feed", url=server.url("/slow-feed"))
    async with open_database(database_url, [feed]) as (settings, database):
        first, second = await asyncio.gather(
            collect_source(database, settings, "Feed"), collect_source(database, settings, "Feed")
        )
        # Another process holds the lease: this process stays out.
        async with database.transaction() as session:
            session.add(
                Lock(
                    name="collect:Feed",
                    holder="other-host:1:x",
                    expires_at=utcnow() + timedelta(minutes=5),
                )
            )
        blocked = await collect_source(database, settings, "Feed")
        # An expired lease is taken over.
        async with database.transaction() as session:
            lock = await session.get(Lock, "collect:Feed")
            lock.expires_at = utcnow() - timedelta(seconds=1)
        resumed = await collect_source(database, settings, "Feed")
        async with database.session() as session:
            leftover = (await session.scalars(select(Lock.name))).all()
    outcomes = sorted([first, second], key=lambda r: r.skipped)
    assert outcomes[0].new == 2 and not outcomes[0].skipped
    assert outcomes[1].skipped and "already running" in (outcomes[1].error or "")
    assert blocked.skipped and "another process" in (blocked.error or "")
    assert resumed.error is None and not resumed.skipped
    assert leftover == []
    assert len(server.hits("/slow-feed")) == 2
