"""The public archive over HTTP: the list with its filters, search and pages, release
pages, digests on the web, withdrawal and embargo, crawler files, archive.public."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from mailer import archive
from mailer.models import Digest, Release
from mailer.send import Worker, start_digest
from tests.digest.conftest import add_release, add_subscriber
from tests.web.conftest import BASE_URL, Site, SiteFactory

pytestmark = pytest.mark.timeout(120)

_LINK = re.compile(r'<h2><a href="(/releases/[^"]+)">([^<]+)</a></h2>')


def listed(page: str) -> list[str]:
    return [title for _, title in _LINK.findall(page)]


def pager_link(page: str, rel: str) -> str | None:
    match = re.search(rf'<a href="([^"]+)" rel="{rel}">', page)
    return match.group(1).replace("&amp;", "&") if match else None


async def add_releases(site: Site, count: int, start: datetime, **fields) -> list[Release]:
    async with site.database.transaction() as session:
        return [
            await add_release(
                session,
                f"Release number {n:03d}",
                published_at=start + timedelta(hours=n),
                **fields,
            )
            for n in range(count)
        ]


async def test_the_archive_pages_through_every_release_newest_first(
    make_site: SiteFactory, database_url: str
) -> None:
    site = await make_site(database_url, archive={"page_size": 5})
    start = site.clock.now() - timedelta(days=30)
    await add_releases(site, 12, start)
    # Two releases published at the same moment: the keyset must still show both.
    async with site.database.transaction() as session:
        same = start + timedelta(hours=3, minutes=30)
        await add_release(session, "Twin release A", published_at=same)
        await add_release(session, "Twin release B", published_at=same)

    seen: list[str] = []
    pages = []
    path: str | None = "/releases"
    while path:
        response = await site.client.get(path)
        assert response.status_code == 200
        pages.append(response.text)
        seen += listed(response.text)
        path = pager_link(response.text, "next")
    assert len(pages) == 3
    assert len(seen) == 14 == len(set(seen))
    assert seen[0] == "Release number 011" and seen[-1] == "Release number 000"
    assert seen.index("Twin release B") == seen.index("Twin release A") - 1
    assert seen.index("Release number 003") == seen.index("Twin release A") + 1
    assert pager_link(pages[0], "prev") is None

    # And back: the newer link of the last page shows the page before it.
    back = await site.client.get(pager_link(pages[-1], "prev"))
    assert listed(back.text) == listed(pages[1])
    assert "Subscribe" in back.text and 'href="/"' in back.text


async def test_topic_and_month_filters(make_site: SiteFactory) -> None:
    site = await make_site()
    async with site.database.transaction() as session:
        await add_release(
            session,
            "Budget for 2024",
            published_at=datetime(2024, 3, 5, tzinfo=UTC),
            topics=["economy"],
        )
        await add_release(
            session,
            "New hospital wing",
            published_at=datetime(2024, 3, 20, tzinfo=UTC),
            topics=["health"],
        )
        await add_release(
            session,
            "Tax forms ready",
            published_at=datetime(2024, 4, 1, 9, tzinfo=UTC),
            topics=["economy"],
        )

    economy = await site.client.get("/releases", params={"topic": "economy"})
    assert listed(economy.text) == ["Tax forms ready", "Budget for 2024"]
    assert await site.client.get("/topics/economy") is not None
    topic_page = await site.client.get("/topics/economy")
    assert listed(topic_page.text) == ["Tax forms ready", "Budget for 2024"]
    assert 'href="/topics/economy.atom"' in topic_page.text

    march = await site.client.get("/releases", params={"month": "2024-03"})
    assert listed(march.text) == ["New hospital wing", "Budget for 2024"]
    both = await site.client.get("/releases", params={"month": "2024-03", "topic": "economy"})
    assert listed(both.text) == ["Budget for 2024"]

    nothing = await site.client.get("/releases", params={"month": "2023-01"})
    assert (
        nothing.status_code == 200
        and "No releases" in nothing.text
        and "from 2023-01" in nothing.text
    )

    bad_month = await site.client.get("/releases", params={"month": "March"})
    assert bad_month.status_code == 400
    assert "is not a month; use the form 2024-03" in bad_month.text
    # The refused page still offers every topic to search again, and is not indexed.
    assert '<option value="economy">' in bad_month.text
    assert '<meta name="robots" content="noindex">' in bad_month.text
    gone = await site.client.get("/releases", params={"before": "987654"})
    assert gone.status_code == 400 and "does not exist any more" in gone.text
    assert (await site.client.get("/releases", params={"topic": "sport"})).status_code == 404
    assert (await site.client.get("/releases", params={"before": "x1"})).status_code == 400


@pytest.mark.parametrize("few_matches", [2000, 0], ids=["few-matches", "many-matches"])
async def test_search_ignores_accents_and_case(
    make_site: SiteFactory, database_url: str, few_matches: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite plans a search by how many releases match; both plans give one answer.
    monkeypatch.setattr(archive, "_FEW_MATCHES", few_matches)
    site = await make_site(database_url)
    async with site.database.transaction() as session:
        await add_release(session, "Élection présidentielle à Vilnius")
        await add_release(session, "Žemės ūkio ministerija skelbia", publisher="Ministère")
        await add_release(session, "Unrelated news about roads", summary="Nothing about votes.")
        renamed = await add_release(session, "Draft title")

    async def search(words: str) -> list[str]:
        response = await site.client.get("/releases", params={"q": words})
        assert response.status_code == 200
        return listed(response.text)

    assert await search("election vilnius") == ["Élection présidentielle à Vilnius"]
    assert await search("PRÉSIDENTIELLE") == ["Élection présidentielle à Vilnius"]
    assert await search("zemes ukio") == ["Žemės ūkio ministerija skelbia"]
    # The publisher is searched too, and every word must match.
    assert await search("ministere") == ["Žemės ūkio ministerija skelbia"]
    assert await search("election roads") == []
    # Quotes and operators are words to look for, not syntax.
    assert await search('"vilnius" * - (') == ["Élection présidentielle à Vilnius"]

    # The index follows edits.
    async with site.database.transaction() as session:
        await session.execute(
            update(Release).where(Release.id == renamed.id).values(title="Café owners meet")
        )
    assert await search("cafe") == ["Café owners meet"]
    assert await search("draft") == []

    page = await site.client.get("/releases", params={"q": "vilnius"})
    assert '<meta name="robots" content="noindex">' in page.text
    assert 'value="vilnius"' in page.text


async def test_release_page_shows_everything_a_reader_needs(make_site: SiteFactory) -> None:
    site = await make_site()
    async with site.database.transaction() as session:
        release = await add_release(
            session,
            "Minister meets the press",
            published_at=datetime(2024, 3, 5, 10, tzinfo=UTC),
            topics=["economy", "health"],
            sources=[
                ("Government", "https://gov.example.lt/r/1"),
                ("Ministry of Health", "https://sam.example.lt/r/9"),
            ],
            publisher="Ministry of Finance",
            html="<p>First <strong>paragraph</strong>.</p><p>Second paragraph.</p>",
            image_url="https://gov.example.lt/photo.jpg",
            image_alt="The minister at the podium",
            photo_credit="Jonas Jonaitis",
        )
        own = await add_release(session, "Typed in by hand")
        own.canonical_url = None
    path = archive.release_path(release.id, release.title)
    assert path == f"/releases/{release.id}-minister-meets-the-press"

    response = await site.client.get(path)
    assert response.status_code == 200
    page = response.text
    assert "<h1>Minister meets the press</h1>" in page
    assert "Ministry of Finance" in page
    assert '<time datetime="2024-03-05T10:00:00+00:00">5 March 2024</time>' in page
    assert '<a href="/topics/economy">Economy</a>' in page and "Health" in page
    assert "<p>First <strong>paragraph</strong>.</p>" in page
    assert "Photo: Jonas Jonaitis" in page
    assert 'alt="The minister at the podium"' in page
    assert '<a href="https://gov.example.lt/r/1" rel="noopener">Government</a>' in page
    assert '<a href="https://sam.example.lt/r/9" rel="noopener">Ministry of Health</a>' in page
    external = release.canonical_url
    assert f'<link rel="canonical" href="{external}">' in page
    assert '<meta property="og:title" content="Minister meets the press">' in page
    assert 'og:image" content="https://gov.example.lt/photo.jpg"' in page
    assert 'rel="alternate" type="application/atom+xml"' in page
    assert '<a class="button subscribe-link" href="/">Subscribe</a>' in page
    # Scripts stay locked down; only images may come from the publisher's site.
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "img-src 'self' data: https:" in csp

    own_page = await site.client.get(archive.release_path(own.id, own.title))
    canonical = f"{BASE_URL}/releases/{own.id}-typed-in-by-hand"
    assert f'<link rel="canonical" href="{canonical}">' in own_page.text

    # One address per release: the id alone or an old slug redirects to it.
    for old in (f"/releases/{release.id}", f"/releases/{release.id}-old-title"):
        moved = await site.client.get(old)
        assert moved.status_code == 301 and moved.headers["location"] == path
    assert (await site.client.get("/releases/999999-nothing")).status_code == 404
    assert (await site.client.get("/releases/abc")).status_code == 404


async def test_merged_duplicate_redirects_to_the_survivor_which_lists_both_sources(
    make_site: SiteFactory,
) -> None:
    site = await make_site()
    async with site.database.transaction() as session:
        survivor = await add_release(session, "Hospital opens", sources=[("Ministry", None)])
        duplicate = await add_release(
            session, "Hospital opens (copy)", sources=[("Municipality", "https://city.example/1")]
        )
        duplicate.merged_into_id = survivor.id
    moved = await site.client.get(archive.release_path(duplicate.id, duplicate.title))
    assert moved.status_code == 301
    assert moved.headers["location"] == archive.release_path(survivor.id, survivor.title)
    page = (await site.client.get(moved.headers["location"])).text
    assert "<li>Ministry</li>" in page
    assert '<a href="https://city.example/1" rel="noopener">Municipality</a>' in page
    assert listed((await site.client.get("/releases")).text) == ["Hospital opens"]


async def test_withdrawn_release_is_gone_everywhere(
    make_site: SiteFactory, database_url: str
) -> None:
    site = await make_site(database_url)
    async with site.database.transaction() as session:
        kept = await add_release(session, "Kept release about budget")
        pulled = await add_release(session, "Pulled release about budget")
    path = archive.release_path(pulled.id, pulled.title)
    assert (await site.client.get(path)).status_code == 200

    async with site.database.transaction() as session:
        await archive.withdraw_release(
            session, pulled.id, note="It was published in error.", now=site.clock.now()
        )

    gone = await site.client.get(path)
    assert gone.status_code == 410
    assert "This release was withdrawn on" in gone.text
    assert "It was published in error." in gone.text
    assert "Pulled release" not in gone.text
    assert listed((await site.client.get("/releases")).text) == [kept.title]
    search = await site.client.get("/releases", params={"q": "budget"})
    assert listed(search.text) == [kept.title]
    atom = await site.client.get("/releases.atom")
    assert "Pulled release" not in atom.text and kept.title in atom.text
    sitemap = await site.client.get("/sitemap-releases-0.xml")
    assert f"/releases/{pulled.id}-" not in sitemap.text and f"/releases/{kept.id}-" in sitemap.text

    async with site.database.transaction() as session:
        assert await archive.restore_release(session, pulled.id, now=site.clock.now())
    assert (await site.client.get(path)).status_code == 200


async def test_embargoed_release_appears_when_the_embargo_ends(make_site: SiteFactory) -> None:
    site = await make_site()
    now = site.clock.now()
    async with site.database.transaction() as session:
        release = await add_release(
            session, "Embargoed figures", published_at=now, embargo_until=now + timedelta(hours=2)
        )
    path = archive.release_path(release.id, release.title)
    assert (await site.client.get(path)).status_code == 404
    assert listed((await site.client.get("/releases")).text) == []
    assert "Embargoed figures" not in (await site.client.get("/releases.json")).text

    site.clock.advance(timedelta(hours=2, seconds=1))
    assert (await site.client.get(path)).status_code == 200
    assert listed((await site.client.get("/releases")).text) == ["Embargoed figures"]


async def test_digest_web_version_from_view_in_browser(
    make_site: SiteFactory, database_url: str
) -> None:
    site = await make_site(database_url)
    async with site.database.transaction() as session:
        await add_subscriber(session, "ona@example.lt", name="Ona Onaitė", topics=["economy"])
        await add_subscriber(session, "jonas@example.lt", topics=["health"])
        budget = await add_release(session, "Budget adopted", topics=["economy"])
        hospital = await add_release(session, "Hospital opened", topics=["health"])
    digest = await start_digest(site.database, site.settings, now=site.clock.now())
    await Worker(site.database, site.settings, poll_interval=0.05).run(until_empty=True)
    async with site.database.session() as session:
        public_id = await session.scalar(select(Digest.public_id).where(Digest.id == digest.id))

    mails = site.mails("ona@example.lt")
    assert len(mails) == 1
    web_url = f"{BASE_URL}/digests/{public_id}"
    text = mails[0].get_body(("plain",)).get_content()
    html = mails[0].get_body(("html",)).get_content()
    assert f"View in browser: {web_url}" in text
    assert f'href="{web_url}"' in html and "View in browser" in html

    response = await site.client.get(f"/digests/{public_id}")
    assert response.status_code == 200
    page = response.text
    # Both readers' selections, each linking to its release page.
    for release in (budget, hospital):
        assert f'href="{archive.release_path(release.id, release.title)}"' in page
    # Nothing personal: no address, name, or token links.
    for personal in ("ona@example.lt", "Ona", "jonas@", "/unsubscribe/", "/preferences/"):
        assert personal not in page
    assert '<meta name="robots" content="noindex">' in page

    async with site.database.transaction() as session:
        await archive.withdraw_release(session, budget.id, note=None, now=site.clock.now())
    after = (await site.client.get(f"/digests/{public_id}")).text
    assert "Budget adopted" not in after
    assert "One release in this digest has been withdrawn since it was sent." in after
    assert (await site.client.get("/digests/not-a-digest")).status_code == 404


async def test_sitemap_and_robots(make_site: SiteFactory) -> None:
    site = await make_site()
    async with site.database.transaction() as session:
        release = await add_release(session, "Sitemap release")
    robots = await site.client.get("/robots.txt")
    assert robots.status_code == 200
    assert "Disallow: /admin/" in robots.text and "Disallow: /unsubscribe/" in robots.text
    assert f"Sitemap: {BASE_URL}/sitemap.xml" in robots.text
    index = await site.client.get("/sitemap.xml")
    assert index.headers["content-type"].startswith("application/xml")
    assert f"<loc>{BASE_URL}/sitemap-releases-0.xml</loc>" in index.text
    assert f"<loc>{BASE_URL}/sitemap-pages.xml</loc>" in index.text
    pages = await site.client.get("/sitemap-pages.xml")
    assert f"<loc>{BASE_URL}/topics/economy</loc>" in pages.text
    releases = await site.client.get("/sitemap-releases-0.xml")
    assert (
        f"<loc>{BASE_URL}{archive.release_path(release.id, release.title)}</loc>" in releases.text
    )
    assert (await site.client.get("/sitemap-releases-1.xml")).status_code == 404


async def test_a_private_archive_answers_404_everywhere(make_site: SiteFactory) -> None:
    site = await make_site(archive={"public": False})
    async with site.database.transaction() as session:
        await add_subscriber(session, "ona@example.lt")
        release = await add_release(session, "Private release")
    digest = await start_digest(site.database, site.settings, now=site.clock.now())
    await Worker(site.database, site.settings, poll_interval=0.05).run(until_empty=True)
    async with site.database.session() as session:
        public_id = await session.scalar(select(Digest.public_id).where(Digest.id == digest.id))
    for path in (
        "/releases",
        "/releases?q=private",
        archive.release_path(release.id, release.title),
        "/releases.atom",
        "/releases.json",
        "/topics/economy",
        "/topics/economy.atom",
        "/topics/economy.json",
        f"/digests/{public_id}",
        "/sitemap.xml",
        "/sitemap-pages.xml",
        "/sitemap-releases-0.xml",
        "/robots.txt",
    ):
        assert (await site.client.get(path)).status_code == 404, path
    mail = site.mails("ona@example.lt")[0]
    assert "View in browser" not in mail.get_body(("plain",)).get_content()
    assert "/digests/" not in mail.get_body(("html",)).get_content()
    # The signup page is untouched.
    assert (await site.client.get("/")).status_code == 200


async def test_a_date_stays_that_date_and_a_credit_stays_as_written(
    make_site: SiteFactory,
) -> None:
    """As in the digest: a release published on a day (no time) is that day in a site
    west of UTC too, and "Photo by …" is not labelled twice."""
    site = await make_site(digest={"timezone": "America/New_York"})
    async with site.database.transaction() as session:
        release = await add_release(
            session,
            "Embassy reopens",
            published_at=datetime(2025, 10, 23, tzinfo=UTC),
            image_url="https://urm.example.lt/photo.jpg",
            photo_credit="Photo by Žygimantas Gedvila / ELTA.",
        )
        release.published_date_only = True
    page = (await site.client.get(archive.release_path(release.id, release.title))).text
    assert '<time datetime="2025-10-23">23 October 2025</time>' in page
    assert "22 October" not in page
    assert "Photo by Žygimantas Gedvila / ELTA." in page
    assert "Photo: Photo by" not in page
    listing = (await site.client.get("/releases")).text
    assert '<time datetime="2025-10-23">23 October 2025</time>' in listing
