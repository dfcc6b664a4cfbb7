"""Feeds: RSS 0.9x/1.0/2.0 and Atom through feedparser (given bytes we fetched
ourselves, never a URL), plain RSS 2.0 through lxml when that gives the same
entries for less (``read_rss``), JSON Feed 1.0/1.1 through the json module."""

from __future__ import annotations

import functools
import io
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import urljoin

import charset_normalizer
import feedparser
from feedparser.datetimes import _parse_date
from feedparser.html import _cp1252
from feedparser.urls import _urljoin
from lxml import etree
from lxml import html as lxml_html

from mailer.collect.boilerplate import is_boilerplate
from mailer.collect.dates import parse_published, plausible_moment
from mailer.collect.extract import Candidate, EntryError, build_candidate
from mailer.collect.sanitize import visible_text

log = logging.getLogger(__name__)

FEED_SUFFIXES = (".xml", ".rss", ".atom", ".json", ".rdf")
# Plain RSS 2.0 is read by read_rss (below), a tenth of feedparser's cost, when
# it is sure to read it as feedparser would; off only to compare the two in tests.
FAST_RSS = True
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)\b", re.I | re.S)


class SourceError(Exception):
    """The whole source (feed, listing page, folder) could not be read this time."""


@dataclass
class ParsedEntries:
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    title: str | None = None


def parse_feed(
    content: bytes,
    *,
    url: str | None = None,
    content_type: str | None = None,
    charset: str | None = None,
    encoding: str | None = None,
    default_tz: tzinfo = UTC,
) -> ParsedEntries:
    """Every entry of a feed document. Raises SourceError when it is not a feed.

    ``charset`` is what the server declared; ``encoding`` is the source's own
    override for feeds that declare a wrong one."""
    if not content.strip():
        raise SourceError("the feed is empty (no content)")
    head = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"{" or (content_type or "").endswith("json"):
        return _parse_json_feed(content, url=url, default_tz=default_tz)
    content, charset, note = _as_declared_or_detected(content, charset, encoding)
    fast = read_rss(content, content_type, charset) if FAST_RSS else None
    if fast is not None:
        feed, entries = fast
        problem = None
    else:
        feed, entries, problem = _read_with_feedparser(content, url, content_type, charset)
    result = ParsedEntries(title=_text(feed.get("title")) or None)
    if note:
        result.warnings.append(note)
    if problem:
        result.warnings.append(f"feed is not well-formed ({problem}); read what could be read")
    base = feed.get("link") or url
    seen: set[str] = set()
    # The same for every entry: decided once per feed.
    fallback_publisher = _feed_publisher(result.title)
    for number, entry in enumerate(entries, start=1):
        guid = (_get(entry, "id") or _get(entry, "link") or "").strip() or None
        label = f"entry {number}" + (f" ({guid})" if guid else "")
        if guid and guid in seen:
            result.errors.append(f"{label}: duplicate GUID in this feed; kept the first")
            continue
        try:
            candidate = _entry_candidate(
                entry, label, guid, base, result.title, fallback_publisher, default_tz
            )
        except EntryError as exc:
            result.errors.append(str(exc))
            continue
        except Exception as exc:  # one malformed entry must not sink the feed
            log.exception("%s: unexpected error", label)
            result.errors.append(f"{label}: could not be read ({type(exc).__name__}: {exc})")
            continue
        seen.add(candidate.guid)
        result.warnings.extend(candidate.warnings)
        result.candidates.append(candidate)
    return result


