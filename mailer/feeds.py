"""Atom (RFC 4287) and JSON Feed 1.1 renderings of an archive feed.

The Atom document is built with lxml's element tree rather than a text template:
the tree cannot come out malformed, whatever a collected title contains. Characters
that XML 1.0 forbids (control characters some feeds carry) are dropped first,
since no XML serialiser accepts them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from mailer.archive import Feed, ReleaseDetail

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_TYPE = "application/atom+xml; charset=utf-8"
JSON_FEED_TYPE = "application/feed+json; charset=utf-8"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(value: str) -> str:
    return _NOT_XML.sub("", value)


def escape_xml(value: str) -> str:
    return escape(xml_text(value))


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _title(site_name: str, feed: Feed) -> str:
    if feed.topic is None:
        return f"{site_name}: press releases"
    return f"{site_name}: {feed.topic.name}"


def feed_paths(feed: Feed) -> tuple[str, str, str]:
    """(HTML page, Atom, JSON Feed) paths of a feed."""
    if feed.topic is None:
        return "/releases", "/releases.atom", "/releases.json"
    slug = feed.topic.slug
    return f"/topics/{slug}", f"/topics/{slug}.atom", f"/topics/{slug}.json"


def _entry_id(base_url: str, entry: ReleaseDetail) -> str:
    # The id-only address never changes when a title (and so the slug) is edited.
    return f"{base_url}/releases/{entry.id}"


def atom(feed: Feed, *, site_name: str, base_url: str, now: datetime) -> bytes:
    page, self_path, _ = feed_paths(feed)

    def add(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> Any:
        element = etree.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        if text is not None:
            element.text = xml_text(text)
        return element

    root = etree.Element(f"{{{ATOM_NS}}}feed", nsmap={None: ATOM_NS})
    add(root, "id", base_url + self_path)
    add(root, "title", _title(site_name, feed))
    add(root, "updated", rfc3339(feed.updated or now))
    author = add(root, "author")
    add(author, "name", site_name)
    add(root, "link", rel="self", type="application/atom+xml", href=base_url + self_path)
    add(root, "link", rel="alternate", type="text/html", href=base_url + page)
    add(root, "generator", "mailer")
    for entry in feed.entries:
        element = add(root, "entry")
        add(element, "id", _entry_id(base_url, entry))
        add(element, "title", entry.title)
        add(element, "updated", rfc3339(entry.updated_at))
        add(element, "published", rfc3339(entry.published_at))
        if entry.publisher:
            add(add(element, "author"), "name", entry.publisher)
        add(element, "link", rel="alternate", type="text/html", href=base_url + entry.path)
        if entry.external_url:
            add(element, "link", rel="related", href=entry.external_url)
        for topic in entry.topics:
            add(
                element,
                "category",
                term=topic.slug,
                label=xml_text(topic.name),
                scheme=f"{base_url}/topics/",
            )
        if entry.summary:
            add(element, "summary", entry.summary, type="text")
        if entry.html:
            add(element, "content", entry.html, type="html")
        else:
            add(element, "content", entry.text, type="text")
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def json_feed(feed: Feed, *, site_name: str, base_url: str) -> bytes:
    page, _, self_path = feed_paths(feed)
    items = []
    for entry in feed.entries:
        item: dict[str, Any] = {
            "id": _entry_id(base_url, entry),
            "url": base_url + entry.path,
            "title": entry.title,
            "content_html": entry.html or None,
            "content_text": None if entry.html else entry.text,
            "summary": entry.summary or None,
            "external_url": entry.external_url,
            "image": entry.image_url,
            "date_published": rfc3339(entry.published_at),
            "date_modified": rfc3339(entry.updated_at),
            "tags": [topic.name for topic in entry.topics] or None,
            "authors": [{"name": entry.publisher}] if entry.publisher else None,
        }
        items.append({key: value for key, value in item.items() if value is not None})
    document = {
        "version": JSON_FEED_VERSION,
        "title": _title(site_name, feed),
        "home_page_url": base_url + page,
        "feed_url": base_url + self_path,
        "authors": [{"name": site_name}],
        "items": items,
    }
    return json.dumps(document, ensure_ascii=False, indent=1).encode()
