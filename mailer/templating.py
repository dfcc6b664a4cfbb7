"""The Jinja2 environment shared by the emails and the web pages.

Templates are looked up first in ``site.templates_dir`` (when configured), then in
the shipped ``templates/`` folder, so a site overrides any single template by
placing a file with the same name in its own folder and keeps the rest.
Templates whose names end in ``.html``/``.html.j2``/``.htm``/``.xml`` are
autoescaped; text templates (``.txt.j2``) are not, because escaping would corrupt
the plain-text part of an email.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from mailer.config import Settings
from mailer.datewindow import in_zone

SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def template_search_path(settings: Settings) -> list[Path]:
    """Folders searched for templates, highest precedence first."""
    folders: list[Path] = []
    if settings.site.templates_dir is not None:
        folders.append(settings.resolve(settings.site.templates_dir))
    folders.append(SHIPPED_TEMPLATES)
    return folders


def template_environment(settings: Settings) -> Environment:
    """The environment for ``settings`` (cached: one per distinct search path)."""
    return _environment(tuple(template_search_path(settings)))


@lru_cache(maxsize=8)
def _environment(search_path: tuple[Path, ...]) -> Environment:
    environment = Environment(
        loader=FileSystemLoader([str(folder) for folder in search_path]),
        autoescape=select_autoescape(
            enabled_extensions=("html", "htm", "xml", "html.j2", "htm.j2", "xml.j2"),
            default_for_string=True,
            default=False,
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Templates are read once; a site that edits its overrides restarts the process.
        auto_reload=False,
    )
    environment.filters["wrap"] = wrap_text
    environment.filters["long_date"] = long_date
    environment.filters["iso_date"] = iso_date
    environment.filters["count_of"] = count_of
    return environment


def count_of(number: int, singular: str, plural: str | None = None) -> str:
    """``3 recipients``, ``1 recipient``: a number with its noun in agreement (English
    plurals; pass ``plural`` where adding "s" is wrong)."""
    noun = singular if number == 1 else (plural or f"{singular}s")
    return f"{number:,} {noun}"


def wrap_text(
    text: str | None, width: int = 72, indent: str = "", first_indent: str | None = None
) -> str:
    """Wrap prose for a plain-text email; paragraphs (blank-line separated) are kept.

    ``first_indent`` (default: ``indent``) starts the first line, e.g. a list number.
    Long words such as URLs are never broken, so links stay clickable.
    """
    if not text:
        return ""
    paragraphs = [p for p in (" ".join(block.split()) for block in text.split("\n\n")) if p]
    wrapped = []
    for number, paragraph in enumerate(paragraphs):
        wrapper = textwrap.TextWrapper(
            width=width,
            initial_indent=indent if number or first_indent is None else first_indent,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        wrapped.append(wrapper.fill(paragraph))
    return "\n\n".join(wrapped)


def long_date(value: datetime | date | None, timezone: str = "UTC") -> str:
    """``12 July 2023`` in the given timezone; empty for no date. A ``date`` (a
    release published on a day, without a time) is that day wherever one is."""
    if value is None:
        return ""
    local = in_zone(value, timezone) if isinstance(value, datetime) else value
    return f"{local.day} {local:%B %Y}"


def local_time(value: datetime | None, timezone: str = "UTC") -> str:
    """``2025-10-23 15:10 EEST``: a moment in the configured timezone, labelled with
    the zone so that nobody has to guess (the CLI and the admin both use this)."""
    if value is None:
        return "—"
    local = in_zone(value, timezone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or timezone}"


def publication_date(
    value: datetime | None, timezone: str = "UTC", *, date_only: bool = False
) -> str:
    """A release's publication as the source gave it: ``2025-10-23`` for a date
    without a time (never shifted by a timezone), else :func:`local_time`."""
    if value is None:
        return "—"
    if date_only:
        return value.astimezone(UTC).date().isoformat()
    return local_time(value, timezone)


def iso_date(value: datetime | None, timezone: str = "UTC") -> str:
    """``2023-07-12`` in the given timezone; empty for no date."""
    if value is None:
        return ""
    return in_zone(value, timezone).date().isoformat()