def _read_with_feedparser(
    content: bytes, url: str | None, content_type: str | None, charset: str | None
) -> tuple[Any, list[Any], str | None]:
    """The feed's fields, its entries, and what was wrong with the XML if it was
    read all the same. Raises SourceError when it is not a feed."""
    headers = {
        "content-type": (content_type or "application/xml")
        + (f"; charset={charset}" if charset else "")
    }
    # A stream, never bytes or str: feedparser treats a string that names a URL or a
    # file as something to open, and the content is untrusted. Sanitising and link
    # resolution happen later, against each entry's own link.
    parsed = feedparser.parse(
        io.BytesIO(content),
        response_headers=headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    if not parsed.get("version"):
        served_html = (content_type or "") in ("text/html", "application/xhtml+xml")
        if served_html or _HTML_START.match(content[:2048]):
            raise SourceError(_html_instead_of_feed(content, url, content_type))
        if not content.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            # Never the body itself: it may be an internal page an editor pointed at.
            raise SourceError(
                f"not a feed: neither XML nor JSON ({len(content):,} bytes, "
                f"Content-Type {content_type or 'unknown'})"
            )
        if parsed.get("bozo"):
            raise SourceError(f"malformed feed: {_describe(parsed.get('bozo_exception'))}")
        raise SourceError("not a feed: no RSS, Atom or JSON Feed content found")
    problem = None
    if parsed.get("bozo") and not isinstance(parsed.get("bozo_exception"), _HARMLESS):
        problem = _describe(parsed.get("bozo_exception"))
        if not parsed.entries:
            raise SourceError(f"malformed feed: {problem}")
    return parsed.feed, parsed.entries, problem


# An entry's keys as feedparser stores them. FeedParserDict.get goes through its
# __getitem__ (aliases such as "guid" → "id", the "updated" → "published" fallback)
# and costs a Python call or two per lookup; for the keys read here, none of which is
# an alias or special-cased, plain dict.get gives the same answer.
_get = dict.get

# feedparser flags these although the feed was read correctly.
_HARMLESS = (feedparser.NonXMLContentType, feedparser.CharacterEncodingOverride)
_XML_DECLARATION = re.compile(rb"^(\s*<\?xml[^>]*?encoding\s*=\s*)([\"'])[^\"']*\2", re.I)


def _declared_encoding(content: bytes, charset: str | None) -> str:
    match = re.match(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([^\"']+)", content[:200], re.I)
    if match:
        return match.group(1).decode("ascii", "replace").lower()
    return (charset or "utf-8").lower()


def _as_declared_or_detected(
    content: bytes, charset: str | None, override: str | None
) -> tuple[bytes, str | None, str | None]:
    """Bytes feedparser can trust: as they are when they decode as declared, else
    re-encoded as UTF-8 from the override or the most likely encoding."""
    if content.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return content, charset, None
    declared = _declared_encoding(content, charset)
    source_encoding = override
    note = None
    if source_encoding is None:
        try:
            content.decode(declared)
            return content, charset, None
        except (UnicodeDecodeError, LookupError):
            best = charset_normalizer.from_bytes(content).best()
            if best is None:
                raise SourceError(
                    f"the feed declares {declared} but is not; its encoding cannot be told"
                ) from None
            source_encoding = best.encoding
            note = (
                f"the feed declares {declared} but is not valid {declared}; read it as"
                f" {source_encoding} (set the source's encoding option if letters look wrong)"
            )
    text = content.decode(source_encoding, errors="replace")
    recoded = _XML_DECLARATION.sub(rb'\1"utf-8"', text.encode("utf-8"), count=1)
    return recoded, "utf-8", note


def _describe(exc: object) -> str:
    if exc is None:
        return "unknown problem"
    message = getattr(exc, "getMessage", None)
    text = message() if callable(message) else str(exc)
    line = getattr(exc, "getLineNumber", None)
    where = f" at line {line()}" if callable(line) else ""
    return f"{text}{where}"


def _html_instead_of_feed(content: bytes, url: str | None, content_type: str | None) -> str:
    message = f"expected a feed but got an HTML page (Content-Type {content_type or 'unknown'})"
    try:
        page = lxml_html.fromstring(content[:500_000], base_url=url)
    except Exception:
        return message
    for link in page.xpath("//link[@rel='alternate'][@href]"):
        kind = (link.get("type") or "").lower()
        if any(word in kind for word in ("rss", "atom", "feed+json")):
            found = link.get("href")
            if url:
                found = urljoin(url, found)
            return f"{message}; the page links to a feed at {found}"
    return message


def _text(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    if "<" in text and ">" in text:
        # The feed's markup is not sanitised by feedparser (sanitize_html=False):
        # a script or a hidden span in a title must leave no words behind.
        text = visible_text(text)
    return " ".join(text.split())


def _feed_publisher(feed_title: str | None) -> str | None:
    """A feed's title names its publisher unless it is a generic label ("News")."""
    return feed_title if feed_title and not is_boilerplate(feed_title) else None


def _struct_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime(*value[:6], tzinfo=UTC)
    except (TypeError, ValueError):
        return None
    return plausible_moment(moment)


# An RFC 822 date with a time of day ("Sat, 01 Jun 2024 10:00:00 +0300"), as most RSS
# feeds write pubDate. parse_published never reads one as a date without a time (no
# numeric or ISO pattern fits it; the textual one must take the time to reach the
# end, and failing that the time sends it to email.utils): such a date is not
# parsed again only to be told it has a time.
_RFC822_WITH_TIME = re.compile(
    r"\s*(?:[A-Za-z]{3},\s*)?[0-9]{1,2}\s+[A-Za-z]{3}\s+[0-9]{4}\s+[0-9]{1,2}:[0-9]{2}"
    r"(?::[0-9]{2})?(?:\s*(?:[+-][0-9]{4}|[A-Za-z]{1,5}))?\s*\Z"
)


def _entry_candidate(
    entry: Any,
    label: str,
    guid: str | None,
    base: str | None,
    feed_title: str | None,
    fallback_publisher: str | None,
    default_tz: tzinfo,
) -> Candidate:
    html, text = _entry_body(entry)
    published = _struct_time(_get(entry, "published_parsed")) or _struct_time(
        _get(entry, "created_parsed")
    )
    written = _get(entry, "published") or _get(entry, "created")
    if published is not None and written and not _RFC822_WITH_TIME.match(written):
        stated = parse_published(written, default_tz=default_tz)
        if stated is not None and stated.date_only:
            # feedparser reads "2025-10-23" as midnight UTC; keep it a date.
            published = None
    image_url, image_alt = _entry_image(entry)
    credits = _get(entry, "media_credit") or []
    credit = _get(credits[0], "content") if credits and isinstance(credits[0], dict) else None
    source = _get(entry, "source") or {}
    return build_candidate(
        label=label,
        guid=guid,
        title=_text(_get(entry, "title")),
        url=_get(entry, "link"),
        html=html,
        text=text,
        published=published,
        published_text=written if not published else None,
        # dict.get: feedparser's own get() answers "updated" with the published
        # date (and a deprecation warning) when the entry has no updated date.
        updated_text=dict.get(entry, "updated"),
        image_url=image_url,
        image_alt=image_alt,
        photo_credit=credit,
        publisher=_text(_get(source, "title")) or None,
        fallback_publisher=fallback_publisher,
        site_names=(feed_title,),
        base_url=base,
        default_tz=default_tz,
    )


def _entry_body(entry: Any) -> tuple[str | None, str | None]:
    """The fullest body the entry carries: content over summary, HTML over text."""
    options: list[tuple[str, str]] = []
    for content in _get(entry, "content") or []:
        options.append((_get(content, "type") or "text/html", _get(content, "value") or ""))
    summary = _get(entry, "summary")
    if summary:
        kind = (_get(entry, "summary_detail") or {}).get("type") or "text/html"
        options.append((kind, summary))
    options = [(kind, value) for kind, value in options if value.strip()]
    if not options:
        return None, None
    kind, value = max(options, key=lambda option: len(option[1]))
    if "html" in kind:
        return value, None
    return None, value


def _entry_image(entry: Any) -> tuple[str | None, str | None]:
    # "url" goes through FeedParserDict.get: it is an alias of "href" there.
    for media in _get(entry, "media_content") or []:
        medium = (_get(media, "medium") or "").lower()
        kind = (_get(media, "type") or "").lower()
        if media.get("url") and (medium == "image" or kind.startswith("image/")):
            return media["url"], None
    for thumbnail in _get(entry, "media_thumbnail") or []:
        if thumbnail.get("url"):
            return thumbnail["url"], None
    for link in _get(entry, "links") or []:
        if _get(link, "rel") == "enclosure" and (_get(link, "type") or "").startswith("image/"):
            return _get(link, "href"), None
    image = _get(entry, "image")
    if isinstance(image, dict) and _get(image, "href"):
        return image["href"], _get(image, "title")
    return None, None


# --- JSON Feed ----------------------------------------------------------------------


def _parse_json_feed(content: bytes, *, url: str | None, default_tz: tzinfo) -> ParsedEntries:
    try:
        document = json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"JSON Feed is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"malformed JSON Feed: {exc}") from None
    except RecursionError:
        raise SourceError("malformed JSON Feed: nested too deeply") from None
    if not isinstance(document, dict) or "jsonfeed.org" not in str(document.get("version", "")):
        raise SourceError("not a JSON Feed: no jsonfeed.org version field")
    items = document.get("items")
    if not isinstance(items, list):
        raise SourceError("malformed JSON Feed: 'items' is not a list")
    title = _text(document.get("title")) or None
    base = document.get("home_page_url") or url
    result = ParsedEntries(title=title)
    seen: set[str] = set()
    fallback_publisher = _feed_publisher(title)
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            result.errors.append(f"entry {number}: not an object")
            continue
        guid = str(item.get("id") or item.get("url") or "").strip() or None
        label = f"entry {number}" + (f" ({guid})" if guid else "")
        if guid and guid in seen:
            result.errors.append(f"{label}: duplicate GUID in this feed; kept the first")
            continue
        try:
            candidate = build_candidate(
                label=label,
                guid=guid,
                title=_text(item.get("title")),
                url=_string(item.get("url")) or _string(item.get("external_url")),
                html=_string(item.get("content_html")),
                text=_string(item.get("content_text")) or _string(item.get("summary")),
                published_text=_string(item.get("date_published")),
                updated_text=_string(item.get("date_modified")),
                image_url=_string(item.get("image")) or _string(item.get("banner_image")),
                fallback_publisher=fallback_publisher,
                site_names=(title,),
                base_url=base,
                default_tz=default_tz,
            )
        except EntryError as exc:
            result.errors.append(str(exc))
            continue
        seen.add(candidate.guid)
        result.warnings.extend(candidate.warnings)
        result.candidates.append(candidate)
    return result


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


# --- Plain RSS 2.0 ---------------------------------------------------------------------
#
# Plain RSS 2.0 read without feedparser, giving the entries feedparser would give.
#
# Why hand-written: feedparser reads a feed through xml.sax, one Python call per
# element start, end and text piece, with a stack of content parameters on top: it
# was about half the CPU of reading a release in the collector benchmark (200 feeds
# × 50 items), more than extracting the text, deduplicating or storing it. Most
# press-release feeds are plain RSS 2.0; lxml (already used for HTML here, and a
# dependency of trafilatura and lxml_html_clean) parses one in C, and only the few
# fields the collector reads are then looked up.
#
# It is only a shortcut, never a second opinion. :func:`read_rss` answers None, and
# the caller uses feedparser, for anything it does not recognise with certainty:
# another format (Atom, RSS 1.0, RSS 0.9x), any namespace beyond content:encoded in
# an item and a self link in the channel, any element or attribute it does not
# list, an element other than an item repeated in its parent (feedparser's answer
# may depend on the order), markup or comments inside a field, a DOCTYPE or entity
# declaration, an encoding other than UTF-8, a byte order mark, XML that is not
# well-formed. What it returns
# follows feedparser 6.0's strict parser step by step for the fields the collector
# uses (``parse_feed`` above): the same stripping, the same URL clean-up of
# links and permalink GUIDs, the same repair of UTF-8 read as Latin-1 and of
# Windows-1252 control codes, the same date parser, the same "GUID is the link"
# and "content:encoded is the summary" rules. tests/collect/test_feeds_fast_rss.py
# compares both readers on every feed fixture and on randomised feeds.

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    strip_cdata=True,
    remove_comments=False,
    remove_pis=False,
)

# Content types feedparser reads as XML in UTF-8 without a second thought (for
# text/xml without a charset it flags an encoding override, which parse_feed
# treats as harmless, and reads the same).
_XML_TYPES = frozenset({"application/xml", "application/rss+xml", "text/xml"})
# Nothing but an optional XML declaration for UTF-8 before the root element.
_PROLOGUE = re.compile(
    rb"(?:<\?xml\s+version\s*=\s*(['\"])1\.0\1"
    rb"(?:\s+encoding\s*=\s*(['\"])utf-8\2)?"
    rb"(?:\s+standalone\s*=\s*(['\"])(?:yes|no)\3)?\s*\?>)?\s*<rss[\s>]",
    re.I,
)
_CONTENT_ENCODED = "{http://purl.org/rss/1.0/modules/content/}encoded"
_ATOM_LINK = "{http://www.w3.org/2005/atom}link"  # names are compared in lower case
# feedparser's query-string repair of links ("?a=1&b;=2").
_FALSE_REFERENCE = re.compile("&([A-Za-z0-9_]+);")
_CP1252_RANGE = re.compile("[\x80-\x9f]")

# Channel children whose values the collector never reads and that have no side
# effect on the fields it does read in feedparser; with no attributes and no
# children, as plain text elements.
_CHANNEL_IGNORED = frozenset(
    {
        "description",
        "language",
        "copyright",
        "managingeditor",
        "webmaster",
        "pubdate",
        "lastbuilddate",
        "generator",
        "docs",
        "ttl",
        "category",
    }
)
# Item children likewise ignored (feedparser stores them under other keys).
_ITEM_IGNORED = frozenset({"category", "author", "comments"})


# feedparser's own date parser (its answer is what the collector reads), remembered:
# a feed's items often share a date, and the answer is an immutable struct_time.
_date = functools.lru_cache(maxsize=1024)(_parse_date)


class _Unsure(Exception):
    """Something feedparser may read differently from this reader: use feedparser."""


def read_rss(
    content: bytes, content_type: str | None, charset: str | None
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The feed's fields and its entries as feedparser would give them (the keys
    the collector reads), or None when the document is not plain RSS 2.0 as this
    reader knows it, in which case feedparser must read it."""
    if (content_type or "application/xml") not in _XML_TYPES:
        return None
    if charset is not None and charset.lower() != "utf-8":
        return None
    if not _PROLOGUE.match(content):
        return None
    try:
        root = etree.fromstring(content, _PARSER)
    except (etree.XMLSyntaxError, ValueError):
        return None
    try:
        return _read(root)
    except _Unsure:
        return None


def _read(root: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if root.tag != "rss" or dict(root.attrib) != {"version": "2.0"}:
        raise _Unsure
    channels = _elements(root)
    if len(channels) != 1 or channels[0][0] != "channel" or channels[0][1].attrib:
        raise _Unsure
    feed: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for tag, child in _elements(channels[0][1]):
        if tag == "item":
            entries.append(_entry(child))
            continue
        if tag == _ATOM_LINK:
            # A self link (the usual atom:link in RSS 2.0) does not set the
            # feed's link in feedparser; any other relation may.
            if (
                child.get("rel") != "self"
                or child.get("href") is None
                or len(child)
                or (child.text or "").strip()
            ):
                raise _Unsure
            continue
        if tag in seen or child.attrib:
            raise _Unsure
        seen.add(tag)
        if tag == "title":
            feed["title"] = _value(child)
        elif tag == "link":
            feed["link"] = _FALSE_REFERENCE.sub(r"&\g<1>", _value(child, uri=True))
        elif tag in _CHANNEL_IGNORED:
            _value(child)
        else:
            raise _Unsure
    return feed, entries


def _elements(parent: Any) -> list[tuple[str, Any]]:
    """The child elements with their names in lower case, as feedparser matches
    them ("pubDate" is "pubdate"); comments and processing instructions between
    them are ignored by feedparser too."""
    return [(child.tag.lower(), child) for child in parent if isinstance(child.tag, str)]


def _value(element: Any, *, uri: bool = False) -> str:
    """An element's text as feedparser's pop() hands it on: stripped, a URL
    cleaned up, UTF-8 read as Latin-1 repaired, Windows-1252 codes mapped."""
    if len(element):
        # Markup, a comment or a processing instruction inside a field.
        raise _Unsure
    output = (element.text or "").strip()
    if uri and output:
        output = _urljoin("", output)
    if output.isascii():
        # Neither repair below changes ASCII text.
        return output
    try:
        output = output.encode("iso-8859-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    if _CP1252_RANGE.search(output):
        output = output.translate(_cp1252)
    return output


def _entry(item: Any) -> dict[str, Any]:
    if item.attrib:
        raise _Unsure
    entry: dict[str, Any] = {}
    seen: set[str] = set()
    for tag, child in _elements(item):
        if tag in seen:
            raise _Unsure
        seen.add(tag)
        attributes = dict(child.attrib)
        if tag == "guid":
            permalink = {name.lower(): value for name, value in attributes.items()}
            if set(permalink) - {"ispermalink"} or len(permalink) != len(attributes):
                raise _Unsure
            is_link = permalink.get("ispermalink", "true") == "true"
            value = _value(child, uri=is_link)
            entry["id"] = value
            entry["guidislink"] = is_link and "link" not in entry
            if is_link:
                entry.setdefault("link", value)
            continue
        if attributes:
            raise _Unsure
        if tag == "title":
            entry["title"] = _value(child)
        elif tag == "link":
            link = _value(child, uri=True).replace("&amp;", "&")
            entry["link"] = _FALSE_REFERENCE.sub(r"&\g<1>", link)
        elif tag == "description":
            entry["summary"] = _value(child)
            entry["summary_detail"] = {"type": "text/html"}
        elif tag == _CONTENT_ENCODED:
            value = _value(child)
            entry["content"] = [{"type": "text/html", "value": value}]
            # feedparser copies it to the summary unless a description set one.
            entry.setdefault("summary", value)
        elif tag == "pubdate":
            value = _value(child)
            entry["published"] = value
            entry["published_parsed"] = _date(value)
        elif tag in _ITEM_IGNORED:
            _value(child)
        else:
            raise _Unsure
    return entry
