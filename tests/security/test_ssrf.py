"""Finding 2: the collector must not reach the internal network or the local disk.

The review pointed feed and page sources at loopback in every spelling it knew, at
a public name that resolves to loopback, at a public host that redirects inward,
and folder sources at /etc and ../../..; the answers became releases or leaked into
error messages. Here a real HTTP server on 127.0.0.1 plays the internal service:
a refused fetch never reaches it at all."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from mailer.collect import collect_source
from mailer.collect.fetch import Fetcher, FetchError, FetchPolicy
from mailer.collect.guard import AddressPolicy, internal_reason
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.models import Release, Source
from tests.collect.server import LocalServer, Reply
from tests.conftest import make_settings

SECRET = b"mailer_internal_secret_metric 42\n"
RSS = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>Internal</title>'
    b"<item><title>Internal only</title><link>http://intranet/1</link>"
    b"<guid>i-1</guid><description>secret body</description></item></channel></rss>"
)


@pytest.fixture
def internal() -> Any:
    server = LocalServer().start()
    server.serve("/metrics", SECRET, "text/plain")
    server.serve("/feed", RSS)
    yield server
    server.stop()


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the test resolves itself (the rest goes to the real resolver)."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in answers:
            return [
                (
                    socket.AF_INET6 if ":" in address else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (address, port),
                )
                for address in answers[name]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def forms_of_loopback(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/metrics",
        f"http://127.1:{port}/metrics",
        f"http://2130706433:{port}/metrics",  # decimal
        f"http://0177.0.0.1:{port}/metrics",  # octal
        f"http://017700000001:{port}/metrics",  # octal, one number
        f"http://0x7f.0.0.1:{port}/metrics",  # hex
        f"http://0x7f000001:{port}/metrics",  # hex, one number
        f"http://0:{port}/metrics",  # unspecified: the local host on Linux
        f"http://0.0.0.0:{port}/metrics",
        f"http://localhost:{port}/metrics",  # a name resolving to loopback
        f"http://[::1]:{port}/metrics",
        f"http://[::ffff:127.0.0.1]:{port}/metrics",  # IPv4-mapped
        f"http://[::ffff:7f00:1]:{port}/metrics",  # mapped, hex
        f"http://[::127.0.0.1]:{port}/metrics",  # IPv4-compatible (deprecated)
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/metrics",
        f"http://[64:ff9b::127.0.0.1]:{port}/metrics",  # NAT64
        f"http://[2002:7f00:1::]:{port}/metrics",  # 6to4 of 127.0.0.1
        f"http://[::]:{port}/metrics",
    ]


OTHER_INTERNAL = [
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://224.0.0.1/",  # multicast
    "http://255.255.255.255/",
    "http://[fe80::1]/",  # link-local
    "http://[fc00::1]/",  # unique-local
    "http://[fd12:3456::1]/",
    "http://[ff02::1]/",  # multicast
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
]


async def fetch(url: str, policy: AddressPolicy | None = None) -> str:
    async with Fetcher(FetchPolicy(retries=0, connect_timeout=2), addresses=policy) as fetcher:
        try:
            result = await fetcher.get(url)
        except FetchError as exc:
            return str(exc)
    raise AssertionError(f"{url} was fetched: {result.content[:60]!r}")


async def test_every_spelling_of_loopback_is_refused_before_connecting(
    internal: LocalServer,
) -> None:
    port = internal.server_address[1]
    refused = {}
    for url in forms_of_loopback(port):
        refused[url] = await fetch(url)
    for url, message in refused.items():
        # httpx already rejects a few spellings as malformed; the rest meet the guard.
        if message.startswith("invalid URL"):
            continue
        assert "refused to connect" in message, (url, message)
        assert "collector.allow_private_hosts" in message
        assert "secret" not in message
    guarded = [url for url, message in refused.items() if "refused" in message]
    assert len(guarded) >= len(refused) - 3, refused
    assert internal.hits("/metrics") == []


@pytest.mark.parametrize("url", OTHER_INTERNAL)
async def test_private_link_local_and_multicast_targets_are_refused(url: str) -> None:
    message = await fetch(url)
    assert "refused to connect" in message, message


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "151.101.1.69"],
)
def test_public_addresses_pass_the_check(address: str) -> None:
    import ipaddress

    assert internal_reason(ipaddress.ip_address(address)) is None


async def test_public_name_resolving_to_loopback_is_refused(
    internal: LocalServer, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["press.example.com"] = ["127.0.0.1"]
    message = await fetch(f"http://press.example.com:{internal.server_address[1]}/metrics")
    assert "press.example.com (127.0.0.1)" in message and "loopback" in message
    assert internal.hits("/metrics") == []


async def test_name_answering_public_and_internal_addresses_is_refused(
    internal: LocalServer, fake_dns: dict[str, list[str]]
) -> None:
    """DNS rebinding: one answer public, one internal. The connect uses an address
    that was checked, never the name again, so only refusing the host is safe."""
    fake_dns["rebind.example.com"] = ["93.184.216.34", "127.0.0.1"]
    message = await fetch(f"http://rebind.example.com:{internal.server_address[1]}/metrics")
    assert "refused" in message and "127.0.0.1" in message
    assert internal.hits("/metrics") == []


async def test_redirect_from_an_allowed_host_to_an_internal_one_is_refused(
    internal: LocalServer, fake_dns: dict[str, list[str]]
) -> None:
    """The public host is played by a second server that the allow-list admits by
    name; it redirects to the internal one, which must not be reached."""
    outside = LocalServer().start()
    try:
        port = internal.server_address[1]
        fake_dns["public.example.com"] = ["127.0.0.1"]
        target = f"http://127.0.0.1:{port}/metrics"
        outside.routes["/feed"] = lambda _h: Reply(302, b"", {"Location": target})
        policy = AddressPolicy.from_entries(["public.example.com"])
        url = f"http://public.example.com:{outside.server_address[1]}/feed"
        message = await fetch(url, policy)
        assert "refused to connect to 127.0.0.1" in message
        assert outside.hits("/feed") and internal.hits("/metrics") == []
    finally:
        outside.stop()


async def test_allow_list_admits_a_configured_intranet_network(internal: LocalServer) -> None:
    policy = AddressPolicy.from_entries(["127.0.0.0/8"])
    async with Fetcher(FetchPolicy(retries=0), addresses=policy) as fetcher:
        result = await fetcher.get(internal.url("/metrics"))
    assert result.content == SECRET


# --- through the collector, as an editor would set it up ---------------------------------


async def _source_run(
    tmp_path: Path, database_url: str, source: dict[str, Any], **sections: Any
) -> tuple[Any, Source, int]:
    settings: Settings = make_settings(tmp_path, database_url, sources=[source], **sections)
    async with AppContext(settings=settings).database() as database:
        result = await collect_source(database, settings, source["name"])
        row, releases = await _state(database, source["name"])
    return result, row, releases


async def _state(database: Database, name: str) -> tuple[Source, int]:
    from sqlalchemy import func, select

    async with database.session() as session:
        row = await session.scalar(select(Source).where(Source.name == name))
        count = await session.scalar(select(func.count(Release.id)))
    assert row is not None
    return row, int(count or 0)


async def test_feed_source_pointed_at_the_apps_own_metrics_stores_and_shows_nothing(
    tmp_path: Path, database_url: str, internal: LocalServer
) -> None:
    source = {"name": "Sneaky", "kind": "feed", "url": internal.url("/feed"), "retries": 0}
    result, row, releases = await _source_run(tmp_path, database_url, source)
    assert releases == 0 and result.new == 0
    assert row.last_error and "refused to connect" in row.last_error
    assert internal.hits("/feed") == []


async def test_not_a_feed_error_names_the_failure_never_the_body(
    tmp_path: Path, database_url: str, internal: LocalServer
) -> None:
    """Even from an allowed host, the error shown in the admin must not quote the
    answer: pointing a source at /metrics showed the metrics."""
    source = {"name": "Metrics", "kind": "feed", "url": internal.url("/metrics"), "retries": 0}
    result, row, _ = await _source_run(
        tmp_path, database_url, source, collector={"allow_private_hosts": ["127.0.0.1"]}
    )
    assert row.last_error and "not a feed" in row.last_error
    assert "mailer_internal_secret_metric" not in row.last_error
    assert "mailer_internal_secret_metric" not in (result.error or "")


async def test_page_source_does_not_follow_links_into_the_intranet(
    tmp_path: Path, database_url: str, internal: LocalServer, fake_dns: dict[str, list[str]]
) -> None:
    outside = LocalServer().start()
    try:
        fake_dns["news.example.com"] = ["127.0.0.1"]
        secret_page = internal.url("/metrics")
        outside.serve(
            "/news",
            f'<html><body><ul><li><a class="r" href="{secret_page}">Release</a></li></ul>'
            "</body></html>",
            "text/html",
        )
        listing = f"http://news.example.com:{outside.server_address[1]}/news"
        source = {
            "name": "Pages",
            "kind": "page",
            "url": listing,
            "link_selector": "a.r",
            "retries": 0,
        }
        result, _, releases = await _source_run(
            tmp_path,
            database_url,
            source,
            collector={"allow_private_hosts": ["news.example.com"]},
        )
        assert outside.hits("/news")
        assert internal.hits("/metrics") == []
        assert releases == 0
        assert any("refused to connect" in error for error in result.entry_errors), result
    finally:
        outside.stop()


OUTSIDE = ["/etc", "../../../../../../etc", "/proc/self"]


@pytest.mark.parametrize("path", OUTSIDE)
def test_folder_source_outside_the_roots_in_the_config_stops_the_start(
    tmp_path: Path, path: str
) -> None:
    from mailer.config import ConfigError

    with pytest.raises(ConfigError, match=r"sources\[0\]\.path: .* is outside the folders"):
        make_settings(
            tmp_path, "sqlite:///x.db", sources=[{"name": "D", "kind": "folder", "path": path}]
        )


@pytest.mark.parametrize("path", OUTSIDE)
async def test_folder_source_outside_the_roots_from_the_admin_reads_nothing(
    tmp_path: Path, database_url: str, path: str
) -> None:
    """An editor's form is refused; a row that got there anyway (edited in the
    database, or stored before this check existed) is refused when it runs."""
    from mailer.sources import SourceInputError, add_source, source_config

    settings: Settings = make_settings(tmp_path, database_url)
    async with AppContext(settings=settings).database() as database:
        config = source_config({"name": "Disk", "kind": "folder", "path": path})
        with pytest.raises(SourceInputError, match="outside the folders sources may read"):
            await add_source(database, settings, config, actor="cli")
        async with database.transaction() as session:
            session.add(Source(name="Disk", kind="folder", path=path, origin="admin"))
        result = await collect_source(database, settings, "Disk")
        row, releases = await _state(database, "Disk")
    assert releases == 0 and result.new == 0
    assert row.last_error and "outside the folders sources may read" in row.last_error


async def test_symlink_inside_a_drop_folder_does_not_lead_out(
    tmp_path: Path, database_url: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "release.txt").write_text("Budget approved\n\nThe budget was approved today.")
    (drop / "passwd.txt").symlink_to("/etc/passwd")
    source = {"name": "Drop", "kind": "folder", "path": str(drop)}
    result, _, releases = await _source_run(tmp_path, database_url, source)
    assert releases == 1
    assert any("passwd.txt" in error and "outside" in error for error in result.entry_errors)
