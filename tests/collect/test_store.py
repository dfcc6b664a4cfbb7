"""Dedupe and storage on SQLite and PostgreSQL: one release per real release."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from sqlalchemy import select

from mailer.collect import collect_all, collect_source, retag_release
from mailer.collect import store as store_module
from mailer.collect.dedupe import Comparable, content_hash
from mailer.collect.extract import Candidate, build_candidate
from mailer.collect.store import Outcome, RecentReleases, store_candidates
from mailer.db import Database
from mailer.models import (
    Release,
    ReleaseLink,
    Source,
    utcnow,
)
from tests.collect.conftest import rss_feed, source, stored_releases
from tests.collect.server import LocalServer

BODY = (
    "Prime Minister Ingrida Šimonytė said on Wednesday that the decisions taken at the NATO "
    "summit in Vilnius would strengthen the defence of the Baltic region for years to come. "
    "Allied leaders agreed on new regional defence plans and on a faster path for Ukraine's "
    "membership of the Alliance.\n\n"
    "The government will propose raising defence spending to 3 percent of GDP in next year's "
    "budget. The ministry will brief the diplomatic corps on the summit's results on Friday."
)


def release(guid: str, title: str, text: str, **fields: object) -> Candidate:
    return build_candidate(label=guid, guid=guid, title=title, text=text, **fields)  # type: ignore[arg-type]


async def store_all(
    database: Database, source_name: str, candidates: list[Candidate]
) -> list[tuple[Outcome, int]]:
    async with database.transaction() as session:
        row = await session.scalar(select(Source).where(Source.name == source_name))
        results = await store_candidates(
            session,
            source_id=row.id if row else None,
            source_name=source_name,
            candidates=candidates,
            now=utcnow(),
            isolate=False,
        )
    return [(stored.outcome, stored.release_id) for stored in results]  # type: ignore[union-attr]


SOURCES = [
    source("Ministry", "feed", url="https://urm.example.lt/rss"),
    source("Aggregator", "feed", url="https://newswire.example.com/atom"),
]


async def test_same_guid_with_a_changed_body_updates_without_becoming_new(
    open_database, database_url: str
) -> None:
    async with open_database(database_url, SOURCES) as (_settings, database):
        [(first, release_id)] = await store_all(
            database, "Ministry", [release("g1", "Summit results", BODY)]
        )
        [(again, same_id)] = await store_all(
            database, "Ministry", [release("g1", "Summit results", BODY)]
        )
        changed_body = BODY + "\n\nA public report will follow next month."
        [(edited, edited_id)] = await store_all(
            database, "Ministry", [release("g1", "Summit results", changed_body)]
        )
        releases = await stored_releases(database)
    assert (first, again, edited) == (Outcome.NEW, Outcome.UNCHANGED, Outcome.UPDATED)
    assert release_id == same_id == edited_id
    assert len(releases) == 1
    assert releases[0].text.endswith("A public report will follow next month.")
    assert releases[0].updated_at > releases[0].first_seen_at


async def test_same_canonical_url_is_one_release(open_database, database_url: str) -> None:
    async with open_database(database_url, SOURCES) as (_settings, database):
        results = await store_all(
            database,
            "Ministry",
            [
                release("a", "Short note", "Opening hours change.", url="https://x.lt/n/1"),
                release(
                    "b", "Short note", "Opening hours change.", url="https://X.lt/n/1?utm_source=t"
                ),
            ],
        )
        releases = await stored_releases(database)
    assert [outcome for outcome, _ in results] == [Outcome.NEW, Outcome.MERGED]
    assert len(releases) == 1 and len(releases[0].links) == 2


async def test_aggregator_copy_merges_into_one_release_with_every_source(
    server: LocalServer, open_database, database_url: str
) -> None:
    server.serve_fixture("/ministry", "ministry.xml", "application/rss+xml")
    server.serve_fixture("/aggregator", "aggregator.xml", "application/atom+xml")
    sources = [
        source("Ministry", "feed", url=server.url("/ministry")),
        source("NewsWire", "feed", url=server.url("/aggregator")),
    ]
    async with open_database(database_url, sources) as (settings, database):
        # The aggregator is read first: its later date must give way to the ministry's.
        aggregator = await collect_source(database, settings, "NewsWire")
        ministry = await collect_source(database, settings, "Ministry")
        releases = await stored_releases(database)
    assert (aggregator.new, ministry.new, ministry.merged) == (2, 1, 1)
    summit = next(r for r in releases if "NATO summit in Vilnius" in r.text)
    assert sorted(link.source_name for link in summit.links) == ["Ministry", "NewsWire"]
    assert sorted(link.url for link in summit.links) == [
        "https://newswire.example.com/releases/48812-lithuania-summit",
        "https://urm.example.lt/news/vilnius-summit",
    ]
    assert summit.published_at == datetime(2023, 7, 12, 7, 0, tzinfo=UTC)
    assert "NewsWire" not in summit.text and "About" not in summit.text
    assert len(releases) == 3
    assert {t.slug for t in summit.topics} >= {"foreign-affairs"}


async def test_near_duplicate_text_is_detected_not_only_exact_copies(
    open_database, database_url: str
) -> None:
    ministry = release("urm-1", "Summit strengthened the eastern flank", BODY)
    republished = release(
        "agg-1",
        "LITHUANIA: PM says summit was a success",
        "Media contact: Ona Onaitė, press officer, +370 5 000 0000\n\n"
        + BODY.replace("Wednesday", "Wednesday (12 July)")
        + "\n\nQuestions should be sent to the issuing institution's press office.",
        published=datetime(2023, 7, 13, tzinfo=UTC),
    )
    unrelated = release(
        "agg-2",
        "Estonia keeps its inflation forecast",
        "Eesti Pank kept its inflation forecast for the year at 9 percent on Thursday, saying "
        "that energy prices had stabilised but that wage growth remained strong. The bank "
        "expects the economy to return to growth in the second half of the year.",
    )
    async with open_database(database_url, SOURCES) as (_settings, database):
        await store_all(database, "Ministry", [ministry])
        results = await store_all(database, "Aggregator", [republished, unrelated])
        releases = await stored_releases(database)
    assert ministry.content_hash != republished.content_hash
    assert [outcome for outcome, _ in results] == [Outcome.MERGED, Outcome.NEW]
    assert len(releases) == 2


async def test_two_stored_releases_found_to_be_one_are_folded_into_the_earlier(
    open_database, database_url: str
) -> None:
    early = release(
        "m-1",
        "Summit",
        BODY,
        url="https://urm.example.lt/a",
        published=datetime(2023, 7, 12, tzinfo=UTC),
    )
    late = release(
        "a-1",
        "Summit (republished)",
        "A different first version of the text that the aggregator later corrected, long "
        "enough not to look like the ministry's release at all, about regional matters.",
        url="https://newswire.example.com/a",
        published=datetime(2023, 7, 14, tzinfo=UTC),
    )
    async with open_database(database_url, SOURCES) as (_settings, database):
        [(_, early_id)] = await store_all(database, "Ministry", [early])
        [(_, late_id)] = await store_all(database, "Aggregator", [late])
        assert early_id != late_id
        # The aggregator corrects its copy: now it is the ministry's text, so the two
        # stored releases are one.
        corrected = release(
            "a-1",
            "Summit (republished)",
            BODY,
            url="https://urm.example.lt/a",
            published=datetime(2023, 7, 14, tzinfo=UTC),
        )
        [(outcome, survivor_id)] = await store_all(database, "Aggregator", [corrected])
        async with database.session() as session:
            folded = await session.get(Release, late_id)
            links = (
                await session.scalars(
                    select(ReleaseLink.source_name).where(ReleaseLink.release_id == early_id)
                )
            ).all()
        releases = await stored_releases(database)
    assert survivor_id == early_id and outcome is Outcome.UPDATED
    assert folded is not None and folded.merged_into_id == early_id
    assert [r.id for r in releases] == [early_id]
    assert releases[0].published_at == datetime(2023, 7, 12, tzinfo=UTC)
    assert sorted(links) == ["Aggregator", "Ministry"]


async def test_a_real_date_replaces_an_estimated_one(open_database, database_url: str) -> None:
    undated = release("u-1", "Summit", BODY)
    dated = release("d-1", "Summit", BODY, published=datetime(2023, 7, 12, tzinfo=UTC))
    async with open_database(database_url, SOURCES) as (_settings, database):
        await store_all(database, "Aggregator", [undated])
        before = (await stored_releases(database))[0]
        await store_all(database, "Ministry", [dated])
        after = (await stored_releases(database))[0]
    assert before.published_estimated is True
    assert before.published_at == before.first_seen_at
    assert after.published_estimated is False
    assert after.published_at == datetime(2023, 7, 12, tzinfo=UTC)


async def test_simhash_fits_a_signed_bigint(open_database, database_url: str) -> None:
    def words(n: int) -> str:
        return " ".join(hashlib.sha256(f"{n}:{i}".encode()).hexdigest()[:7] for i in range(40))

    candidates = [release(f"g{n}", f"Release {n}", words(n)) for n in range(6)]
    async with open_database(database_url, SOURCES) as (_settings, database):
        await store_all(database, "Ministry", candidates)
        async with database.session() as session:
            stored = set((await session.scalars(select(Release.simhash))).all())
    assert stored == {c.simhash for c in candidates}
    assert all(-(2**63) <= value < 2**63 for value in stored)
    assert any(value < 0 for value in stored)  # the top bit set: needs the signed form


async def test_topics_are_tagged_on_ingest_and_can_be_retagged(
    open_database, database_url: str
) -> None:
    text = "The Ministry of Health opened a new hospital wing. Vaccines are free for children."
    async with open_database(database_url, SOURCES) as (settings, database):
        [(_, release_id)] = await store_all(
            database, "Ministry", [release("h-1", "New hospital wing opens", text)]
        )
        assert {t.slug for t in (await stored_releases(database))[0].topics} == {"health"}
        async with database.transaction() as session:
            assert await retag_release(session, settings, release_id, ["economy", "health"]) == [
                "economy",
                "health",
            ]
        assert {t.slug for t in (await stored_releases(database))[0].topics} == {
            "economy",
            "health",
        }
        async with database.transaction() as session:
            assert await retag_release(session, settings, release_id) == ["health"]
        async with database.transaction() as session:
            try:
                await retag_release(session, settings, release_id, ["sport"])
            except ValueError as exc:
                assert "unknown topic(s): sport" in str(exc)
            else:
                raise AssertionError("an unknown topic was accepted")


async def test_a_copy_of_a_new_release_and_a_stored_one_in_one_batch_joins_all_three(
    open_database, database_url: str
) -> None:
    # The aggregator's batch brings a release new to mailer, then a copy that has the
    # new release's address and the ministry's stored text: all three are one release.
    ministry = release(
        "m-1",
        "Summit",
        BODY,
        url="https://urm.example.lt/a",
        published=datetime(2023, 7, 12, tzinfo=UTC),
    )
    first_copy = release(
        "a-1",
        "Summit (wire)",
        "A wire summary of the summit that is worded quite differently from the ministry's "
        "own release, and long enough to stand on its own as a separate text.",
        url="https://newswire.example.com/a",
        published=datetime(2023, 7, 13, tzinfo=UTC),
    )
    second_copy = release("a-2", "Summit (full text)", BODY, url="https://newswire.example.com/a")
    async with open_database(database_url, SOURCES) as (_settings, database):
        [(_, ministry_id)] = await store_all(database, "Ministry", [ministry])
        results = await store_all(database, "Aggregator", [first_copy, second_copy])
        releases = await stored_releases(database)
        async with database.session() as session:
            merged = (
                await session.scalars(
                    select(Release.merged_into_id).where(Release.merged_into_id.is_not(None))
                )
            ).all()
    assert [outcome for outcome, _ in results] == [Outcome.NEW, Outcome.MERGED]
    assert results[1][1] == ministry_id
    assert [r.id for r in releases] == [ministry_id]
    assert merged == [ministry_id]
    assert sorted(link.guid for link in releases[0].links) == ["a-1", "a-2", "m-1"]
    assert releases[0].published_at == datetime(2023, 7, 12, tzinfo=UTC)


async def test_a_release_that_cannot_be_stored_loses_only_itself(
    open_database, database_url: str
) -> None:
    batch = [
        release("g-1", "Opening hours", "The office opens at eight from Monday."),
        release("g-2", "Broken", "A release whose fingerprint does not fit the column."),
        release("g-3", "Closing hours", "The office closes at five on Fridays."),
    ]
    # Wider than the BIGINT column: the database refuses the row.
    batch[1].__dict__["simhash"] = 1 << 70
    async with open_database(database_url, SOURCES) as (_settings, database):
        try:
            await store_all(database, "Ministry", batch)
        except Exception:
            failed_whole = True
        else:
            failed_whole = False
        async with database.transaction() as session:
            results = await store_candidates(
                session,
                source_id=None,
                source_name="Ministry",
                candidates=batch,
                now=utcnow(),
                isolate=True,
            )
        releases = await stored_releases(database)
    assert failed_whole
    assert [type(r).__name__ for r in results][::2] == ["Stored", "Stored"]
    assert isinstance(results[1], Exception)
    assert sorted(r.title for r in releases) == ["Closing hours", "Opening hours"]
    assert sorted(r.id for r in releases) == sorted(r.release_id for r in results[::2])  # type: ignore[union-attr]


async def test_one_collection_run_merges_a_near_copy_brought_by_another_source(
    server: LocalServer, open_database, database_url: str
) -> None:
    copy = BODY.replace("Prime Minister", "The Prime Minister").replace(
        "on Friday", "on Friday afternoon"
    )
    published = "Wed, 12 Jul 2023 10:00:00 +0300"
    server.serve(
        "/ministry",
        rss_feed("Ministry", "https://urm.example.lt", [("m-1", "Summit", published, BODY)]),
    )
    server.serve(
        "/wire",
        rss_feed("Wire", "https://newswire.example.com", [("w-1", "Summit", published, copy)]),
    )
    sources = [
        source("Ministry", "feed", url=server.url("/ministry")),
        source("Wire", "feed", url=server.url("/wire")),
    ]
    async with open_database(database_url, sources) as (settings, database):
        results = await collect_all(database, settings)
        releases = await stored_releases(database)
    assert sorted((r.new, r.merged) for r in results) == [(0, 1), (1, 0)]
    assert len(releases) == 1
    assert sorted(link.source_name for link in releases[0].links) == ["Ministry", "Wire"]


async def test_a_run_sees_releases_another_process_stored_after_it_started(
    server: LocalServer, open_database, database_url: str
) -> None:
    copy = BODY.replace("Prime Minister", "The Prime Minister").replace(
        "on Friday", "on Friday afternoon"
    )
    published = "Wed, 12 Jul 2023 10:00:00 +0300"
    other_news = (
        "The ministry opened a consular office in Kraków that serves residents of the region."
    )
    server.serve(
        "/ministry",
        rss_feed("Ministry", "https://urm.example.lt", [("m-9", "Office", published, other_news)]),
    )
    server.serve(
        "/wire",
        rss_feed("Wire", "https://newswire.example.com", [("w-1", "Summit", published, copy)]),
    )
    sources = [
        source("Ministry", "feed", url=server.url("/ministry")),
        source("Wire", "feed", url=server.url("/wire")),
        source("Aggregator", "feed", url="https://newswire.example.com/atom"),
    ]
    async with open_database(database_url, sources) as (settings, database):
        run = RecentReleases()
        await collect_source(database, settings, "Ministry", recent=run)
        # Meanwhile another process stores the summit release.
        [(_, summit_id)] = await store_all(database, "Aggregator", [release("a-1", "Summit", BODY)])
        wire = await collect_source(database, settings, "Wire", recent=run)
        releases = await stored_releases(database)
    assert (wire.new, wire.merged) == (0, 1)
    assert sorted(r.id for r in releases if "NATO" in r.text) == [summit_id]
    assert len(releases) == 2


async def test_a_run_compares_with_the_text_a_release_has_now_not_the_one_it_wrote(
    open_database, database_url: str
) -> None:
    """A run keeps the normalised texts it wrote (RecentReleases.keep_text) and uses
    one only while the release's row still has the content hash written with it."""
    other_news = (
        "The ministry opened a consular office in Kraków that serves residents of the region. "
        "It is open on weekdays and issues passports, certificates and visas for residents "
        "of the whole voivodeship and of the neighbouring regions."
    )

    def copy(n: int) -> str:
        return BODY.replace("Prime Minister", "The Prime Minister").replace(
            "on Friday", "on Friday" + " afternoon" * n
        )

    async def store(source_name: str, candidate: Candidate) -> tuple[Outcome, int]:
        async with database.transaction() as session:
            [stored] = await store_candidates(
                session,
                source_id=None,
                source_name=source_name,
                candidates=[candidate],
                now=utcnow(),
                isolate=False,
                recent=run,
            )
        assert not isinstance(stored, Exception)
        return stored.outcome, stored.release_id

    async with open_database(database_url, []) as (_settings, database):
        run = RecentReleases()
        outcome, summit_id = await store("Ministry", release("m-1", "Summit", BODY))
        assert outcome is Outcome.NEW and summit_id in run.texts
        assert await store("Wire", release("w-1", "Summit", copy(1))) == (
            Outcome.MERGED,
            summit_id,
        )
        # The release's row changes under the run: another text and content hash (the
        # fingerprint is left as it was, so the copy is still compared with it).
        async with database.transaction() as session:
            row = await session.get(Release, summit_id)
            assert row is not None
            row.text = other_news
            row.content_hash = content_hash(other_news)
        outcome, copy_id = await store("Agency", release("a-1", "Summit", copy(2)))
    assert outcome is Outcome.NEW and copy_id != summit_id


