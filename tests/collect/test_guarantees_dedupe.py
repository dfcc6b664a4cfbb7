"""Guarantee: near-duplicate merging joins copies of one release and never two releases.

Releases of one institution share an intro and an outro word for word; only the
news differs. Word-shingle containment must keep such releases apart (a merged
release is one the readers never get) while still joining a copy that differs
by an aggregator's edits. The decision is pinned on both sides of the threshold
and at the threshold itself, with the containment of each pair checked first so
that the texts keep testing what their names say.
"""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime
from fractions import Fraction

import pytest
from sqlalchemy import select

from mailer.collect import collect_source
from mailer.collect.dedupe import (
    MAX_DISTANCE,
    containment,
    distance,
    is_near_duplicate,
    normalised_text,
    shingles,
    simhash,
)
from mailer.collect.store import Outcome
from mailer.models import Delivery, Subscriber, SubscriberStatus, utcnow
from mailer.send import start_digest
from tests.collect.conftest import rss_feed, source, stored_releases
from tests.collect.server import LocalServer
from tests.collect.test_store import release, store_all

INTRO = (
    "The Ministry of Finance of the Republic of Lithuania informs the public and the media "
    "that the following decision was adopted at today's meeting of the Government, on the "
    "proposal of the Minister of Finance, after consultation with the social partners."
)
OUTRO = (
    "The Ministry of Finance is responsible for the state budget, taxes, public debt and the "
    "management of European Union funds. For more information please contact the "
    "Communication Division of the Ministry of Finance by telephone or by e-mail during "
    "working hours, Monday to Friday."
)
BUDGET_NEWS = (
    "The Government approved the draft state budget for next year. Revenue is planned at "
    "18.2 billion euro and expenditure at 19.6 billion euro, so the deficit would fall to "
    "2.1 percent of gross domestic product. Pensions will rise by 9 percent."
)
BONDS_NEWS = (
    "Lithuania sold ten-year government bonds worth 750 million euro on the international "
    "markets. Demand exceeded the offer almost three times and the yield was set at "
    "3.4 percent, the lowest since the start of the year. The proceeds will refinance bonds "
    "maturing in spring."
)
# The ministry's standing paragraphs, run together: the shared part of the pairs below.
STANDING_TEXT = f"{INTRO} {OUTRO}"


def exact_containment(a: str, b: str) -> Fraction:
    first, second = shingles(normalised_text(a)), shingles(normalised_text(b))
    return Fraction(len(first & second), min(len(first), len(second)))


def sharing(shared_words: int, own_words: int) -> tuple[str, str]:
    """Two releases that open with the same ``shared_words`` of the ministry's standing
    text and go on with ``own_words`` of different news."""
    shared = STANDING_TEXT.split()[:shared_words]
    return (
        " ".join(shared + BUDGET_NEWS.split()[:own_words]),
        " ".join(shared + BONDS_NEWS.split()[:own_words]),
    )


# (shared words, own words) -> the exact containment of the pair, and the decision.
DISTINCT_BELOW_THRESHOLD = [
    pytest.param(34, 18, Fraction(11, 17), id="0.65-shared-intro-and-outro"),
    pytest.param(31, 11, Fraction(3, 4), id="0.75-mostly-standing-text"),
]
MERGED_FROM_THRESHOLD = [
    pytest.param(33, 8, Fraction(4, 5), id="0.80-exactly-at-the-threshold"),
    pytest.param(53, 9, Fraction(50, 59), id="0.85-a-lightly-edited-copy"),
]


@pytest.mark.parametrize(("shared_words", "own_words", "expected"), DISTINCT_BELOW_THRESHOLD)
def test_releases_sharing_boilerplate_below_the_threshold_stay_distinct(
    shared_words: int, own_words: int, expected: Fraction
) -> None:
    first, second = sharing(shared_words, own_words)
    assert exact_containment(first, second) == expected
    assert containment(normalised_text(first), normalised_text(second)) == float(expected)
    assert not is_near_duplicate(first, second)
    assert not is_near_duplicate(second, first)


@pytest.mark.parametrize(("shared_words", "own_words", "expected"), MERGED_FROM_THRESHOLD)
def test_copies_at_or_above_the_threshold_are_merged(
    shared_words: int, own_words: int, expected: Fraction
) -> None:
    first, second = sharing(shared_words, own_words)
    assert exact_containment(first, second) == expected
    assert is_near_duplicate(first, second)
    assert is_near_duplicate(second, first)


