"""HTTP behaviour of sources: conditional GET, retries, limits and hostile servers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mailer.collect import collect_all, collect_source
from mailer.collect.fetch import Fetcher, FetchError, FetchPolicy
from mailer.collect.guard import AddressPolicy
from tests.collect.conftest import source, source_row, stored_releases
from tests.collect.server import FIXTURES, LocalServer, Reply

RSS = "application/rss+xml"
LOOPBACK = AddressPolicy.from_entries(["127.0.0.1"])


async def test_unchanged_feed_costs_one_304(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_conditional("/feed", (FIXTURES / "ministry.xml").read_bytes())
    async with open_database(sqlite_url, [source("Feed", "feed", url=server.url("/feed"))]) as (
        settings,
        database,
    ):
        first = await collect_source(database, settings, "Feed")
        second = await collect_source(database, settings, "Feed")
        row = await source_row(database, "Feed")
    assert first.new == 2 and not first.not_modified
    assert second.not_modified and (second.new, second.updated, second.failed) == (0, 0, 0)
    hits = server.hits("/feed")
    assert len(hits) == 2
    assert hits[1].headers.get("if-none-match") == '"v1"'
    assert hits[1].headers.get("if-modified-since")
    assert row.etag == '"v1"' and row.status == "ok"


async def test_user_agent_names_the_collector(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_fixture("/feed", "ministry.xml", RSS)
    async with open_database(sqlite_url, [source("Feed", "feed", url=server.url("/feed"))]) as (
        settings,
        database,
    ):
        await collect_source(database, settings, "Feed")
    agent = server.hits("/feed")[0].headers["user-agent"]
    assert agent.startswith("mailer/") and "press-release collector" in agent


async def test_gone_disables_the_source(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.routes["/gone"] = lambda _h: Reply(410, b"gone")
    async with open_database(sqlite_url, [source("Gone", "feed", url=server.url("/gone"))]) as (
        settings,
        database,
    ):
        result = await collect_source(database, settings, "Gone")
        row = await source_row(database, "Gone")
        again = await collect_source(database, settings, "Gone")
    assert result.disabled and "410" in (result.error or "")
    assert row.enabled is False and row.status == "disabled"
    assert "disabled" in (row.last_error or "")
    assert again.skipped and len(server.hits("/gone")) == 1


async def test_server_error_then_success_is_retried(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    body = (FIXTURES / "ministry.xml").read_bytes()
    server.serve_sequence(
        "/flaky",
        [Reply(500, b"oops"), Reply(503, b"busy"), Reply(200, body, {"Content-Type": RSS})],
    )
    flaky = source("Flaky", "feed", url=server.url("/flaky"), retries=2)
    async with open_database(sqlite_url, [flaky]) as (settings, database):
        result = await collect_source(database, settings, "Flaky")
    assert result.error is None and result.new == 2
    assert len(server.hits("/flaky")) == 3


async def test_persistent_server_error_marks_the_source_failing(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.routes["/down"] = lambda _h: Reply(502, b"bad gateway")
    down = source("Down", "feed", url=server.url("/down"), retries=1)
    async with open_database(sqlite_url, [down]) as (settings, database):
        first = await collect_source(database, settings, "Down")
        second = await collect_source(database, settings, "Down")
        row = await source_row(database, "Down")
    assert first.error == "HTTP 502 Bad Gateway (after 2 attempts)"
    assert second.error == first.error
    assert row.status == "failing" and row.consecutive_failures == 2
    assert row.last_error == first.error and row.last_success_at is None
    assert len(server.hits("/down")) == 4


async def test_not_found_is_not_retried(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    missing = source("Missing", "feed", url=server.url("/nothing-here"), retries=3)
    async with open_database(sqlite_url, [missing]) as (settings, database):
        result = await collect_source(database, settings, "Missing")
    assert result.error == "HTTP 404 Not Found"
    assert len(server.hits("/nothing-here")) == 1


async def test_endless_response_is_cut_at_the_size_limit(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_endless("/endless")
    endless = source("Endless", "feed", url=server.url("/endless"), max_bytes=200_000)
    async with open_database(sqlite_url, [endless]) as (settings, database):
        result = await collect_source(database, settings, "Endless")
    assert result.error == "response larger than the 200,000-byte limit; stopped reading"


async def test_declared_huge_response_is_refused_before_reading(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve("/huge", b"x" * 300_000, RSS)
    huge = source("Huge", "feed", url=server.url("/huge"), max_bytes=200_000)
    async with open_database(sqlite_url, [huge]) as (settings, database):
        result = await collect_source(database, settings, "Huge")
    assert result.error is not None and "300,000 bytes declared" in result.error


async def test_slow_server_hits_the_read_timeout(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_slow("/slow", delay=3)
    slow = source("Slow", "feed", url=server.url("/slow"), timeout=0.5)
    async with open_database(sqlite_url, [slow]) as (settings, database):
        result = await collect_source(database, settings, "Slow")
    assert result.error == "no data for 0.5s (read timeout)"


async def test_trickling_server_hits_the_overall_deadline(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_trickle("/trickle", interval=0.1)
    trickle = source("Trickle", "feed", url=server.url("/trickle"), timeout=0.5)
    async with open_database(sqlite_url, [trickle]) as (settings, database):
        result = await collect_source(database, settings, "Trickle")
    assert result.error == "gave up after 1.5s: the server sends too slowly"


async def test_redirect_loop_is_stopped(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.redirect("/loop-a", "/loop-b")
    server.redirect("/loop-b", "/loop-a")
    looping = source("Loop", "feed", url=server.url("/loop-a"))
    async with open_database(sqlite_url, [looping]) as (settings, database):
        result = await collect_source(database, settings, "Loop")
    assert result.error == "too many redirects (more than 5); is there a redirect loop?"
    assert len(server.hits("/loop-a")) + len(server.hits("/loop-b")) == 6


async def test_redirect_is_followed(server: LocalServer, open_database, sqlite_url: str) -> None:
    server.redirect("/old-feed", "/new-feed")
    server.serve_fixture("/new-feed", "ministry.xml", RSS)
    moved = source("Moved", "feed", url=server.url("/old-feed"))
    async with open_database(sqlite_url, [moved]) as (settings, database):
        result = await collect_source(database, settings, "Moved")
    assert result.error is None and result.new == 2


async def test_refused_connection_is_a_network_error(open_database, sqlite_url: str) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = source("Closed", "feed", url=f"http://127.0.0.1:{port}/feed")
    async with open_database(sqlite_url, [closed]) as (settings, database):
        result = await collect_source(database, settings, "Closed")
    assert result.error is not None and result.error.startswith("network error:")


async def test_a_failing_source_does_not_hold_up_the_others(
    server: LocalServer, open_database, sqlite_url: str
) -> None:
    server.serve_slow("/slow", delay=3)
    server.serve_fixture("/good", "ministry.xml", RSS)
    server.serve_fixture("/other", "aggregator.xml", "application/atom+xml")
    sources = [
        source("Slow", "feed", url=server.url("/slow"), timeout=1),
        source("Good", "feed", url=server.url("/good")),
        source("Other", "feed", url=server.url("/other")),
    ]
    finished: list[str] = []
    async with open_database(sqlite_url, sources) as (settings, database):
        results = await collect_all(
            database,
            settings,
            progress=lambda name, result: finished.append(name) if result else None,
        )
        releases = await stored_releases(database)
    by_name = {r.source: r for r in results}
    assert by_name["Slow"].error == "no data for 1s (read timeout)"
    assert by_name["Good"].error is None and by_name["Other"].error is None
    # The slow source finishes last: the others did not wait for it.
    assert finished[-1] == "Slow"
    assert len(releases) == 3  # the aggregator's copy merged into the ministry's release


async def test_per_host_limit_caps_concurrent_requests() -> None:
    server = LocalServer().start()
    active = 0
    peak = 0
    lock = threading.Lock()

    def route(_handler: object) -> Reply:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.2)
        with lock:
            active -= 1
        return Reply(200, b"ok", {"Content-Type": "text/plain"})

    for n in range(6):
        server.routes[f"/p{n}"] = route
    try:
        async with Fetcher(FetchPolicy(per_host=2, retries=0), addresses=LOOPBACK) as fetcher:
            await asyncio.gather(*(fetcher.get(server.url(f"/p{n}")) for n in range(6)))
    finally:
        server.stop()
    assert peak == 2


async def test_unsupported_url_scheme_is_a_clear_error() -> None:
    async with Fetcher(FetchPolicy(retries=0), addresses=LOOPBACK) as fetcher:
        with pytest.raises(FetchError, match="unsupported URL"):
            await fetcher.get("ftp://127.0.0.1/feed")
