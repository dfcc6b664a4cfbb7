"""Publication dates as press offices actually write them.

RFC 822 and ISO 8601 go through the standard library (``email.utils`` and
``datetime.fromisoformat``). The rest is hand-written because no installed parser
covers the release-specific shapes without guessing wildly: ``2023 07 12`` with
spaces, a label such as ``Updated`` or ``Paskelbta`` in front, and Lithuanian
month names (``2023 m. liepos 12 d.``). dateparser would cover some of them, but
it accepts almost any string as a date, which here would turn ordinary sentences
into publication dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime

# How far in the future a parsed date may lie before it is taken to be a misreading
# (an embargoed release is dated at most a day or so ahead).
FUTURE_TOLERANCE = timedelta(days=2)
EARLIEST_YEAR = 1990

_LABEL = re.compile(
    r"^\s*(?:last\s+updated|updated(?:\s+on)?|published(?:\s+on)?|posted(?:\s+on)?|"
    r"release\s+date|issued|date|dated|atnaujinta|paskelbta|data|datum)\s*[:\-–—]?\s*",
    re.IGNORECASE,
)
_NUMERIC_YMD = re.compile(
    r"^(?P<y>\d{4})\s*[-./ ]\s*(?P<m>\d{1,2})\s*[-./ ]\s*(?P<d>\d{1,2})\.?"
    r"(?:\s*(?:,|T|\s)\s*(?P<time>\d{1,2}:\d{2}(?::\d{2})?))?\s*(?P<zone>Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)
_NUMERIC_DMY = re.compile(
    r"^(?P<d>\d{1,2})\s*[./-]\s*(?P<m>\d{1,2})\s*[./-]\s*(?P<y>\d{4})"
    r"(?:\s*,?\s*(?P<time>\d{1,2}:\d{2}(?::\d{2})?))?$"
)
_MONTHS = {
    **{
        name: number
        for number, names in enumerate(
            [
                ("january", "jan", "sausio", "sausis"),
                ("february", "feb", "vasario", "vasaris"),
                ("march", "mar", "kovo", "kovas"),
                ("april", "apr", "balandžio", "balandis"),
                ("may", "gegužės", "gegužė"),
                ("june", "jun", "birželio", "birželis"),
                ("july", "jul", "liepos", "liepa"),
                ("august", "aug", "rugpjūčio", "rugpjūtis"),
                ("september", "sep", "sept", "rugsėjo", "rugsėjis"),
                ("october", "oct", "spalio", "spalis"),
                ("november", "nov", "lapkričio", "lapkritis"),
                ("december", "dec", "gruodžio", "gruodis"),
            ],
            start=1,
        )
        for name in names
    }
}
_MONTH_NAME = r"(?P<month>[^\W\d_]{3,12})\.?"
_TIME = r"(?:\s*(?:,|at)?\s*(?P<time>\d{1,2}:\d{2}(?::\d{2})?)\s*(?P<ampm>[ap]\.?m\.?)?)?"
_ZONE = r"(?:\s*(?P<zone>UTC|GMT|Z|[+-]\d{2}:?\d{2}))?"
_TEXTUAL = [
    # 12 July 2023, 12 Jul. 2023 14:00
    re.compile(
        rf"^(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH_NAME}\s*,?\s+(?P<y>\d{{4}}){_TIME}{_ZONE}$",
        re.I,
    ),
    # July 12, 2023
    re.compile(
        rf"^{_MONTH_NAME}\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s*,?\s+(?P<y>\d{{4}}){_TIME}{_ZONE}$",
        re.I,
    ),
    # 2023 m. liepos 12 d.
    re.compile(rf"^(?P<y>\d{{4}})\s*m\.?\s+{_MONTH_NAME}\s+(?P<d>\d{{1,2}})\s*d\.?{_TIME}$", re.I),
]
_WEEKDAY_PREFIX = re.compile(
    r"^(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)[a-z]*\.?,?\s+", re.IGNORECASE
)


def _zone_from(text: str | None, default: tzinfo) -> tzinfo:
    if not text or text.upper() in ("UTC", "GMT", "Z"):
        return UTC if text else default
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")

    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


def _clock(text: str | None, ampm: str | None = None) -> time:
    if not text:
        return time(0, 0)
    parts = [int(p) for p in text.split(":")]
    hour, minute, second = parts[0], parts[1], parts[2] if len(parts) > 2 else 0
    if ampm:
        is_pm = ampm.lower().startswith("p")
        hour = hour % 12 + (12 if is_pm else 0)
    return time(hour, minute, second)


def plausible_moment(value: datetime) -> datetime | None:
    """An aware moment in UTC when it is one we trust (not before EARLIEST_YEAR,
    not in the future), else None: what parse_date gives for its ISO form."""
    return _plausible(value, None)


def _plausible(value: datetime, now: datetime | None) -> datetime | None:
    now = now or datetime.now(UTC)
    if value.year < EARLIEST_YEAR or value > now + FUTURE_TOLERANCE:
        return None
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Published:
    """A publication date as the source gave it. ``date_only``: the source named a
    calendar day without a time; ``at`` is then that day at 00:00 UTC, a stand-in
    that sorts by day and is shown as the date, never moved by a timezone."""

    at: datetime
    date_only: bool = False


def parse_published(
    value: str | None, *, default_tz: tzinfo = UTC, now: datetime | None = None
) -> Published | None:
    """The date in ``value`` with its precision, or None when it is not a date we trust.

    A value with a time but without a zone is read in ``default_tz`` (the source's
    own zone). A value without a time of day stays a date: "2025-10-23" published
    in Vilnius is 23 October wherever the reader is.
    """
    parsed = _parse_labelled(value, default_tz)
    if parsed is None:
        return None
    moment, has_time = parsed
    if not has_time:
        day = moment.date()
        moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
    plausible = _plausible(moment, now)
    return Published(plausible, date_only=not has_time) if plausible else None


def parse_date(
    value: str | None, *, default_tz: tzinfo = UTC, now: datetime | None = None
) -> datetime | None:
    """A timezone-aware UTC datetime, or None; see :func:`parse_published` (a date
    without a time is that day at 00:00 UTC)."""
    published = parse_published(value, default_tz=default_tz, now=now)
    return published.at if published else None


def _parse_labelled(value: str | None, default_tz: tzinfo) -> tuple[datetime, bool] | None:
    if not value:
        return None
    text = " ".join(value.replace("\xa0", " ").split())
    text = _LABEL.sub("", text, count=1).strip().rstrip(".")
    if not text or len(text) > 60:
        return None
    try:
        return _parse(text, default_tz)
    except (ValueError, OverflowError):
        return None


def _parse(text: str, default_tz: tzinfo) -> tuple[datetime, bool] | None:
    """The moment and whether the text gave a time of day."""
    if match := _NUMERIC_YMD.match(text):
        day = date(int(match["y"]), int(match["m"]), int(match["d"]))
        zone = _zone_from(match["zone"], default_tz)
        return datetime.combine(day, _clock(match["time"]), tzinfo=zone), bool(match["time"])
    if match := _NUMERIC_DMY.match(text):
        first, second = int(match["d"]), int(match["m"])
        # Day first (European order) unless that cannot be a month/day pair.
        day_number, month = (second, first) if second > 12 >= first else (first, second)
        day = date(int(match["y"]), month, day_number)
        moment = datetime.combine(day, _clock(match["time"]), tzinfo=default_tz)
        return moment, bool(match["time"])
    iso = text.replace(" ", "T", 1) if re.match(r"^\d{4}-\d{2}-\d{2} \d", text) else text
    if re.match(r"^\d{4}-\d{2}-\d{2}", iso):
        try:
            parsed = datetime.fromisoformat(iso.replace("z", "Z"))
        except ValueError:
            parsed = None
        if parsed is not None:
            has_time = len(iso) > 10
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=default_tz)), has_time
    without_weekday = _WEEKDAY_PREFIX.sub("", text)
    for pattern in _TEXTUAL:
        if match := pattern.match(without_weekday):
            month = _MONTHS.get(match["month"].lower())
            if month is None:
                return None
            day = date(int(match["y"]), month, int(match["d"]))
            groups = match.groupdict()
            zone = _zone_from(groups.get("zone"), default_tz)
            clock = _clock(groups.get("time"), groups.get("ampm"))
            return datetime.combine(day, clock, zone), bool(groups.get("time"))
    if re.search(r"\d{1,2}:\d{2}", text) and re.search(r"[A-Za-z]{3}", text):
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=default_tz)), True
    return None


def is_date_line(line: str) -> bool:
    """True when a whole line is a date (optionally labelled), as in a release header."""
    parsed = _parse_labelled(line, UTC)
    return parsed is not None and parsed[0].year >= EARLIEST_YEAR


def is_date_label(line: str) -> bool:
    """A line such as ``Date`` or ``Published:`` whose value stands on the next line."""
    stripped = line.strip()
    return bool(stripped) and not _LABEL.sub("", stripped, count=1).strip() and len(stripped) < 25
