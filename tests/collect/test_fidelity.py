"""Content as the publisher wrote it (issue 13): dates keep their precision, the
publisher line is the publisher (never a host), hidden and active content leaves no
text, photo credits stay as written, and any HTML a browser shows can be stored."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from mailer.collect.dates import parse_published
from mailer.collect.extract import build_candidate
from mailer.collect.feeds import parse_feed
from mailer.collect.files import read_release
from mailer.collect.pages import extract_page
from mailer.templating import publication_date
from tests.collect.conftest import source, stored_releases
from tests.collect.test_store import BODY, SOURCES, store_all

VILNIUS = ZoneInfo("Europe/Vilnius")

MINISTRY_PAGE = """\
<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Foreign Minister meets Baltic counterparts | Ministry of Foreign Affairs</title>
<meta property="og:site_name" content="Ministry of Foreign Affairs of the Republic of Lithuania">
</head><body>
<header><nav><a href="/">Home</a> <a href="/news">News</a></nav></header>
<main><article>
<p>Republic of Lithuania - Ministry of Foreign Affairs</p>
<h1>Foreign Minister meets Baltic counterparts</h1>
<p>2025-10-23</p>
<figure><img src="/img/meeting.jpg" alt="The ministers in Vilnius">
<figcaption>Photo by Žygimantas Gedvila / ELTA.</figcaption></figure>
<p>Foreign Minister Kęstutis Budrys met his Latvian and Estonian counterparts in Vilnius
on Thursday to coordinate support for Ukraine and the region's energy security.</p>
<p style="display:none">Internal note: embargo lifted at noon.</p>
<p>The ministers agreed to meet again in Riga before the end of the year.</p>
<script>window.analytics && analytics.track("article")</script>
</article></main></body></html>
"""

HOST_ONLY_PAGE = """\
<!doctype html><html><head><title>Budget 2026 presented to the Seimas</title></head>
<body><article><h1>Budget 2026 presented to the Seimas</h1>
<p>The Ministry of Finance presented the 2026 budget to the Seimas on Monday, with
investment in health and defence, and a deficit of 2.9 percent of GDP.</p>
</article></body></html>
"""

ATOM = """\
<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Ministry of Foreign Affairs of the Republic of Lithuania</title>
  <id>https://urm.example.lt/</id>
  <updated>2025-10-23T15:10:00+03:00</updated>
  <entry>
    <title type="html">Government approves &lt;script&gt;alert(1)&lt;/script&gt; the digital
      services plan&lt;span style="display:none"&gt; hidden words&lt;/span&gt;</title>
    <id>urn:urm:2025-10-23-digital</id>
    <link href="https://urm.example.lt/news/digital-services"/>
    <published>2025-10-23T15:10:00+03:00</published>
    <updated>2025-10-23T15:10:00+03:00</updated>
    <content type="html">&lt;p&gt;The Government approved the plan for digital public
      services on Thursday, with 40 services moving online by 2027.&lt;/p&gt;
      &lt;p style="display: none"&gt;… more hidden text&lt;/p&gt;
      &lt;p hidden&gt;Also hidden.&lt;/p&gt;
      &lt;script&gt;alert(1)&lt;/script&gt;</content>
  </entry>
  <entry>
    <title>Consular hours during the holidays</title>
    <id>urn:urm:holidays</id>
    <link href="https://urm.example.lt/news/holidays"/>
    <published>2025-10-20</published>
    <content type="html">&lt;p&gt;Embassies keep shorter consular hours.&lt;/p&gt;
      &lt;dd&gt;Vilnius: 9:00 to 13:00 on 24 December.&lt;/dd&gt;</content>
  </entry>
  <entry>
    <title>Passport fees from January</title>
    <id>urn:urm:fees</id>
    <link href="https://urm.example.lt/news/fees"/>
    <published>2025-10-21T09:00:00+03:00</published>
    <content type="html">&lt;dt&gt;Adult passport&lt;/dt&gt;&lt;dd&gt;43 euros&lt;/dd&gt;
      &lt;li&gt;Applications at any embassy&lt;/li&gt;
      &lt;td&gt;Urgent: double fee&lt;/td&gt;</content>
  </entry>
