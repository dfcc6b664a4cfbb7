"""Finding 3: a copied admin cookie must die when the session is ended.

The review copied the session cookie, signed out, and replayed it: it still
worked (the cookie was the whole session). The same for "sign out everywhere",
an account switched off and a role change."""

from __future__ import annotations

from datetime import timedelta

import httpx

from mailer import accounts
from tests.admin.conftest import csrf_token
from tests.security.conftest import ADMIN_PASSWORD, EDITOR_PASSWORD, AdminSite, signed_in

SESSION = "mailer_admin_session"


def copy_of(site: AdminSite, client: httpx.AsyncClient) -> httpx.AsyncClient:
    """A second browser holding a stolen copy of ``client``'s session cookie."""
    thief = site.client()
    thief.cookies.set(SESSION, client.cookies[SESSION], path="/admin")
    return thief


async def allowed(client: httpx.AsyncClient, path: str = "/admin/") -> bool:
    response = await client.get(path)
    assert response.status_code in (200, 303, 403), response.status_code
    return response.status_code == 200


async def _users(site: AdminSite) -> dict[str, int]:
    return {u.username: u.id for u in await accounts.list_users(site.db)}


async def test_cookie_replayed_after_sign_out_is_refused(admin: AdminSite) -> None:
    browser = await signed_in(admin, "alice", ADMIN_PASSWORD)
    thief = copy_of(admin, browser)
    assert await allowed(thief)
    page = await browser.get("/admin/")
    out = await browser.post("/admin/logout", data={"csrf_token": csrf_token(page.text)})
    assert out.status_code == 303
    assert not await allowed(thief)


async def test_sign_out_everywhere_ends_other_browsers(admin: AdminSite) -> None:
    laptop = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    phone = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    other_user = await signed_in(admin, "alice", ADMIN_PASSWORD)
    thief = copy_of(admin, laptop)
    page = await phone.get("/admin/")
    assert "Sign out everywhere" in page.text
    out = await phone.post("/admin/logout-everywhere", data={"csrf_token": csrf_token(page.text)})
    assert out.status_code == 303
    for client in (laptop, phone, thief):
        assert not await allowed(client)
    assert await allowed(other_user)


async def test_cookie_of_a_disabled_account_is_refused(admin: AdminSite) -> None:
    browser = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    thief = copy_of(admin, browser)
    await accounts.update_user(admin.db, (await _users(admin))["eddie"], active=False)
    await accounts.update_user(admin.db, (await _users(admin))["eddie"], active=True)
    # Switching back on does not revive the old sessions.
    assert not await allowed(browser) and not await allowed(thief)


async def test_cookie_from_before_a_role_change_is_refused(admin: AdminSite) -> None:
    browser = await signed_in(admin, "alice", ADMIN_PASSWORD)
    thief = copy_of(admin, browser)
    assert await allowed(thief, "/admin/subscribers")
    await accounts.update_user(admin.db, (await _users(admin))["alice"], role="editor")
    assert not await allowed(thief, "/admin/")
    # A new sign-in works, with the new role.
    fresh = await signed_in(admin, "alice", ADMIN_PASSWORD)
    assert (await fresh.get("/admin/subscribers")).status_code == 403


async def test_sessions_keep_their_idle_and_absolute_limits(admin: AdminSite) -> None:
    config = admin.settings.admin
    idle = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    admin.clock.advance(config.session_idle + timedelta(seconds=1))
    assert not await allowed(idle)

    busy = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    step = config.session_idle / 2
    elapsed = timedelta()
    while elapsed + step < config.session_lifetime:
        admin.clock.advance(step)
        elapsed += step
        assert await allowed(busy)
    admin.clock.advance(step)
    assert not await allowed(busy)
