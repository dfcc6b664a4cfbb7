"""Releases, sources, dashboard, users, audit and settings pages."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mailer import accounts, audit
from mailer import subscribers as store
from mailer.config import Settings, format_duration, parse_duration
from mailer.context import AppContext
from mailer.models import Release, Source, SourceKind, SourceStatus
from mailer.releases import add_release
from mailer.send import start_digest
from mailer.web.app import create_app
from tests.admin.conftest import ADMIN_PASSWORD, AdminSite, login, post_form, site_settings
from tests.support.clock import Clock


async def test_add_edit_exclude_a_release(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    added = await post_form(
        editor_client,
        "/admin/releases/new",
        "/admin/releases/new",
        {
            "title": "Minister Šimonytė visits Vilnius hospital",
            "body": "The minister opened a new wing.\n\nClose\n\nThe hospital serves the city.",
            "url": "https://gov.example.lt/news/1",
            "published": "2025-03-10T08:30",
        },
    )
    assert added.status_code == 303, added.text
    location = added.headers["location"]
    page = await editor_client.get(location)
    assert "Minister Šimonytė visits Vilnius hospital" in page.text
    assert 'value="health" checked' in page.text  # tagged by keyword

    saved = await post_form(
        editor_client,
        location,
        location,
        {
            "title": "Minister visits hospital",
            "summary": "A new wing opens.",
            "topics": ["economy"],
            "excluded": "1",
        },
    )
    assert saved.status_code == 303
    release_id = int(location.rsplit("/", 1)[1])
    async with site.db.session() as session:
        release = await session.get(Release, release_id)
        assert release is not None
        assert release.title == "Minister visits hospital"
        assert release.summary == "A new wing opens."
        assert release.excluded is True
        assert [t.slug for t in release.topics] == ["economy"]
    listing = await editor_client.get("/admin/releases", params={"show": "excluded"})
    assert "Minister visits hospital" in listing.text
    found = await editor_client.get("/admin/releases", params={"q": "WING"})
    assert "Minister visits hospital" in found.text
    entries, _ = await audit.query(site.db, action="release.edit")
    assert entries[0].details["excluded"] is True

    empty_title = await post_form(editor_client, location, location, {"title": " "})
    assert empty_title.status_code == 422 and "needs a title" in empty_title.text


async def test_bad_release_input_is_shown_on_the_form(editor_client: httpx.AsyncClient) -> None:
    response = await post_form(
        editor_client,
        "/admin/releases/new",
        "/admin/releases/new",
        {"title": "A title", "body": "Text.", "url": "ftp://example.org/x"},
    )
    assert response.status_code == 422
    assert "http://" in response.text and 'value="A title"' in response.text


async def test_add_edit_disable_and_collect_a_source(
    site: AdminSite, admin_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "budget.txt").write_text(
        "Budget adopted\n\nThe parliament adopted the budget and the tax plan.\n", encoding="utf-8"
    )
    bad = await post_form(
        admin_client,
        "/admin/sources/new",
        "/admin/sources/new",
        {"name": "Ministry", "kind": "page", "url": "https://example.org/news"},
    )
    assert bad.status_code == 422 and "link_selector" in bad.text
    added = await post_form(
        admin_client,
        "/admin/sources/new",
        "/admin/sources/new",
        {"name": "Drop", "kind": "folder", "path": str(folder), "interval": "15m"},
    )
    assert added.status_code == 303, added.text
    location = added.headers["location"]
    async with site.db.session() as session:
        source = await session.scalar(select(Source).where(Source.name == "Drop"))
    assert source is not None and source.origin == "admin" and source.interval_seconds == 900

    collected = await post_form(admin_client, location, f"{location}/collect")
    assert collected.status_code == 303
    page = await admin_client.get(location)
    assert "ok" in page.text
    async with site.db.session() as session:
        titles = (await session.scalars(select(Release.title))).all()
    assert titles == ["Budget adopted"]

    await post_form(admin_client, location, f"{location}/enabled", {"enabled": "0"})
    async with site.db.session() as session:
        source = await session.scalar(select(Source).where(Source.name == "Drop"))
    assert source is not None and not source.enabled
    renamed = await post_form(
        admin_client,
        location,
        location,
        {"name": "Drop folder", "kind": "folder", "path": str(folder), "interval": "1h"},
    )
    assert renamed.status_code == 303
    health = await admin_client.get("/admin/sources")
    assert "Drop folder" in health.text


async def _budget(site: AdminSite) -> None:
    await add_release(
        site.db,
        site.settings,
        title="Budget adopted",
        body="The budget.",
        published=site.clock.now(),
        added_by="test",
        now=site.clock.now(),
    )


async def test_dashboard_draws_charts(site: AdminSite, editor_client: httpx.AsyncClient) -> None:
    now = site.clock.now()
    await store.add(site.db, site.settings, "a@example.org", confirmed=True, now=now)
    await store.add(site.db, site.settings, "b@example.org", now=now)
    site.clock.advance(timedelta(minutes=1))
    await _budget(site)
    digest = await start_digest(site.db, site.settings, now=site.clock.now())
    page = await editor_client.get("/admin/")
    assert page.status_code == 200
    for chart in ("chart-status", "chart-signups", "chart-digests"):
        assert f'<svg class="chart" id="{chart}"' in page.text
    assert '<td class="num" data-status="confirmed">1</td>' in page.text
    assert f'href="/admin/digests/{digest.id}"' in page.text
    assert "<title>Send" in page.text and ": open: 1</title>" in page.text
    assert "<script>" not in page.text and "style=" not in page.text  # the CSP allows neither


async def test_dashboard_counts_signups_and_names_failing_sources(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await store.signup(site.db, site.settings, "ona@example.org", now=site.clock.now())
    await store.signup(site.db, site.settings, "jonas@example.org", now=site.clock.now())
    await _budget(site)
    async with site.db.transaction() as session:
        session.add(
            Source(
                name="Ministry feed",
                kind=SourceKind.FEED,
                url="https://ministry.example.org/feed",
                origin="admin",
                status=SourceStatus.FAILING,
            )
        )
    page = (await editor_client.get("/admin/")).text
    assert "2 signups in the last 30 days." in page
    assert '<td class="num" data-status="pending">2</td>' in page
    assert "1 source failing: Ministry feed." in page


async def test_users_and_tokens_pages(site: AdminSite, admin_client: httpx.AsyncClient) -> None:
    created = await post_form(
        admin_client,
        "/admin/users",
        "/admin/users/new",
        {"username": "rasa", "password": "a long enough password", "role": "editor"},
    )
    assert created.status_code == 303
    users = {u.username: u for u in await accounts.list_users(site.db)}
    assert users["rasa"].role is accounts.Role.EDITOR
    token_page = await post_form(
        admin_client, "/admin/users", "/admin/tokens/new", {"name": "cms", "role": "editor"}
    )
    token = token_page.text.split('id="new-token">')[1].split("<")[0]
    assert await accounts.token_identity(site.db, token) is not None
    me = users["alice"]
    refused = await post_form(
        admin_client, "/admin/users", f"/admin/users/{me.id}", {"change": "disable"}
    )
    assert "cannot disable yourself" in (await admin_client.get(refused.headers["location"])).text
    tokens = {t.name: t for t in await accounts.list_tokens(site.db)}
    await post_form(admin_client, "/admin/users", f"/admin/tokens/{tokens['cms'].id}/revoke")
    assert await accounts.token_identity(site.db, token) is None
    log = await admin_client.get("/admin/audit", params={"q": "token"})
    assert "token.create" in log.text and "token.revoke" in log.text
    assert "user:alice" in log.text


async def test_settings_page_hides_secrets(admin_client: httpx.AsyncClient) -> None:
    page = await admin_client.get("/admin/settings")
    assert page.status_code == 200
    assert "test-secret-key-0123456789abcdef" not in page.text
    assert "<code>secret_key</code></td><td>(set)</td>" in page.text
    assert "<code>site.name</code>" in page.text


async def test_huge_ids_are_not_found(admin_client: httpx.AsyncClient) -> None:
    for path in (
        "/admin/releases/99999999999999",
        "/admin/subscribers/4294967296",
        "/admin/digests/2147483648",
    ):
        assert (await admin_client.get(path)).status_code == 404


@pytest.fixture
def written_settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return site_settings(
        tmp_path,
        sqlite_url,
        smtp={"timeout": "30s", "rate_limit": 0, "retry_for": "3d"},
        digest={"max_age": "2000d"},
        signup={"confirm_ttl": 90},
    )


async def test_settings_are_shown_as_config_yaml_writes_them(written_settings: Settings) -> None:
    app = create_app(AppContext(settings=written_settings), run_background=False)
    async with app.router.lifespan_context(app):
        await accounts.create_user(app.state.web.db, "alice", ADMIN_PASSWORD, "admin")
        async with AdminSite(app, written_settings, Clock()).client() as client:
            await login(client, "alice", ADMIN_PASSWORD)
            page = (await client.get("/admin/settings")).text
    rows = dict(re.findall(r"<td><code>([^<]+)</code></td><td>([^<]*)</td>", page))
    assert rows["smtp.timeout"] == "30s"
    assert rows["smtp.retry_for"] == "3d"
    assert rows["smtp.rate_limit"] == "0"
    assert rows["digest.max_age"] == "2000d"
    assert rows["signup.confirm_ttl"] == "90s"
    assert rows["signup.confirmation_interval"] == "10m"
    assert not any(re.match(r"P\d|PT\d", value) for value in rows.values()), rows


def test_durations_are_written_back_the_way_they_are_read() -> None:
    for written in ("30s", "90s", "15m", "6h", "14d", "2000d", "1.5s"):
        assert format_duration(parse_duration(written)) == written
    assert format_duration(parse_duration("1w")) == "7d"
    assert format_duration(parse_duration(3600)) == "1h"


def test_every_table_header_has_a_scope_and_a_name() -> None:
    """Screen readers announce each cell with its header: no header without text,
    and each says whether it heads a column or a row."""
    folder = Path(__file__).resolve().parents[2] / "templates" / "web"
    for template in folder.rglob("*.html"):
        for header in re.findall(r"<th\b[^>]*>.*?</th>", template.read_text(), re.S):
            assert re.search(r'\bscope="(col|row)"', header), (template.name, header)
            assert re.sub(r"<[^>]+>", "", header).strip(), (template.name, header)
