"""From whatever a source gave (HTML or text, a title, a date, a link) to one clean
release candidate: title, date, canonical URL, plain text with paragraphs,
sanitised HTML, summary, lead image and photo credit, with boilerplate removed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from functools import cached_property

from mailer.collect.blocks import Body, Image, blocks_from_html, blocks_from_text, clean_line
from mailer.collect.boilerplate import (
    clean_blocks,
    clean_title,
    is_bare_host,
    normalised_body,
    photo_credit_of,
)
from mailer.collect.dates import Published, parse_published
from mailer.collect.dedupe import (
    Comparable,
    content_hash_of_normalised,
    simhash_of_normalised,
    to_signed,
    word_count,
)
from mailer.collect.sanitize import is_tracking_pixel, sanitize_fragment
from mailer.collect.summary import cut_at_sentence, lead_summary
from mailer.collect.urls import canonical_url

TITLE_MAX = 1000
FALLBACK_TITLE_CHARS = 120


class EntryError(Exception):
    """One entry, file or page could not become a release; the rest go on."""


@dataclass
class Candidate:
    """A release as one source presents it, ready to be matched and stored."""

    guid: str
    title: str
    url: str | None
    published: datetime | None
    text: str
    html: str
    summary: str
    image_url: str | None = None
    image_alt: str | None = None
    photo_credit: str | None = None
    publisher: str | None = None
    warnings: list[str] = field(default_factory=list)
    # ``published`` is a calendar day (00:00 UTC) without a time of day.
    published_date_only: bool = False

    @cached_property
    def comparable(self) -> Comparable:
        """The text (the title when there is none) as dedupe compares it."""
        return Comparable.of(self.text or self.title)

    @cached_property
    def words(self) -> int:
        """Words in the text (the title does not count)."""
        if self.text and self.text.isascii():
            # In ASCII, the \\w+ runs word_count finds are the words the comparable's
            # normalised form keeps (case folding changes no letter into a non-letter).
            return self.comparable.words
        return word_count(self.text)

    @cached_property
    def content_hash(self) -> str:
        return content_hash_of_normalised(self.comparable.normalised)

    @cached_property
    def simhash(self) -> int:
        """Signed, as the BIGINT column stores it."""
        # From the comparable's normalised text, as UTF-8 shingles: its shingles as
        # strings are only made if the store compares its text with another's.
        return to_signed(simhash_of_normalised(self.comparable.normalised))

    def as_json(self, source: str) -> dict[str, object]:
        return {
            "title": self.title,
            "published": published_text(self.published, date_only=self.published_date_only),
            "source": source,
            "url": self.url,
            "guid": self.guid,
            "summary": self.summary,
            "text": self.text,
            "html": self.html,
            "image_url": self.image_url,
            "photo_credit": self.photo_credit,
            "publisher": self.publisher,
        }


def build_candidate(
    *,
    label: str,
    guid: str | None = None,
    title: str | None = None,
    url: str | None = None,
    html: str | None = None,
    text: str | None = None,
    published: datetime | None = None,
    published_date_only: bool = False,
    published_text: str | None = None,
    updated_text: str | None = None,
    image_url: str | None = None,
    image_alt: str | None = None,
    photo_credit: str | None = None,
    publisher: str | None = None,
    fallback_publisher: str | None = None,
    site_names: tuple[str | None, ...] = (),
    base_url: str | None = None,
    default_tz: tzinfo = UTC,
) -> Candidate:
    """Raises EntryError (with ``label`` naming the entry) when nothing usable is left."""
    link = canonical_url(url, base_url)
    page_base = link or base_url
    if html and html.strip():
        body = blocks_from_html(*sanitize_fragment(html, page_base))
    elif text and text.strip():
        body = blocks_from_text(text)
    else:
        body = Body([])
    given_title = clean_title(title, list(site_names))
    cleaned = clean_blocks(
        body.blocks, title=given_title, default_tz=default_tz, site_names=site_names
    )
    warnings: list[str] = []
    final_title = cleaned.title
    if not final_title:
        opening = lead_summary(cleaned.blocks, FALLBACK_TITLE_CHARS) if cleaned.blocks else ""
        if not opening:
            raise EntryError(f"{label}: has neither a title nor any text")
        final_title = opening
        warnings.append(f"{label}: no title; used the opening words instead")
    final_title = final_title[:TITLE_MAX]

    given = Published(published, published_date_only) if published else None
    date = (
        given
        or parse_published(published_text, default_tz=default_tz)
        or cleaned.published
        or parse_published(updated_text, default_tz=default_tz)
        or cleaned.updated
    )

    lead = _lead_image(body.images, image_url, image_alt, page_base)
    credit = photo_credit or cleaned.photo_credit
    if lead is not None and not credit:
        for line in lead.caption_lines:
            credit = photo_credit_of(line)
            if credit:
                break
    text_out = "\n\n".join(block.text() for block in cleaned.blocks)
    html_out = "\n".join(block.to_html() for block in cleaned.blocks)
    summary = lead_summary(cleaned.blocks) if cleaned.blocks else ""
    if not guid:
        guid = link or "sha256:" + hashlib.sha256(f"{final_title}\n{text_out}".encode()).hexdigest()
    candidate = Candidate(
        guid=guid[:2000],
        title=final_title,
        url=link,
        published=date.at if date else None,
        published_date_only=bool(date and date.date_only),
        text=text_out,
        html=html_out,
        summary=summary or cut_at_sentence(final_title),
        image_url=lead.src if lead else None,
        image_alt=(lead.alt if lead else None),
        photo_credit=_short(credit, 500),
        publisher=_publisher(publisher, cleaned.publisher, fallback_publisher),
        warnings=warnings,
    )
    if text_out:
        # What Candidate.comparable would compute, from the lines' normalised forms.
        candidate.comparable = Comparable.of_normalised(normalised_body(cleaned.blocks))
    return candidate


def published_text(value: datetime | None, *, date_only: bool) -> str | None:
    """ISO 8601: ``2025-10-23`` for a date without a time, else the full moment."""
    if value is None:
        return None
    return value.date().isoformat() if date_only else value.isoformat()


def _publisher(*choices: str | None) -> str | None:
    """The first real organisation name: never a bare host ("127.0.0.1:8790",
    "www.urm.lt"), which is what site-name guessers fall back to."""
    for choice in choices:
        name = _short(choice, 200)
        if name and not is_bare_host(name):
            return name
    return None


def _short(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    value = clean_line(value)
    return value[:limit] or None


def _lead_image(
    images: list[Image], declared: str | None, declared_alt: str | None, base: str | None
) -> Image | None:
    """The declared image (og:image, feed enclosure) else the first real image in the body."""
    if declared:
        src = canonical_url(declared, base) if base else canonical_url(declared)
        if src and not is_tracking_pixel(src):
            captions = next((i.caption_lines for i in images if i.src == src), [])
            alt = declared_alt or next((i.alt for i in images if i.src == src), None)
            return Image(src, alt, captions)
    for image in images:
        src = canonical_url(image.src, base)
        if src and not is_tracking_pixel(src):
            return Image(src, image.alt, image.caption_lines)
    return None
