from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from mailer.collect.dates import is_date_label, parse_date
from mailer.collect.extract import build_candidate

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2023 07 12", datetime(2023, 7, 12, tzinfo=UTC)),
        ("Updated 2025-10-23", datetime(2025, 10, 23, tzinfo=UTC)),
        ("Wed, 12 Jul 2023 10:00:00 +0300", datetime(2023, 7, 12, 7, 0, tzinfo=UTC)),
        ("Thu, 01 Jan 2015 00:00:00 EST", datetime(2015, 1, 1, 5, 0, tzinfo=UTC)),
        ("2025-10-23T10:00:00Z", datetime(2025, 10, 23, 10, 0, tzinfo=UTC)),
        ("2024-03-05T09:30:00+02:00", datetime(2024, 3, 5, 7, 30, tzinfo=UTC)),
        ("2023-07-12 14:05", datetime(2023, 7, 12, 14, 5, tzinfo=UTC)),
        ("12 July 2023", datetime(2023, 7, 12, tzinfo=UTC)),
        ("July 12, 2023 3:30 pm", datetime(2023, 7, 12, 15, 30, tzinfo=UTC)),
        ("Published on 3 March 2024", datetime(2024, 3, 3, tzinfo=UTC)),
        ("12.07.2023", datetime(2023, 7, 12, tzinfo=UTC)),
        ("2023 m. liepos 12 d.", datetime(2023, 7, 12, tzinfo=UTC)),
        ("Paskelbta: 2023.07.12 14:05", datetime(2023, 7, 12, 14, 5, tzinfo=UTC)),
    ],
)
def test_release_date_formats(written: str, expected: datetime) -> None:
    parsed = parse_date(written, now=NOW)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize(
    "written",
    [
        "",
        "Date",
        "The minister said 2023 was a good year",
        "2024-02-30",
        "2099-01-01",
        "1850-01-01",
    ],
)
def test_non_dates_and_implausible_dates_are_refused(written: str) -> None:
    assert parse_date(written, now=NOW) is None


def test_a_date_without_zone_is_read_in_the_sources_zone() -> None:
    vilnius = ZoneInfo("Europe/Vilnius")
    assert parse_date("2023 07 12 10:00", default_tz=vilnius, now=NOW) == datetime(
        2023, 7, 12, 7, 0, tzinfo=UTC
    )


def test_date_label_is_recognised_alone() -> None:
    assert is_date_label("Date")
    assert is_date_label("Published:")
    assert not is_date_label("Date of the summit was set")


def test_date_on_the_line_after_its_label_becomes_the_publication_date() -> None:
    release = build_candidate(
        label="t",
        text="Budget approved\n\nDate\n2023 07 12\n\nThe government approved the budget.",
    )
    assert release.published == datetime(2023, 7, 12, tzinfo=UTC)
    assert "2023 07 12" not in release.text
    assert "Date" not in release.text


def test_updated_line_is_used_only_when_there_is_no_publication_date() -> None:
    both = build_candidate(
        label="t",
        title="Tax changes",
        text="Updated 2025-10-23\n\nPublished 2025-10-20\n\nThe tax changes take effect.",
    )
    assert both.published == datetime(2025, 10, 20, tzinfo=UTC)
    only_updated = build_candidate(
        label="t", title="Tax changes", text="Updated 2025-10-23\n\nThe tax changes take effect."
    )
    assert only_updated.published == datetime(2025, 10, 23, tzinfo=UTC)
    assert "Updated" not in only_updated.text


def test_no_date_at_all_leaves_the_date_unknown() -> None:
    release = build_candidate(label="t", title="Undated", text="A release that carries no date.")
    assert release.published is None