def test_kept_texts_are_bounded_and_tied_to_their_content_hash(monkeypatch) -> None:
    monkeypatch.setattr(store_module, "_KEPT_CHARACTERS", 100)
    run = RecentReleases()
    for release_id in range(1, 6):
        run.keep_text(release_id, f"hash-{release_id}", Comparable.of("word " * 10))
    # 49 characters each ("word word … word"): the two newest fit in 100.
    assert list(run.texts) == [4, 5]
    kept = run.kept_text(5, "hash-5")
    assert kept is not None and kept.normalised == Comparable.of("word " * 10).normalised
    assert run.kept_text(5, "another hash") is None and run.kept_text(1, "hash-1") is None
    run.reset()
    assert run.kept_text(5, "hash-5") is None


def test_near_again_answers_what_the_index_answers_after_changes() -> None:
    """Storing reuses what prepare asked the near-duplicate index and only rechecks
    what changed since: added, moved, renamed, forgotten and re-dated entries must
    give the answer asking the index afresh gives, order included."""
    import random
    from datetime import timedelta

    rng = random.Random(12)
    since = datetime(2024, 1, 1, tzinfo=UTC)
    for _ in range(40):
        recent = RecentReleases()
        centres = [rng.getrandbits(64) - (1 << 63) for _ in range(3)]

        def near_value(centres: list[int] = centres) -> int:
            noise = rng.getrandbits(64) & rng.getrandbits(64) & rng.getrandbits(64)
            return (rng.choice(centres) ^ noise) - (1 << 63)

        def moment() -> datetime:
            return since + timedelta(days=rng.randint(-5, 5))

        for key in range(1, 200):
            recent.put(key, near_value(), moment())
        recent.mark()
        queries = [near_value() for _ in range(10)]
        kept = [recent.close(q) for q in queries]
        for step in range(60):
            key = rng.randint(-30, 230)
            action = rng.random()
            if action < 0.4:
                recent.put(key, near_value(), moment())
            elif action < 0.6:
                recent.forget(key)
            elif action < 0.8:
                recent.rename(key, rng.randint(300, 400))
            elif key in recent.published:
                recent.published[key] = moment()
            if step % 10 == 0:
                for query, close in zip(queries, kept, strict=True):
                    assert recent.near_again(close, query, since) == recent.near(query, since)