@pytest.mark.parametrize(
    ("shared_words", "own_words", "expected", "outcome"),
    [
        pytest.param(31, 11, Fraction(3, 4), Outcome.NEW, id="0.75-stays-two-releases"),
        pytest.param(53, 9, Fraction(50, 59), Outcome.MERGED, id="0.85-becomes-one-release"),
    ],
)
async def test_the_store_decides_on_each_side_of_the_threshold(
    open_database,
    database_url: str,
    shared_words: int,
    own_words: int,
    expected: Fraction,
    outcome: Outcome,
) -> None:
    first, second = sharing(shared_words, own_words)
    assert exact_containment(first, second) == expected
    # Close enough in SimHash that the store compares the texts at all.
    assert distance(simhash(first), simhash(second)) <= MAX_DISTANCE
    ministry = [source("Ministry of Finance", "feed", url="https://finmin.example.lt/rss")]
    async with open_database(database_url, ministry) as (_settings, database):
        results = await store_all(
            database,
            "Ministry of Finance",
            [release("fm-1", "Budget", first), release("fm-2", "Bonds", second)],
        )
        releases = await stored_releases(database)
    assert [found for found, _ in results] == [Outcome.NEW, outcome]
    assert len(releases) == (2 if outcome is Outcome.NEW else 1)


def _paragraphs(*parts: str) -> str:
    return "".join(f"<p>{part}</p>" for part in parts)


async def test_two_ministry_releases_with_shared_intro_and_outro_both_reach_readers(
    server: LocalServer, open_database, database_url: str
) -> None:
    now = utcnow()
    published = format_datetime(now - timedelta(hours=3))
    server.serve(
        "/finmin",
        rss_feed(
            "Ministry of Finance",
            "https://finmin.example.lt",
            [
                ("fm-budget", "Government approves the draft budget", published,
                 _paragraphs(INTRO, BUDGET_NEWS, OUTRO)),
                ("fm-bonds", "Lithuania sells ten-year bonds", published,
                 _paragraphs(INTRO, BONDS_NEWS, OUTRO)),
            ],
        ),
    )  # fmt: skip
    ministry = [source("Ministry of Finance", "feed", url=server.url("/finmin"))]
    async with open_database(database_url, ministry) as (settings, database):
        async with database.transaction() as session:
            session.add(
                Subscriber(
                    email="reader@example.net",
                    email_key="reader@example.net",
                    status=SubscriberStatus.CONFIRMED,
                    confirmed_at=now - timedelta(days=1),
                    digest_since=now - timedelta(days=1),
                )
            )
        result = await collect_source(database, settings, "Ministry of Finance")
        releases = await stored_releases(database)
        digest = await start_digest(database, settings)
        async with database.session() as session:
            delivery = await session.scalar(select(Delivery).where(Delivery.digest_id == digest.id))
    assert (result.new, result.merged) == (2, 0)
    assert len(releases) == 2
    budget, bonds = sorted(releases, key=lambda r: r.title)
    # What makes this pair the case the threshold exists for: a good half of the
    # text is the same, and the fingerprints are close enough to be compared.
    assert 0.6 < containment(normalised_text(budget.text), normalised_text(bonds.text)) < 0.7
    assert distance(simhash(budget.text), simhash(bonds.text)) <= MAX_DISTANCE
    assert delivery is not None
    assert sorted(delivery.release_ids) == sorted(r.id for r in releases)


def test_simhash_from_utf8_shingles_is_the_simhash_of_the_shingles() -> None:
    """The fingerprint made from the UTF-8 shingles of a normalised text is the one
    made from its shingles as strings (stored fingerprints stay valid)."""
    from mailer.collect.dedupe import simhash_of_normalised, simhash_of_shingles

    texts = [
        "",
        "one",
        "two words",
        "Šimonytė meets the Ministry of Foreign Affairs; Ø ß İ ﬁ Ⅻ 12_3 —",
        "again\u00a0and\u2028again",
        " ".join(f"word{n % 17} žodis{n % 5}" for n in range(300)),
    ]
    for text in texts:
        normalised = normalised_text(text)
        assert simhash_of_normalised(normalised) == simhash_of_shingles(shingles(normalised))
