"""Release files: plain text, Markdown, HTML, e-mail (.eml) and feed files.

Text and Markdown may open with YAML front matter between ``---`` lines (title,
date, url, publisher, image, photo_credit); without it the first real line is the
title and the header lines under it (date, publisher) are read as in any release.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from datetime import UTC, date, datetime, tzinfo
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import charset_normalizer
import markdown
import yaml

from mailer.collect.boilerplate import looks_like_publisher
from mailer.collect.extract import Candidate, EntryError, build_candidate
from mailer.collect.feeds import FEED_SUFFIXES, ParsedEntries, SourceError, parse_feed
from mailer.collect.pages import extract_page

TEXT_SUFFIXES = (".txt", ".text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
HTML_SUFFIXES = (".html", ".htm")
EMAIL_SUFFIXES = (".eml",)
RELEASE_SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + HTML_SUFFIXES + EMAIL_SUFFIXES
SUPPORTED_SUFFIXES = RELEASE_SUFFIXES + FEED_SUFFIXES
MAX_FILE_BYTES = 20 * 1024 * 1024


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in SUPPORTED_SUFFIXES and not path.name.startswith(".")


def decode_text(raw: bytes, label: str) -> str:
    """UTF-8 (with or without BOM) when it is; otherwise the most likely encoding."""
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise EntryError(f"{label}: looks like a binary file, not text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(raw).best()
    if best is None:
        raise EntryError(f"{label}: cannot tell the text encoding")
    return str(best)


def read_release_file(
    path: Path, *, guid: str, label: str | None = None, default_tz: tzinfo = UTC
) -> ParsedEntries:
    """Every release in one file (a feed file may hold many). Raises EntryError
    when the file as a whole cannot be read."""
    label = label or str(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise EntryError(
            f"{label}: unsupported file type {suffix or '(none)'}"
            f" (expected {', '.join(SUPPORTED_SUFFIXES)})"
        )
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise EntryError(f"{label}: {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EntryError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise EntryError(f"{label}: is a directory") from None
    except OSError as exc:
        raise EntryError(f"{label}: cannot read: {exc.strerror or exc}") from None
    if suffix in FEED_SUFFIXES:
        try:
            parsed = parse_feed(raw, url=None, default_tz=default_tz)
        except SourceError as exc:
            raise EntryError(f"{label}: {exc}") from None
        parsed.errors = [f"{label}: {error}" for error in parsed.errors]
        parsed.warnings = [f"{label}: {warning}" for warning in parsed.warnings]
        return parsed
    candidate = read_release(raw, suffix=suffix, guid=guid, label=label, default_tz=default_tz)
    return ParsedEntries(candidates=[candidate], warnings=list(candidate.warnings))


def read_release(
    raw: bytes, *, suffix: str, guid: str, label: str, default_tz: tzinfo = UTC
) -> Candidate:
    if not raw.strip():
        raise EntryError(f"{label}: the file is empty")
    if suffix in EMAIL_SUFFIXES:
        return _read_email(raw, guid=guid, label=label, default_tz=default_tz)
    text = decode_text(raw, label)
    if suffix in HTML_SUFFIXES:
        candidate = extract_page(text, url=None, default_tz=default_tz, label=label)
        candidate.guid = candidate.url or guid
        return candidate
    front, body = _front_matter(text, label)
    fields: dict[str, Any] = {
        "label": label,
        "guid": str(front.get("guid") or front.get("url") or front.get("link") or guid),
        "title": _str(front.get("title")),
        "url": _str(front.get("url") or front.get("link")),
        "published": _date(front.get("date") or front.get("published"), default_tz),
        "published_date_only": _is_day(front.get("date") or front.get("published")),
        "published_text": _str(front.get("date") or front.get("published")),
        "image_url": _str(front.get("image")),
        "photo_credit": _str(front.get("photo_credit") or front.get("credit")),
        "publisher": _str(front.get("publisher") or front.get("source")),
        "default_tz": default_tz,
    }
    if suffix in MARKDOWN_SUFFIXES:
        html = markdown.markdown(body, extensions=["extra", "sane_lists"])
        return build_candidate(html=html, **fields)
    return build_candidate(text=body, **fields)


def _str(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


def _date(value: Any, default_tz: tzinfo) -> datetime | None:
    # YAML reads an unquoted 2023-07-12 as a date and with a time as a datetime.
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=default_tz)
    if isinstance(value, date):
        # A calendar day stays that day: 00:00 UTC, marked as a date (see dates.py).
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _is_day(value: Any) -> bool:
    return isinstance(value, date) and not isinstance(value, datetime)


def _front_matter(text: str, label: str) -> tuple[dict[str, Any], str]:
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        return {}, text
    for end in range(1, min(len(lines), 60)):
        if lines[end].strip() in ("---", "..."):
            try:
                data = yaml.safe_load("\n".join(lines[1:end])) or {}
            except yaml.YAMLError as exc:
                raise EntryError(f"{label}: the front matter is not valid YAML: {exc}") from None
            if not isinstance(data, dict):
                raise EntryError(f"{label}: the front matter must be key: value lines")
            return {str(k).lower(): v for k, v in data.items()}, "\n".join(lines[end + 1 :])
    return {}, text


def _read_email(raw: bytes, *, guid: str, label: str, default_tz: tzinfo) -> Candidate:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    if not isinstance(message, EmailMessage) or not (message.keys() or message.get_payload()):
        raise EntryError(f"{label}: not an e-mail message")
    html_part = message.get_body(preferencelist=("html",))
    text_part = message.get_body(preferencelist=("plain",))
    html = _part_text(html_part, label) if html_part is not None else None
    text = _part_text(text_part, label) if text_part is not None and not html else None
    if html is None and text is None and not message.is_multipart():
        text = _part_text(message, label)
    if text:
        # The signature ("-- " on a line of its own, RFC 3676) is not the release.
        text = re.split(r"(?m)^-- ?$", text, maxsplit=1)[0]
    sender_name, _ = email.utils.parseaddr(str(message.get("from", "")))
    message_id = str(message.get("message-id", "")).strip()
    return build_candidate(
        label=label,
        guid=f"mid:{message_id}" if message_id else guid,
        title=str(message.get("subject", "")) or None,
        html=html,
        text=text,
        published_text=str(message.get("date", "")) or None,
        # The sender's name is the publisher only when it names an organisation.
        publisher=sender_name if sender_name and looks_like_publisher(sender_name) else None,
        default_tz=default_tz,
    )


def _part_text(part: Any, label: str) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeDecodeError):
        payload = part.get_payload(decode=True) or b""
        return decode_text(payload, label)
