"""The range of dates people may type, and showing any stored date without crashing.

Python's datetime stops at year 9999, so a time near that edge typed with a
negative offset (``9999-12-31T23:59:59-14:00``) cannot even be converted to UTC,
and a stored one cannot be shown in a timezone east of UTC. Dates typed into the
API, the admin forms or the command line are therefore held to a window that
makes sense for a newsletter (:func:`check_send_time`, :func:`check_date`), and
every page shows stored values through :func:`in_zone`, which never raises.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
# A send is scheduled at most this far ahead; a release dated at most this far ahead.
MAX_AHEAD = timedelta(days=366)


class DateOutOfRange(ValueError):
    """A typed date outside the window; the message says which window. ``reason``
    is the message without the field's name, for a shell that names it its own way."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _utc(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise DateOutOfRange(field, "the time needs a timezone (for example +00:00)")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise DateOutOfRange(field, "the date is too far in the future") from None


def check_date(value: datetime, now: datetime, *, field: str = "date") -> datetime:
    """A date between 1990 and a year from now (search filters, release dates)."""
    at = _utc(value, field)
    if not EARLIEST <= at <= now + MAX_AHEAD:
        raise DateOutOfRange(
            field,
            f"must lie between {EARLIEST:%Y-%m-%d} and a year from now "
            f"({(now + MAX_AHEAD):%Y-%m-%d})",
        )
    return value


def check_send_time(value: datetime, now: datetime, *, field: str = "scheduled_for") -> datetime:
    """A time to start a send: in the future, at most a year ahead."""
    at = _utc(value, field)
    if at <= now:
        raise DateOutOfRange(field, "must be in the future")
    if at > now + MAX_AHEAD:
        raise DateOutOfRange(
            field, f"at most a year ahead (until {(now + MAX_AHEAD):%Y-%m-%d %H:%M} UTC)"
        )
    return value


def in_zone(value: datetime, timezone: str | tzinfo = "UTC") -> datetime:
    """``value`` in ``timezone``; in UTC when the conversion would leave the
    calendar (a value stored before these checks existed)."""
    zone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    try:
        return value.astimezone(zone)
    except (OverflowError, ValueError):
        return value.astimezone(UTC)
