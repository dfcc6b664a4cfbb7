"""Web pages: the links on a listing page (a CSS selector), and one release per page,
its main text found by trafilatura and cleaned by our boilerplate rules."""

from __future__ import annotations

import logging
from datetime import UTC, tzinfo

import trafilatura
from cssselect import SelectorError
from lxml import etree
from lxml import html as lxml_html

from mailer.collect.boilerplate import photo_credit_of
from mailer.collect.extract import Candidate, EntryError, build_candidate
from mailer.collect.feeds import SourceError
from mailer.collect.sanitize import drop_hidden
from mailer.collect.urls import canonical_url

log = logging.getLogger(__name__)

_CREDIT_PLACES = (
    "//figcaption | //*[contains(@class,'credit')] | //*[contains(@class,'caption')]"
    " | //*[contains(@class,'copyright')] | //small | //cite"
)


def decode_html(content: bytes, charset: str | None) -> str | bytes:
    """Text when the server named a charset we know; otherwise the bytes, so that the
    parser can read the page's own <meta charset> or guess."""
    if charset:
        try:
            return content.decode(charset, errors="replace")
        except LookupError:
            pass
    return content


def _parse(content: str | bytes, url: str | None) -> etree._Element:
    try:
        return lxml_html.document_fromstring(content, base_url=url)
    except (etree.ParserError, ValueError) as exc:
        raise EntryError(f"{url or 'page'}: not an HTML page ({exc})") from None


def listing_links(
    content: bytes, *, url: str, selector: str, charset: str | None = None
) -> list[str]:
    """Absolute, canonical release URLs in page order, without repeats."""
    try:
        page = _parse(decode_html(content, charset), url)
    except EntryError as exc:
        raise SourceError(str(exc)) from None
    try:
        matches = page.cssselect(selector)
    except SelectorError as exc:
        raise SourceError(
            f"link_selector {selector!r} is not a valid CSS selector: {exc}"
        ) from None
    links: list[str] = []
    for element in matches:
        href = element.get("href")
        if href is None:
            inner = element.xpath(".//a[@href]")
            href = inner[0].get("href") if inner else None
        link = canonical_url(href, url) if href else None
        if link and link not in links:
            links.append(link)
    if not links:
        raise SourceError(
            f"link_selector {selector!r} matched no links on the listing page"
            " (has the site changed its layout?)"
        )
    return links


def extract_page(
    content: bytes | str,
    *,
    url: str | None,
    charset: str | None = None,
    default_tz: tzinfo = UTC,
    label: str | None = None,
    guid: str | None = None,
) -> Candidate:
    """One release page (or a saved .html file) as a release candidate. ``guid``:
    the link the page was found under, which identifies it on the next visit."""
    label = label or url or "page"
    document = decode_html(content, charset) if isinstance(content, bytes) else content
    page = _parse(document, url)
    body_element = page.find("body")
    if body_element is not None:
        drop_hidden(body_element)
    extracted = trafilatura.extract(
        page,
        url=url,
        output_format="html",
        with_metadata=True,
        include_formatting=True,
        include_links=True,
        include_images=True,
        include_tables=True,
        include_comments=False,
        # Dates from structured markup only; header lines in the text are read by
        # our own rules, which know "Date" and its value on the next line.
        date_extraction_params={"extensive_search": False, "original_date": True},
    )
    meta: dict[str, str] = {}
    body_html = ""
    if extracted:
        result = lxml_html.document_fromstring(extracted)
        for tag in result.xpath("//head/meta[@name][@content]"):
            meta[tag.get("name")] = tag.get("content")
        body = result.find("body")
        if body is not None:
            body_html = "".join(lxml_html.tostring(child, encoding="unicode") for child in body)
    if not body_html:
        # trafilatura found no main text (very short pages): fall back to the body.
        body = page.find("body")
        body_html = lxml_html.tostring(body, encoding="unicode") if body is not None else ""
    canonical = _first(page, "//link[@rel='canonical']/@href") or meta.get("url")
    og_image = _first(page, "//meta[@property='og:image']/@content") or _first(
        page, "//meta[@name='twitter:image']/@content"
    )
    site_name = _first(page, "//meta[@property='og:site_name']/@content") or meta.get("sitename")
    title = (
        _first(page, "//meta[@property='og:title']/@content")
        or meta.get("title")
        or _first(page, "//title/text()")
    )
    published_text = (
        _first(page, "//meta[@property='article:published_time']/@content")
        or _first(page, "//time[@datetime]/@datetime")
        or meta.get("date")
    )
    return build_candidate(
        label=label,
        guid=guid or canonical_url(canonical, url) or canonical_url(url),
        title=title,
        url=canonical_url(canonical, url) or url,
        html=body_html,
        published_text=published_text,
        image_url=og_image,
        photo_credit=_photo_credit(page),
        # og:site_name, else the name trafilatura found (never its host fallback).
        fallback_publisher=site_name or meta.get("sitename"),
        site_names=(site_name, meta.get("sitename")),
        base_url=url,
        default_tz=default_tz,
    )


def _first(page: etree._Element, xpath: str) -> str | None:
    found = page.xpath(xpath)
    for value in found:
        text = str(value).strip()
        if text:
            return text
    return None


def _photo_credit(page: etree._Element) -> str | None:
    for element in page.xpath(_CREDIT_PLACES):
        for line in element.text_content().splitlines():
            credit = photo_credit_of(line.strip())
            if credit:
                return credit
    return None
