"""Signing in: cookies, CSRF, session expiry, lockout, rate limit, redirects."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mailer import accounts, audit
from mailer.context import AppContext
from mailer.models import AdminSession, AdminUser
from mailer.web.admin.auth import SESSION_COOKIE
from mailer.web.app import create_app
from tests.admin.conftest import (
    ADMIN_PASSWORD,
    EDITOR_PASSWORD,
    AdminSite,
    Clock,
    csrf_token,
    login,
    site_settings,
)


async def test_login_sets_a_strict_session_cookie(anonymous: httpx.AsyncClient) -> None:
    response = await login(anonymous, "alice", ADMIN_PASSWORD)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/"
    cookie = next(
        v
        for k, v in response.headers.multi_items()
        if k == "set-cookie" and v.startswith(SESSION_COOKIE)
    )
    lowered = cookie.lower()
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "path=/admin" in lowered
    assert "secure" not in lowered  # the site runs on http:// in this test
    dashboard = await anonymous.get("/admin/")
    assert dashboard.status_code == 200
    assert "alice" in dashboard.text


async def test_cookie_is_secure_when_the_site_is_https(
    tmp_path: Path, sqlite_url: str, clock: Clock
) -> None:
    settings = site_settings(tmp_path, sqlite_url, site={"base_url": "https://press.example.org"})
    app = create_app(
        AppContext(settings=settings),
        run_background=False,
        now=clock.now,
        monotonic=clock.monotonic,
    )
    async with app.router.lifespan_context(app):
        await accounts.create_user(app.state.web.db, "alice", ADMIN_PASSWORD, "admin")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://press.example.org"
        ) as c:
            response = await login(c, "alice", ADMIN_PASSWORD)
    cookies = [v.lower() for k, v in response.headers.multi_items() if k == "set-cookie"]
    session = next(c for c in cookies if c.startswith(SESSION_COOKIE))
    assert "secure" in session and "httponly" in session


async def test_wrong_password_is_refused_and_audited(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    response = await login(anonymous, "alice", "not the password")
    assert response.status_code == 401
    assert "wrong" in response.text
    assert (await anonymous.get("/admin/")).status_code == 303
    entries, _ = await audit.query(site.db, action="login.failed")
    assert [e.target_id for e in entries] == ["alice"]


async def test_a_sign_in_starts_one_session_and_a_refusal_none(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    anonymous.headers["user-agent"] = "Newsroom browser"
    refused = await login(anonymous, "alice", "not the password")
    assert not [
        v for k, v in refused.headers.multi_items() if k == "set-cookie" and SESSION_COOKIE in v
    ]
    async with site.db.session() as session:
        assert (await session.scalars(select(AdminSession))).all() == []
    signed_in = await login(anonymous, "alice", ADMIN_PASSWORD)
    assert signed_in.status_code == 303
    assert (await anonymous.get("/admin/")).status_code == 200
    async with site.db.session() as session:
        [started] = (await session.scalars(select(AdminSession))).all()
    assert started.user_agent == "Newsroom browser"
    entries, _ = await audit.query(site.db, action="login")
    assert [e.target_id for e in entries] == ["alice"]


async def test_unknown_user_gets_the_same_answer(anonymous: httpx.AsyncClient) -> None:
    unknown = await login(anonymous, "mallory", "whatever password")
    wrong = await login(anonymous, "alice", "whatever password")
    assert unknown.status_code == wrong.status_code == 401
    assert "The user name or password is wrong." in unknown.text
    assert "The user name or password is wrong." in wrong.text


async def test_login_without_csrf_token_is_refused(anonymous: httpx.AsyncClient) -> None:
    await anonymous.get("/admin/login")
    response = await anonymous.post(
        "/admin/login", data={"username": "alice", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 403
    assert (await anonymous.get("/admin/")).status_code == 303


async def test_forms_without_a_valid_csrf_token_change_nothing(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    for data in ({}, {"csrf_token": "forged"}):
        response = await admin_client.post(
            "/admin/users/new",
            data={
                "username": "mallory",
                "password": "long enough password",
                "role": "admin",
                **data,
            },
        )
        assert response.status_code == 403
    assert "mallory" not in {u.username for u in await accounts.list_users(site.db)}


async def test_csrf_token_of_another_browser_is_refused(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    async with site.client() as other:
        foreign = csrf_token((await other.get("/admin/login")).text)
    response = await admin_client.post(
        "/admin/users/new",
        data={
            "username": "mallory",
            "password": "long enough password",
            "role": "admin",
            "csrf_token": foreign,
        },
    )
    assert response.status_code == 403


async def test_session_expires_after_its_lifetime(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    lifetime = site.settings.admin.session_lifetime
    # Busy all along (the idle limit is a separate test): used every hour.
    used = timedelta()
    while used + timedelta(hours=1) < lifetime:
        site.clock.advance(timedelta(hours=1))
        used += timedelta(hours=1)
        assert (await admin_client.get("/admin/")).status_code == 200
    site.clock.advance(lifetime - used - timedelta(minutes=1))
    assert (await admin_client.get("/admin/")).status_code == 200
    site.clock.advance(timedelta(minutes=2))
    response = await admin_client.get("/admin/releases?q=x")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=%2Fadmin%2Freleases%3Fq%3Dx"


async def test_logout_ends_the_session(site: AdminSite, admin_client: httpx.AsyncClient) -> None:
    page = await admin_client.get("/admin/")
    response = await admin_client.post("/admin/logout", data={"csrf_token": csrf_token(page.text)})
    assert response.status_code == 303
    assert (await admin_client.get("/admin/")).status_code == 303
    entries, _ = await audit.query(site.db, action="logout")
    assert entries[0].actor == "user:alice"


async def test_new_password_ends_earlier_sessions(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    users = {u.username: u for u in await accounts.list_users(site.db)}
    await accounts.update_user(site.db, users["alice"].id, password="a brand new password")
    assert (await admin_client.get("/admin/")).status_code == 303
    async with site.client() as fresh:
        assert (await login(fresh, "alice", "a brand new password")).status_code == 303


async def test_lockout_after_repeated_failures(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    threshold = site.settings.admin.lockout_threshold
    for _ in range(threshold - 1):
        assert (await login(anonymous, "eddie", "wrong guess")).status_code == 401
    locking = await login(anonymous, "eddie", "wrong guess")
    assert locking.status_code == 401
    assert "locked" in locking.text
    # The right password does not help while the lock lasts.
    still = await login(anonymous, "eddie", EDITOR_PASSWORD)
    assert still.status_code == 401 and "locked" in still.text
    entries, _ = await audit.query(site.db, action="login.lockout")
    assert len(entries) == 1
    # Other accounts are not affected.
    async with site.client() as other:
        assert (await login(other, "alice", ADMIN_PASSWORD)).status_code == 303
    site.clock.advance(site.settings.admin.lockout_duration + timedelta(seconds=1))
    assert (await login(anonymous, "eddie", EDITOR_PASSWORD)).status_code == 303


async def test_admin_can_unlock_a_locked_account(
    site: AdminSite, anonymous: httpx.AsyncClient, admin_client: httpx.AsyncClient
) -> None:
    for _ in range(site.settings.admin.lockout_threshold):
        await login(anonymous, "eddie", "wrong guess")
    async with site.db.session() as session:
        eddie = await session.scalar(select(AdminUser).where(AdminUser.username == "eddie"))
    assert eddie is not None and eddie.locked_until is not None
    page = await admin_client.get("/admin/users")
    assert "locked until" in page.text
    response = await admin_client.post(
        f"/admin/users/{eddie.id}", data={"change": "unlock", "csrf_token": csrf_token(page.text)}
    )
    assert response.status_code == 303
    assert (await login(anonymous, "eddie", EDITOR_PASSWORD)).status_code == 303


async def test_login_rate_limit_per_address(site: AdminSite, anonymous: httpx.AsyncClient) -> None:
    limit = site.settings.admin.login_rate_limit
    token = csrf_token((await anonymous.get("/admin/login")).text)
    for number in range(limit):
        # Different unknown names: the limit is per client address, not per account.
        response = await anonymous.post(
            "/admin/login",
            data={"username": f"guess{number}", "password": "x", "csrf_token": token},
        )
        assert response.status_code == 401
    blocked = await anonymous.post(
        "/admin/login", data={"username": "alice", "password": ADMIN_PASSWORD, "csrf_token": token}
    )
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    site.clock.advance(site.settings.admin.login_rate_window)
    assert (await login(anonymous, "alice", ADMIN_PASSWORD)).status_code == 303


@pytest.mark.parametrize(
    ("wanted", "landing"),
    [
        ("/admin/releases?q=budget", "/admin/releases?q=budget"),
        ("https://evil.example/admin/", "/admin/"),
        ("//evil.example/admin/", "/admin/"),
        ("/elsewhere", "/admin/"),
    ],
)
async def test_login_returns_to_the_page_asked_for_but_never_elsewhere(
    anonymous: httpx.AsyncClient, wanted: str, landing: str
) -> None:
    page = await anonymous.get("/admin/login", params={"next": wanted})
    response = await anonymous.post(
        "/admin/login",
        data={
            "username": "alice",
            "password": ADMIN_PASSWORD,
            "next": wanted,
            "csrf_token": csrf_token(page.text),
        },
    )
    assert response.status_code == 303
    assert response.headers["location"] == landing


async def test_editor_navigation_hides_admin_areas(editor_client: httpx.AsyncClient) -> None:
    page = (await editor_client.get("/admin/")).text
    assert 'href="/admin/digests"' in page and 'href="/admin/releases"' in page
    for hidden in ("/admin/subscribers", "/admin/users", "/admin/settings", "/admin/audit"):
        assert f'href="{hidden}"' not in page