</feed>
"""


def test_a_date_without_a_time_stays_that_date_in_every_timezone() -> None:
    day = parse_published("2025-10-23", default_tz=VILNIUS)
    assert day is not None and day.date_only
    assert day.at == datetime(2025, 10, 23, tzinfo=UTC)
    for zone in ("Europe/Vilnius", "America/New_York", "Pacific/Auckland", "UTC"):
        assert publication_date(day.at, zone, date_only=True) == "2025-10-23"
    timed = parse_published("2025-10-23 15:10", default_tz=VILNIUS)
    assert timed is not None and not timed.date_only
    assert publication_date(timed.at, "Europe/Vilnius") == "2025-10-23 15:10 EEST"
    lithuanian = parse_published("Paskelbta 2025 m. spalio 23 d.", default_tz=VILNIUS)
    assert lithuanian is not None and lithuanian.date_only
    assert lithuanian.at.date().isoformat() == "2025-10-23"


def test_a_text_file_with_a_bare_date_is_a_date_only_release() -> None:
    candidate = read_release(
        "Republic of Lithuania - Ministry of Foreign Affairs\n\n"
        "Prime Minister Šimonytė meets Baltic counterparts\n\n2025-10-23\n\n"
        "Prime Minister Ingrida Šimonytė met her Latvian and Estonian counterparts.\n".encode(),
        suffix=".txt",
        guid="file:b.txt",
        label="b.txt",
        default_tz=VILNIUS,
    )
    assert candidate.title == "Prime Minister Šimonytė meets Baltic counterparts"
    assert candidate.publisher == "Republic of Lithuania - Ministry of Foreign Affairs"
    assert candidate.published_date_only
    assert candidate.published == datetime(2025, 10, 23, tzinfo=UTC)
    assert "Ministry of Foreign Affairs" not in candidate.text


def test_a_ministry_page_keeps_publisher_credit_and_no_hidden_text() -> None:
    page = extract_page(
        MINISTRY_PAGE.encode(), url="https://urm.example.lt/news/baltic", default_tz=VILNIUS
    )
    assert page.title == "Foreign Minister meets Baltic counterparts"
    assert page.publisher == "Republic of Lithuania - Ministry of Foreign Affairs"
    assert not page.text.startswith("Republic of Lithuania")
    assert "Republic of Lithuania - Ministry" not in page.text
    assert page.photo_credit == "Photo by Žygimantas Gedvila / ELTA."
    assert page.published_date_only and page.published == datetime(2025, 10, 23, tzinfo=UTC)
    assert "embargo" not in page.text and "analytics" not in page.text
    assert "meet again in Riga" in page.text


def test_a_bare_host_is_never_a_publisher() -> None:
    page = extract_page(HOST_ONLY_PAGE.encode(), url="http://127.0.0.1:8790/news/budget")
    assert page.publisher is None
    named = build_candidate(
        label="x",
        title="Budget presented",
        text="The budget was presented today to all.",
        publisher="www.finmin.lt",
        fallback_publisher="Ministry of Finance",
    )
    assert named.publisher == "Ministry of Finance"


def test_feed_titles_and_bodies_lose_scripts_and_hidden_text_and_bare_items_are_kept() -> None:
    parsed = parse_feed(ATOM.encode(), url="https://urm.example.lt/atom", default_tz=VILNIUS)
    assert parsed.errors == []
    digital, holidays, fees = parsed.candidates
    assert digital.title == "Government approves the digital services plan"
    assert "alert" not in digital.text and "hidden" not in digital.text.lower()
    assert "40 services moving online" in digital.text
    assert digital.publisher == "Ministry of Foreign Affairs of the Republic of Lithuania"
    assert not digital.published_date_only
    assert digital.published == datetime(2025, 10, 23, 12, 10, tzinfo=UTC)
    # A bare <dd>, <dt>, <li> or <td> (as in feedparser's sanitize corpus) is text too.
    assert "Vilnius: 9:00 to 13:00 on 24 December." in holidays.text
    assert holidays.published_date_only
    assert holidays.published == datetime(2025, 10, 20, tzinfo=UTC)
    for words in ("Adult passport", "43 euros", "Applications at any embassy", "double fee"):
        assert words in fees.text
    assert "<dd>" not in fees.html and "<li>" not in fees.html


@pytest.mark.parametrize("atom_first", [True, False])
async def test_a_merge_keeps_the_most_precise_date(
    open_database, database_url: str, atom_first: bool, tmp_path: Path
) -> None:
    """The Atom entry's 15:10+03:00 beats the text file's bare 2025-10-23, whichever
    arrived first; between two bare dates the earliest wins."""
    atom = build_candidate(
        label="atom",
        guid="urn:urm:1",
        title="Summit",
        text=BODY,
        published_text="2025-10-23T15:10:00+03:00",
    )
    text = build_candidate(
        label="file",
        guid="file:b.txt",
        title="Summit",
        text=BODY,
        published_text="2025-10-23",
        default_tz=VILNIUS,
    )
    assert text.published_date_only and not atom.published_date_only
    first, second = (atom, text) if atom_first else (text, atom)
    sources = [*SOURCES, source("Drop folder", "folder", path=str(tmp_path / "drop"))]
    async with open_database(database_url, sources) as (_settings, database):
        await store_all(database, "Ministry", [first])
        await store_all(database, "Drop folder", [second])
        (release,) = await stored_releases(database)
    assert release.published_at == datetime(2025, 10, 23, 12, 10, tzinfo=UTC)
    assert release.published_date_only is False
    assert len(release.links) == 2


async def test_a_source_that_contributed_through_a_merge_counts_it(
    open_database, database_url: str
) -> None:
    """One count everywhere: the aggregator's copy was merged, and still counts."""
    from mailer.collect.store import source_release_counts
    from mailer.models import Source

    ministry = build_candidate(label="m", guid="urn:m:1", title="Summit", text=BODY)
    aggregator = build_candidate(label="a", guid="urn:a:1", title="Summit", text=BODY)
    async with open_database(database_url, SOURCES) as (_settings, database):
        await store_all(database, "Ministry", [ministry])
        await store_all(database, "Aggregator", [aggregator])
        async with database.session() as session:
            counts = await source_release_counts(session)
            by_name = {
                source.name: counts.get(source.id, 0)
                for source in (await session.scalars(select(Source))).all()
            }
    assert by_name == {"Ministry": 1, "Aggregator": 1}


def test_a_title_in_title_case_is_not_taken_for_a_publisher_line() -> None:
    candidate = read_release(
        b"Vilnius City Municipality Opens New School\n\n"
        b"The municipality opened a new school in the north of the city on Monday.\n",
        suffix=".txt",
        guid="file:school.txt",
        label="school.txt",
    )
    assert candidate.title == "Vilnius City Municipality Opens New School"
    assert candidate.publisher is None
