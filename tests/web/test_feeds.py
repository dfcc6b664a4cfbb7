"""Feeds out: Atom (RFC 4287) and JSON Feed 1.1 for all releases and per topic.

The JSON Feed is checked against a JSON Schema written from the 1.1 specification
(tests/support/jsonfeed-1.1.schema.json). Every Atom document is checked twice,
independently: feedparser must read it without complaint (bozo == 0), and it must
validate against the RFC 4287 RELAX NG schema (tests/support/atom-rfc4287.rnc,
converted with rnc2rng, validated by lxml/libxml2), plus the RFC's rules the
schema leaves to Schematron.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import feedparser
import jsonschema
import pytest
import rnc2rng
from lxml import etree

from mailer import archive
from tests.digest.conftest import add_release
from tests.web.conftest import BASE_URL, Site, SiteFactory

ATOM = "{http://www.w3.org/2005/Atom}"
SUPPORT = Path(__file__).resolve().parent.parent / "support"
SCHEMA = SUPPORT / "atom-rfc4287.rnc"
JSON_FEED_SCHEMA = SUPPORT / "jsonfeed-1.1.schema.json"


@cache
def atom_schema() -> etree.RelaxNG:
    grammar = rnc2rng.dumps(rnc2rng.loads(SCHEMA.read_text()))
    # RNC's `namespace local = ""` comes out as xmlns:local="", which XML forbids;
    # the grammar refers to the empty namespace as ns="" anyway.
    grammar = grammar.replace('xmlns:local=""', "")
    return etree.RelaxNG(etree.fromstring(grammar.encode()))


def assert_valid_atom(body: bytes) -> etree._Element:
    parsed = feedparser.parse(body)
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    document = etree.fromstring(body)
    schema = atom_schema()
    assert schema.validate(document), schema.error_log
    # RFC 4287 4.1.1: a feed without an author needs one in every entry.
    if document.find(f"{ATOM}author") is None:
        assert all(e.find(f"{ATOM}author") is not None for e in document.iter(f"{ATOM}entry"))
    ids = [e.findtext(f"{ATOM}id") for e in document.iter(f"{ATOM}entry")]
    assert len(ids) == len(set(ids))
    for entry in document.iter(f"{ATOM}entry"):
        alternates = [
            link
            for link in entry.findall(f"{ATOM}link")
            if link.get("rel", "alternate") == "alternate"
        ]
        assert len(alternates) == 1
        # 4.1.1.1: an entry without content must have an alternate link (it has both).
        assert entry.find(f"{ATOM}content") is not None
    return document


async def seed(site: Site) -> dict[str, int]:
    start = datetime(2024, 3, 1, 8, tzinfo=UTC)
    async with site.database.transaction() as session:
        budget = await add_release(
            session,
            "Budget & taxes: <2025> plan",
            published_at=start,
            topics=["economy"],
            publisher="Ministry of Finance",
            html="<p>The <em>budget</em> grows by 3 % &amp; taxes stay.</p>",
            summary="The budget grows.",
        )
        hospital = await add_release(
            session,
            "Ligoninė atidaryta \x0b Vilniuje",
            published_at=start + timedelta(days=1),
            topics=["health"],
            html="",
            summary="",
        )
        hospital.canonical_url = None
        hospital.text = "Plain text body\n\nSecond paragraph."
    return {"budget": budget.id, "hospital": hospital.id}


async def test_atom_feed_of_all_releases_validates(make_site: SiteFactory) -> None:
    site = await make_site()
    ids = await seed(site)
    response = await site.client.get("/releases.atom")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/atom+xml; charset=utf-8"
    document = assert_valid_atom(response.content)

    parsed = feedparser.parse(response.content)
    assert parsed.feed.title == "Test Press Office: press releases"
    assert parsed.feed.links[0].href == f"{BASE_URL}/releases.atom"
    first, second = parsed.entries
    # Newest first; the control character a source slipped in is dropped.
    assert first.title == "Ligoninė atidaryta  Vilniuje"
    assert first.content[0].type == "text/plain"
    assert first.content[0].value.startswith("Plain text body")
    assert second.title == "Budget & taxes: <2025> plan"
    assert second.content[0].type == "text/html"
    assert second.content[0].value == "<p>The <em>budget</em> grows by 3 % &amp; taxes stay.</p>"
    assert second.author == "Ministry of Finance"
    assert second.link == f"{BASE_URL}/releases/{ids['budget']}-budget-taxes-2025-plan"
    assert second.id == f"{BASE_URL}/releases/{ids['budget']}"
    assert [t.term for t in second.tags] == ["economy"]
    assert second.published == "2024-03-01T08:00:00Z"
    related = [link.href for link in second.links if link.rel == "related"]
    assert related and related[0].startswith("https://gov.example.lt/")
    assert document.findtext(f"{ATOM}updated")

    # The schema is no rubber stamp: an entry without its id is refused.
    broken = etree.fromstring(response.content)
    entry = broken.find(f"{ATOM}entry")
    entry.remove(entry.find(f"{ATOM}id"))
    assert not atom_schema().validate(broken)


async def test_topic_feeds_carry_only_their_topic(make_site: SiteFactory) -> None:
    site = await make_site()
    await seed(site)
    atom = await site.client.get("/topics/economy.atom")
    assert_valid_atom(atom.content)
    parsed = feedparser.parse(atom.content)
    assert [e.title for e in parsed.entries] == ["Budget & taxes: <2025> plan"]
    assert parsed.feed.title == "Test Press Office: Economy"

    feed = json.loads((await site.client.get("/topics/health.json")).content)
    # JSON can carry any character (escaped); only XML needs it dropped.
    assert [item["title"] for item in feed["items"]] == ["Ligoninė atidaryta \x0b Vilniuje"]
    assert feed["feed_url"] == f"{BASE_URL}/topics/health.json"
    assert (await site.client.get("/topics/sport.atom")).status_code == 404

    # A topic with no releases yet is still a valid (empty) feed.
    empty = await site.client.get("/topics/foreign-affairs.atom")
    assert_valid_atom(empty.content)


async def test_json_feed_follows_version_1_1(make_site: SiteFactory) -> None:
    site = await make_site()
    ids = await seed(site)
    response = await site.client.get("/releases.json")
    assert response.headers["content-type"] == "application/feed+json; charset=utf-8"
    feed = json.loads(response.content)
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["home_page_url"] == f"{BASE_URL}/releases"
    assert feed["feed_url"] == f"{BASE_URL}/releases.json"
    hospital, budget = feed["items"]
    assert budget["id"] == f"{BASE_URL}/releases/{ids['budget']}"
    assert budget["content_html"].startswith("<p>The <em>budget</em>")
    assert budget["authors"] == [{"name": "Ministry of Finance"}]
    assert budget["tags"] == ["Economy"]
    assert budget["date_published"] == "2024-03-01T08:00:00Z"
    assert budget["external_url"].startswith("https://gov.example.lt/")
    assert "content_html" not in hospital and hospital["content_text"].startswith("Plain text")
    assert "external_url" not in hospital
    # Every item has an id and content, as the specification requires.
    assert all(
        item["id"] and ("content_html" in item or "content_text" in item) for item in feed["items"]
    )
    schema = json.loads(JSON_FEED_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    assert not list(validator.iter_errors(feed))
    # The schema check itself can fail: an item without content is refused.
    assert list(validator.iter_errors({**feed, "items": [{"id": "x", "title": "no content"}]}))


@pytest.mark.parametrize("path", ["/releases.atom", "/releases.json", "/topics/economy.atom"])
async def test_feeds_answer_conditional_requests(make_site: SiteFactory, path: str) -> None:
    site = await make_site()
    ids = await seed(site)
    first = await site.client.get(path)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert first.headers["cache-control"] == "public, max-age=300"

    same = await site.client.get(path, headers={"if-none-match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    assert (await site.client.get(path, headers={"if-modified-since": modified})).status_code == 304
    assert (await site.client.get(path, headers={"if-none-match": '"other"'})).status_code == 200

    # A new release changes the feed.
    site.clock.advance(timedelta(minutes=5))
    async with site.database.transaction() as session:
        await add_release(
            session,
            "Tax news",
            published_at=site.clock.now(),
            topics=["economy"],
            updated_at=site.clock.now(),
        )
    changed = await site.client.get(path, headers={"if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert "Tax news" in changed.text

    # So does a withdrawal, for readers that only send If-Modified-Since too.
    etag, modified = changed.headers["etag"], changed.headers["last-modified"]
    site.clock.advance(timedelta(minutes=5))
    async with site.database.transaction() as session:
        await archive.withdraw_release(session, ids["budget"], note=None, now=site.clock.now())
    after = await site.client.get(path, headers={"if-none-match": etag})
    assert after.status_code == 200 and "Budget" not in after.text
    since = await site.client.get(path, headers={"if-modified-since": modified})
    assert since.status_code == 200
