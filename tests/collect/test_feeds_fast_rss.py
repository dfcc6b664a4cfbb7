"""The fast RSS 2.0 reader (feeds.read_rss) must give what feedparser gives.

Compared twice: the entries' fields the collector reads, straight from both
readers, and everything parse_feed makes of a feed (every candidate with its
content hash and SimHash, the errors and warnings) with the fast reader on and
off. On every feed fixture, the collector benchmark's feeds, and randomised
feeds written to provoke differences; a feed the fast reader declines must
still come out the same (through feedparser)."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest

from mailer.collect import feeds
from mailer.collect.feeds import SourceError, parse_feed, read_rss

FIXTURES = Path(__file__).parent / "fixtures"
BENCH = Path(__file__).parents[2] / "bench" / "collect.py"

# The entry keys parse_feed reads (feeds._entry_candidate, _entry_body).
ENTRY_KEYS = ("id", "link", "title", "summary", "published", "published_parsed", "updated")


def _feedparser_view(content: bytes, content_type: str | None, charset: str | None) -> Any:
    feed, entries, _ = feeds._read_with_feedparser(content, None, content_type, charset)
    return _view(feed, entries)


def _view(feed: dict[str, Any], entries: list[dict[str, Any]]) -> Any:
    def content(entry: dict[str, Any]) -> Any:
        return [(dict.get(c, "type"), dict.get(c, "value")) for c in dict.get(entry, "content", [])]

    def summary_type(entry: dict[str, Any]) -> Any:
        detail = dict.get(entry, "summary_detail")
        return detail.get("type") if detail else None

    return (
        dict.get(feed, "title"),
        dict.get(feed, "link"),
        [
            (
                *(dict.get(entry, key) for key in ENTRY_KEYS),
                summary_type(entry),
                content(entry),
                dict.get(entry, "media_content"),
                dict.get(entry, "media_thumbnail"),
                dict.get(entry, "image"),
                dict.get(entry, "source"),
                [link for link in dict.get(entry, "links", []) if link.get("rel") == "enclosure"],
            )
            for entry in entries
        ],
    )


def _collected(content: bytes, fast: bool, **options: Any) -> Any:
    """Everything the collector would store from this feed."""
    previous = feeds.FAST_RSS
    feeds.FAST_RSS = fast
    try:
        result = parse_feed(content, url="http://press.example/releases/", **options)
    except SourceError as exc:
        return ("SourceError", str(exc))
    finally:
        feeds.FAST_RSS = previous
    return (
        result.title,
        result.errors,
        result.warnings,
        [
            (dataclasses.asdict(c), c.content_hash, c.simhash, c.words, c.published_date_only)
            for c in result.candidates
        ],
    )


def _check(content: bytes, content_type: str | None = None, charset: str | None = None) -> bool:
    """Asserts both readers agree; True when the fast reader took the feed."""
    fast = read_rss(content, content_type, charset)
    if fast is not None:
        assert _view(*fast) == _feedparser_view(content, content_type, charset), content
    options = {"content_type": content_type, "charset": charset}
    assert _collected(content, True, **options) == _collected(content, False, **options), content
    return fast is not None


@pytest.mark.parametrize(
    "name", sorted(p.name for p in FIXTURES.iterdir() if p.is_file() and p.suffix != ".json")
)
def test_fixtures_read_the_same(name: str) -> None:
    _check((FIXTURES / name).read_bytes())


def test_plain_fixtures_take_the_fast_path() -> None:
    assert _check((FIXTURES / "dupes.xml").read_bytes())
    assert _check((FIXTURES / "incomplete.xml").read_bytes())


def test_benchmark_feeds_read_the_same() -> None:
    spec = importlib.util.spec_from_file_location("bench_collect", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for number in range(0, 200, 7):
        body = bench.feed_xml(number, 50)
        assert _check(body, "application/rss+xml", "utf-8")


# --- randomised feeds ------------------------------------------------------------------

TEXTS = [
    "Prime Minister Šimonytė met the Ministry of Finance",
    "Budget 2024 &amp; beyond",
    "Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt;",
    "<![CDATA[Ministry <b>announces</b> & welcomes]]>",
    "  padded\n\t title  ",
    "Ã©tude double-encoded",
    "curly \u0093quotes\u0094 and \u0085 ellipsis",
    "&#169; 2024 &#x160;iauliai",
    "plain",
    "",
    "   ",
    "Łódź, Kraków — €5 million; ½ done",
    "日本の省庁",
    "Ministry of Economy | News",
]
HTML = [
    "<p>The minister said the budget would grow.</p><p>Share on Facebook | Tweet</p>",
    "<script>alert('x')</script><p>Visible text about hospitals.</p>",
    "<p style='display:none'>hidden</p><p>Health ministry opens a clinic in Šiauliai.</p>",
    "<div><img src='/img/a.jpg' alt='A'><p>Relative image and <a href='/x'>link</a>.</p></div>",
    "<p>Unclosed <b>bold <i>italic</p>",
    "<iframe src='http://evil.example/'></iframe><p>Council meeting agreed cooperation.</p>",
    "Plain text body without markup, about transport and digital services.",
    "<p>Entities &amp;nbsp; &amp;amp; &amp;#8220;quoted&amp;#8221;</p>",
    "<p>Ã¤ mojibake and \u0096 dash</p>",
    "",
]
DATES = [
    "Wed, 12 Jul 2023 10:00:00 +0300",
    "12 Jul 2023 10:00:00 GMT",
    "Wed, 12 Jul 2023 10:00 EST",
    "2023-07-12T10:00:00Z",
    "2023-07-12T10:00:00+03:00",
    "2023-07-12",
    "2023 07 12",
    "12.07.2023",
    "July 12, 2023",
    "Wed, 31 Feb 2023 10:00:00 +0000",
    "not a date",
    "",
    "  Wed, 12 Jul 2023 10:00:00 +0300  ",
    "1999-01-01T00:00:00Z",
    "2090-01-01T00:00:00Z",
]
LINKS = [
    "http://press.example/releases/1",
    "https://press.example/r?id=1&amp;lang=en",
    "https://press.example/r?a=1&amp;b;=2",
    "https://press.example/r?a=1&amp;amp;b=2&amp;amp;c=3",
    "/releases/relative",
    "http:///press.example/extra-slashes",
    "press.example/no-scheme",
    "http://[bad/",
    " https://press.example/space ",
    "javascript:alert(1)",
    "",
]


def _escape_or_cdata(rng: random.Random, html: str) -> str:
    if not html or rng.random() < 0.5:
        return html.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<![CDATA[{html}]]>"


def _item(rng: random.Random, number: int) -> str:
    parts: list[tuple[str, str]] = []
    if rng.random() < 0.9:
        title = rng.choice(TEXTS) if rng.random() < 0.7 else f"Release {number} Šimonytė"
        tag = rng.choice(["title"] * 8 + ["Title", "TITLE"])
        parts.append(("title", f"<{tag}>{title}</{tag}>"))
    if rng.random() < 0.85:
        parts.append(("link", f"<link>{rng.choice(LINKS)}</link>"))
    if rng.random() < 0.85:
        attribute = rng.choice(
            [
                "",
                " isPermaLink='false'",
                " isPermaLink='true'",
                " isPermaLink='True'",
                " ispermalink='false'",
            ]
        )
        value = rng.choice(
            [f"urn:release:{number}", f"http://press.example/guid/{number}", "", " spaced "]
        )
        parts.append(("guid", f"<guid{attribute}>{value}</guid>"))
    if rng.random() < 0.85:
        parts.append(
            ("description", f"<description>{_escape_or_cdata(rng, rng.choice(HTML))}</description>")
        )
    if rng.random() < 0.3:
        parts.append(
            (
                "content",
                "<content:encoded>"
                f"{_escape_or_cdata(rng, rng.choice(HTML) + ' Full text.')}"
                "</content:encoded>",
            )
        )
    if rng.random() < 0.85:
        tag = rng.choice(["pubDate"] * 5 + ["pubdate", "PUBDATE"])
        parts.append(("date", f"<{tag}>{rng.choice(DATES)}</{tag}>"))
    for extra in (
        "<category>Economy</category>",
        "<author>press@press.example (Press Office)</author>",
        "<comments>http://press.example/comments/1</comments>",
        "<!-- a comment between fields -->",
    ):
        if rng.random() < 0.15:
            parts.append(("extra", extra))
    # What the fast reader must decline, now and then.
    for odd in (
        "<dc:creator>Jonas</dc:creator>",
        "<dc:date>2023-07-12T10:00:00Z</dc:date>",
        "<enclosure url='http://press.example/a.jpg' type='image/jpeg' length='1'/>",
        "<media:content url='http://press.example/b.jpg' medium='image'/>",
        "<source url='http://other.example/rss'>Other ministry</source>",
        "<title type='html'>Typed &lt;b&gt;title&lt;/b&gt;</title>",
        "<description>second description</description>",
        "<title>two <!-- comment --> parts</title>",
        "<unknown>element</unknown>",
        "<link>http://press.example/second-link</link>",
    ):
        if rng.random() < 0.01:
            parts.append(("odd", odd))
    rng.shuffle(parts)
    attributes = " xml:base='http://base.example/'" if rng.random() < 0.02 else ""
    return f"<item{attributes}>" + "\n".join(text for _, text in parts) + "</item>"


def _random_feed(rng: random.Random) -> bytes:
    declaration = rng.choice(
        [
            "<?xml version='1.0' encoding='utf-8'?>",
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<?xml version="1.0"?>',
            '<?xml version="1.0" encoding="utf-8" standalone="yes"?>',
            "",
            "<?xml version='1.1' encoding='utf-8'?>",
        ]
    )
    channel: list[str] = []
    if rng.random() < 0.9:
        channel.append(f"<title>{rng.choice([*TEXTS, 'Ministry of Health', 'News'])}</title>")
    if rng.random() < 0.8:
        channel.append(f"<link>{rng.choice(LINKS)}</link>")
    for extra in (
        "<description>Press releases</description>",
        "<language>lt</language>",
        "<lastBuildDate>Wed, 12 Jul 2023 10:00:00 +0300</lastBuildDate>",
        "<atom:link href='http://press.example/rss' rel='self' type='application/rss+xml'/>",
        "<generator>CMS 1.0</generator>",
        "<!-- generated -->",
    ):
        if rng.random() < 0.3:
            channel.append(extra)
    for odd in (
        "<atom:link href='http://press.example/' rel='alternate' type='text/html'/>",
        "<image><url>http://press.example/logo.png</url><title>Logo</title>"
        "<link>http://press.example/</link></image>",
        "<title>Second title</title>",
    ):
        if rng.random() < 0.03:
            channel.append(odd)
    channel.extend(_item(rng, number) for number in range(rng.randint(0, 6)))
    if rng.random() < 0.5:
        rng.shuffle(channel)
    namespaces = (
        " xmlns:content='http://purl.org/rss/1.0/modules/content/'"
        " xmlns:atom='http://www.w3.org/2005/Atom' xmlns:dc='http://purl.org/dc/elements/1.1/'"
        " xmlns:media='http://search.yahoo.com/mrss/'"
    )
    version = rng.choice(["2.0"] * 10 + ["0.91", "2.01"])
    document = (
        f"{declaration}<rss version='{version}'{namespaces}><channel>"
        + "\n".join(channel)
        + "</channel></rss>"
    )
    roll = rng.random()
    if roll < 0.02:
        document = document.replace("</channel>", "")  # not well-formed
    elif roll < 0.04:
        document = document.replace("Press", "Press &nbsp;", 1)  # undeclared entity
    elif roll < 0.05:
        document = "<!DOCTYPE rss [<!ENTITY x 'y'>]>" + document.replace("Press", "&x;", 1)
    return document.encode("utf-8")


def test_random_feeds_read_the_same() -> None:
    rng = random.Random(20261202)
    taken = 0
    rounds = 400
    for _ in range(rounds):
        body = _random_feed(rng)
        content_type = rng.choice([None, "application/rss+xml", "text/xml", "application/xml"])
        charset = rng.choice([None, "utf-8"])
        taken += _check(body, content_type, charset)
    # Most of them are plain enough for the fast reader: the comparison is not empty.
    assert taken > rounds // 3


def test_declines_what_it_does_not_know() -> None:
    plain = (
        b"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        b"<title>T</title><item><title>A</title><guid>g</guid></item></channel></rss>"
    )
    assert read_rss(plain, None, None) is not None
    assert read_rss(plain, "text/html", None) is None
    assert read_rss(plain, None, "windows-1257") is None
    assert read_rss(b"\xef\xbb\xbf" + plain, None, None) is None
    assert read_rss(plain.replace(b"utf-8", b"iso-8859-1"), None, None) is None
    assert read_rss(plain.replace(b"<guid>g</guid>", b"<guid>g"), None, None) is None
    assert read_rss(plain.replace(b"<title>A", b"<title>A&nbsp;"), None, None) is None
    assert read_rss(plain.replace(b"<title>A", b"<title>A<b>x</b>"), None, None) is None
    assert read_rss(plain.replace(b"2.0", b"0.91"), None, None) is None
    odd_attribute = plain.replace(b"<guid>", b"<guid isPermaLink='false' x='1'>")
    assert read_rss(odd_attribute, None, None) is None
    with_doctype = plain.replace(b"?>", b"?><!DOCTYPE rss>", 1)
    assert read_rss(with_doctype, None, None) is None
