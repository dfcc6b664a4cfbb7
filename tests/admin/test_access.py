"""Every admin page and API route refuses anonymous and wrong-role requests.

The routes are read from the app itself, so a route added later is checked too:
it must declare the role it needs (the ``requires``/``api_route`` guards do) and
must behave accordingly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
from starlette.routing import BaseRoute, Mount, Route

from mailer import accounts
from mailer.accounts import Role
from tests.admin.conftest import EDITOR_PASSWORD, AdminSite, csrf_token, login

# Reachable without signing in, on purpose.
PUBLIC = {
    ("/admin", "GET"),  # a redirect to /admin/
    ("/admin/login", "GET"),
    ("/admin/login", "POST"),
    ("/api/openapi.json", "GET"),
}
# Personal data, accounts and settings: never for editors.
ADMIN_ONLY_PREFIXES = (
    "/admin/subscribers",
    "/admin/users",
    "/admin/tokens",
    "/admin/settings",
    "/admin/audit",
    "/admin/sources",
    "/api/subscribers",
)
_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


def walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, Route]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from walk(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield prefix + route.path, method, route


def concrete(path: str) -> str:
    """A request path for a route pattern: ids 1, other parameters a plausible word."""
    return _PARAM.sub(lambda m: "1" if m.group(2) == "int" else "pause", path)


def guarded_routes(site: AdminSite) -> list[tuple[str, str, Route]]:
    found = [
        (path, method, route)
        for path, method, route in walk(list(site.app.routes))
        if path.startswith(("/admin", "/api")) and (path, method) not in PUBLIC
    ]
    assert len(found) > 40, "the route walk found too few routes"
    return found


async def test_every_route_declares_a_role(site: AdminSite) -> None:
    for path, method, route in guarded_routes(site):
        role = getattr(route.endpoint, "required_role", None)
        assert role in (Role.ADMIN, Role.EDITOR), f"{method} {path} declares no role"
        if path.startswith(ADMIN_ONLY_PREFIXES):
            assert role is Role.ADMIN, f"{method} {path} must be admin-only"


async def test_anonymous_requests_are_refused(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    # A CSRF token from a real page, so that only the missing session can explain a refusal.
    token = csrf_token((await anonymous.get("/admin/login")).text)
    for path, method, _ in guarded_routes(site):
        response = await anonymous.request(
            method, concrete(path), data={"csrf_token": token} if method == "POST" else None
        )
        if path.startswith("/api"):
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.json()["error"]
        else:
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/admin/login?next="), (method, path)


async def test_editor_is_refused_admin_pages(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    token = csrf_token((await editor_client.get("/admin/")).text)
    checked = 0
    for path, method, route in guarded_routes(site):
        if path.startswith("/api") or route.endpoint.required_role is not Role.ADMIN:
            continue
        response = await editor_client.request(
            method, concrete(path), data={"csrf_token": token} if method == "POST" else None
        )
        assert response.status_code == 403, (method, path, response.status_code)
        checked += 1
    assert checked > 15
    # Still signed in: the refusals were about the role, not the session.
    assert (await editor_client.get("/admin/releases")).status_code == 200


async def test_editor_may_use_editor_pages(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    for path, method, route in guarded_routes(site):
        if (
            path.startswith("/api")
            or method != "GET"
            or route.endpoint.required_role is not Role.EDITOR
        ):
            continue
        response = await editor_client.get(concrete(path))
        # 404 for /…/1 of an empty database is fine; what matters is no refusal.
        assert response.status_code in (200, 404), (path, response.status_code)


async def test_api_refuses_wrong_role_and_bad_tokens(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    editor_token, _ = await accounts.create_token(site.db, "editor-bot", "editor")
    revoked_token, _ = await accounts.create_token(site.db, "old-bot", "admin")
    await accounts.revoke_token(site.db, "old-bot")
    checked = 0
    for path, method, route in guarded_routes(site):
        if not path.startswith("/api"):
            continue
        for bad in ("mlr_not-a-real-token", revoked_token, "Basic abc"):
            header = bad if bad.startswith("Basic") else f"Bearer {bad}"
            response = await anonymous.request(
                method, concrete(path), headers={"authorization": header}
            )
            assert response.status_code == 401, (method, path, bad, response.status_code)
        if route.endpoint.required_role is Role.ADMIN:
            response = await anonymous.request(
                method,
                concrete(path),
                headers={"authorization": f"Bearer {editor_token}"},
                json={},
            )
            assert response.status_code == 403, (method, path, response.status_code)
            assert "error" in response.json()
            checked += 1
    assert checked >= 3


async def test_disabled_account_loses_its_session(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    assert (await editor_client.get("/admin/")).status_code == 200
    users = {u.username: u for u in await accounts.list_users(site.db)}
    await accounts.update_user(site.db, users["eddie"].id, active=False)
    response = await editor_client.get("/admin/")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/admin/login")


async def test_role_change_ends_the_session_and_applies_at_the_next_sign_in(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    assert (await editor_client.get("/admin/subscribers")).status_code == 403
    users = {u.username: u for u in await accounts.list_users(site.db)}
    await accounts.update_user(site.db, users["eddie"].id, role="admin")
    assert (await editor_client.get("/admin/subscribers")).status_code == 303
    assert (await login(editor_client, "eddie", EDITOR_PASSWORD)).status_code == 303
    assert (await editor_client.get("/admin/subscribers")).status_code == 200


async def test_admin_error_pages_link_the_application_root(
    admin_client: httpx.AsyncClient,
) -> None:
    """A page rendered inside the /admin mount still loads /static and /privacy."""
    response = await admin_client.get("/admin/no-such-page")
    assert response.status_code == 404
    assert 'href="/static/' in response.text
    assert "/admin/static/" not in response.text and "/admin/privacy" not in response.text