def test_the_simhash_index_finds_every_close_fingerprint_sharing_a_band() -> None:
    """What the index answers is what comparing every live fingerprint gives (a
    shared 8-bit band and at most MAX_DISTANCE bits apart), closest first, after
    fingerprints are added, replaced and removed."""
    import random

    from mailer.collect.dedupe import (
        BANDS,
        MAX_DISTANCE,
        SimhashIndex,
        distance,
        to_signed,
        to_unsigned,
    )

    rng = random.Random(7)
    centre = rng.getrandbits(64)
    index = SimhashIndex()
    live: dict[int, int] = {}

    def near() -> int:
        return centre ^ (rng.getrandbits(64) & rng.getrandbits(64) & rng.getrandbits(64))

    def shares_band(a: int, b: int) -> bool:
        return any((a >> (8 * n)) & 0xFF == (b >> (8 * n)) & 0xFF for n in range(BANDS))

    for step in range(3000):
        key = rng.randint(1, 400)
        if rng.random() < 0.25:
            index.remove(key)
            live.pop(key, None)
        else:
            value = to_signed(near())
            index.add(key, value)
            live[key] = to_unsigned(value)
        if step % 50 == 0:
            query = near()
            expected = sorted(
                (distance(query, value), key)
                for key, value in live.items()
                if shares_band(query, value) and distance(query, value) <= MAX_DISTANCE
            )
            assert expected, "the fingerprints are meant to be close to one another"
            assert index.scored(to_signed(query)) == expected
            assert index.candidates(query) == [key for _, key in expected]
