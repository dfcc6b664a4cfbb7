"""Guarantee: every admin-only action refuses an editor and works for an admin.

Personal data (subscribers, their export and import), accounts, API tokens,
settings, the audit log and sources are for administrators only. The role each
action needs is written out here, not read from the route, so that a route whose
declared role is weakened fails here by what it does: an editor's request is
answered 403 and changes nothing, the same request from an admin does its work.
A new admin-only route has to be added to the table (the last test checks that).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from mailer import accounts, audit
from mailer.accounts import Role
from mailer.config import Settings
from mailer.models import AuditEntry, Source, Subscriber, SubscriberStatus
from mailer.sources import add_source, source_config
from mailer.subscribers import add
from tests.admin.conftest import ADMIN_PASSWORD, AdminSite, csrf_token, login, site_settings
from tests.admin.test_access import guarded_routes

READER = "ona.reader@example.org"
NEW_READER = "new.reader@example.org"


@pytest.fixture
def admin_settings(tmp_path: Path, database_url: str) -> Settings:
    """The admin site on SQLite and on PostgreSQL."""
    return site_settings(tmp_path, database_url)


@dataclass
class World:
    """What the actions act on, created fresh for each test."""

    site: AdminSite
    folder: Path
    ids: dict[str, int] = field(default_factory=dict)

    async def subscriber(self, address: str) -> Subscriber | None:
        async with self.site.db.session() as session:
            return await session.scalar(select(Subscriber).where(Subscriber.email == address))

    async def source(self, name: str) -> Source | None:
        async with self.site.db.session() as session:
            return await session.scalar(select(Source).where(Source.name == name))

    async def audited(self, action: str) -> bool:
        async with self.site.db.session() as session:
            found = await session.scalar(select(AuditEntry.id).where(AuditEntry.action == action))
        return found is not None


@pytest.fixture
async def world(site: AdminSite, tmp_path: Path) -> World:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "budget.txt").write_text(
        "Budget approved\n\nThe Government approved the draft budget for next year today.\n",
        encoding="utf-8",
    )
    reader = await add(site.db, site.settings, READER, name="Ona Reader", confirmed=True)
    source = await add_source(
        site.db,
        site.settings,
        source_config({"name": "Drop folder", "kind": "folder", "path": str(folder)}),
        actor="alice",
    )
    bob = await accounts.create_user(site.db, "bob", "bob's password 1", "editor")
    _, bot = await accounts.create_token(site.db, "old-bot", "editor")
    await audit.record(site.db, "alice", "setup.marker", "test", "world")
    return World(
        site,
        folder,
        {"subscriber": reader.subscriber.id, "source": source.id, "user": bob.id, "token": bot.id},
    )


# --- the actions ---------------------------------------------------------------------------

Probe = Callable[[World], Awaitable[bool]]


async def _nothing_to_check(_world: World) -> bool:
    return True


@dataclass(frozen=True)
class Action:
    """One admin-only request: what it sends and how to see that it did its work.

    For a page (GET), ``shows`` is text only the page's content has; for a change
    (POST), ``done`` tells whether the change happened."""

    method: str
    path: str
    role: Role
    form: dict[str, str] = field(default_factory=dict)
    shows: str | None = None
    done: Probe = _nothing_to_check
    upload: tuple[str, bytes] | None = None

    def url(self, world: World) -> str:
        return self.path.format(**world.ids)


async def _new_reader_added(world: World) -> bool:
    return await world.subscriber(NEW_READER) is not None


async def _reader_unsubscribed(world: World) -> bool:
    reader = await world.subscriber(READER)
    return reader is not None and reader.status is SubscriberStatus.UNSUBSCRIBED


async def _reader_erased(world: World) -> bool:
    return await world.subscriber(READER) is None


async def _upload_kept(world: World) -> bool:
    return any((world.site.settings.data_path / "imports").glob("*.csv"))


async def _carol_created(world: World) -> bool:
    return any(u.username == "carol" for u in await accounts.list_users(world.site.db))


async def _bob_disabled(world: World) -> bool:
    bob = await accounts.get_user(world.site.db, world.ids["user"])
    return bob is not None and not bob.active


async def _token_created(world: World) -> bool:
    return any(t.name == "new-bot" for t in await accounts.list_tokens(world.site.db))


async def _token_revoked(world: World) -> bool:
    tokens = {t.name: t for t in await accounts.list_tokens(world.site.db)}
    return tokens["old-bot"].revoked


async def _source_added(world: World) -> bool:
    return await world.source("Second drop") is not None


async def _source_renamed(world: World) -> bool:
    return await world.source("Renamed drop") is not None


async def _source_disabled(world: World) -> bool:
    source = await world.source("Drop folder")
    return source is not None and not source.enabled


async def _collection_started(world: World) -> bool:
    return await world.audited("source.collect")


def _folder_source(name: str, interval: str) -> dict[str, str]:
    # The path is filled in per test (see _form).
    return {"name": name, "kind": "folder", "path": "{folder}", "interval": interval}


ADMIN = Role.ADMIN
PAGE_ACTIONS = [
    Action("GET", "/admin/subscribers", ADMIN, shows=READER),
    Action("GET", "/admin/subscribers/new", ADMIN, shows='name="email"'),
    Action("POST", "/admin/subscribers/new", ADMIN,
           form={"email": NEW_READER, "confirmed": "1"}, done=_new_reader_added),
    Action("GET", "/admin/subscribers/export.csv", ADMIN, shows=READER),
    Action("GET", "/admin/subscribers/import", ADMIN, shows='type="file"'),
    Action("POST", "/admin/subscribers/import", ADMIN, form={"status": "confirmed"},
           upload=("list.csv", f"email\n{NEW_READER}\n".encode()), done=_upload_kept),
    Action("POST", "/admin/subscribers/import/confirm", ADMIN,
           form={"token": "{import_token}", "status": "confirmed", "filename": "list.csv"},
           done=_new_reader_added),
    Action("GET", "/admin/subscribers/{subscriber}", ADMIN, shows=READER),
    Action("POST", "/admin/subscribers/{subscriber}/unsubscribe", ADMIN,
           done=_reader_unsubscribed),
    Action("POST", "/admin/subscribers/{subscriber}/erase", ADMIN, form={"confirm": "erase"},
           done=_reader_erased),
    Action("GET", "/admin/audit", ADMIN, shows="setup.marker"),
    Action("GET", "/admin/users", ADMIN, shows="bob"),
    Action("POST", "/admin/users/new", ADMIN,
           form={"username": "carol", "password": "carol's password 1", "role": "editor"},
           done=_carol_created),
    Action("POST", "/admin/users/{user}", ADMIN, form={"change": "disable"},
           done=_bob_disabled),
    Action("POST", "/admin/tokens/new", ADMIN, form={"name": "new-bot", "role": "editor"},
           done=_token_created),
    Action("POST", "/admin/tokens/{token}/revoke", ADMIN, done=_token_revoked),
    Action("GET", "/admin/settings", ADMIN, shows="database.url"),
    Action("GET", "/admin/sources", ADMIN, shows="Drop folder"),
    Action("GET", "/admin/sources/new", ADMIN, shows='name="path"'),
    Action("POST", "/admin/sources/new", ADMIN, form=_folder_source("Second drop", "15m"),
           done=_source_added),
    Action("GET", "/admin/sources/{source}", ADMIN, shows="{folder}"),
    Action("POST", "/admin/sources/{source}", ADMIN, form=_folder_source("Renamed drop", "1h"),
           done=_source_renamed),
    Action("POST", "/admin/sources/{source}/enabled", ADMIN, form={"enabled": "0"},
           done=_source_disabled),
    Action("POST", "/admin/sources/{source}/collect", ADMIN, done=_collection_started),
]  # fmt: skip


def _ids(actions: list[Action]) -> list[Any]:
    return [pytest.param(a, id=f"{a.method} {a.path}") for a in actions]


async def _import_token(world: World) -> str:
    """An upload previewed by an administrator, waiting for its confirmation."""
    async with world.site.client() as client:
        await login(client, "alice", ADMIN_PASSWORD)
        page = await client.get("/admin/subscribers/import")
        preview = await client.post(
            "/admin/subscribers/import",
            data={"status": "confirmed", "csrf_token": csrf_token(page.text)},
            files={"file": ("list.csv", f"email\n{NEW_READER}\n".encode(), "text/csv")},
        )
    match = re.search(r'name="token" value="([^"]+)"', preview.text)
    assert match, preview.text
    return match.group(1)


async def _request(
    client: httpx.AsyncClient, action: Action, world: World, values: dict[str, str]
) -> httpx.Response:
    url = action.url(world)
    if action.method == "GET":
        return await client.get(url)
    # A real token of this session: only the role can explain a refusal.
    token = csrf_token((await client.get("/admin/")).text)
    data = {key: value.format(**values) for key, value in action.form.items()}
    files = {"file": (*action.upload, "text/csv")} if action.upload else None
    return await client.post(url, data={**data, "csrf_token": token}, files=files)


@pytest.mark.parametrize("action", _ids(PAGE_ACTIONS))
async def test_admin_only_page_refuses_an_editor_and_serves_an_admin(
    world: World,
    action: Action,
    editor_client: httpx.AsyncClient,
    admin_client: httpx.AsyncClient,
) -> None:
    assert action.role is Role.ADMIN
    values = {"folder": str(world.folder)}
    if "{import_token}" in str(action.form):
        values["import_token"] = await _import_token(world)
    shows = action.shows.format(**values) if action.shows else None

    refused = await _request(editor_client, action, world, values)
    assert refused.status_code == 403, (action.path, refused.status_code)
    if shows:
        assert shows not in refused.text
    if action.method == "POST":
        assert not await action.done(world), f"an editor's {action.path} changed something"

    served = await _request(admin_client, action, world, values)
    if action.method == "GET":
        assert served.status_code == 200, (action.path, served.status_code)
        assert shows and shows in served.text
    else:
        assert served.status_code in (200, 303), (action.path, served.status_code, served.text)
        assert await action.done(world), f"an admin's {action.path} did not do its work"


# --- the API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiAction:
    method: str
    path: str
    role: Role
    body: dict[str, Any] | None = None
    shows: str | None = None
    done: Probe = _nothing_to_check


API_ACTIONS = [
    ApiAction("GET", "/api/subscribers", ADMIN, shows=READER),
    ApiAction("GET", "/api/subscribers/{subscriber}", ADMIN, shows=READER),
    ApiAction("GET", "/api/subscribers/export", ADMIN, shows=READER),
    ApiAction("POST", "/api/subscribers", ADMIN, body={"email": NEW_READER, "confirmed": True},
              done=_new_reader_added),
    ApiAction("POST", "/api/subscribers/{subscriber}/unsubscribe", ADMIN,
              done=_reader_unsubscribed),
]  # fmt: skip


@pytest.mark.parametrize(
    "action", [pytest.param(a, id=f"{a.method} {a.path}") for a in API_ACTIONS]
)
async def test_admin_only_api_call_refuses_an_editor_token_and_serves_an_admin_token(
    world: World, action: ApiAction, anonymous: httpx.AsyncClient
) -> None:
    assert action.role is Role.ADMIN
    editor_token, _ = await accounts.create_token(world.site.db, "editor-bot", "editor")
    admin_token, _ = await accounts.create_token(world.site.db, "admin-bot", "admin")
    url = action.path.format(**world.ids)

    async def call(token: str) -> httpx.Response:
        return await anonymous.request(
            action.method, url, headers={"authorization": f"Bearer {token}"}, json=action.body
        )

    refused = await call(editor_token)
    assert refused.status_code == 403, (url, refused.status_code)
    assert "role" in refused.json()["error"]
    if action.shows:
        assert action.shows not in refused.text
    if action.method == "POST":
        assert not await action.done(world), f"an editor's {url} changed something"

    served = await call(admin_token)
    assert served.status_code in (200, 201), (url, served.status_code, served.text)
    if action.shows:
        assert action.shows in served.text
    if action.method == "POST":
        assert await action.done(world), f"an admin's {url} did not do its work"


async def test_every_admin_only_route_is_in_the_tables(site: AdminSite) -> None:
    """A route added as admin-only needs its row above, or nothing checks what it does."""
    listed = {(a.method, a.path) for a in [*PAGE_ACTIONS, *API_ACTIONS]}
    declared = {
        (method, re.sub(r"\{(\w+):int\}", _placeholder, path))
        for path, method, route in guarded_routes(site)
        if route.endpoint.required_role is Role.ADMIN
    }
    assert declared <= listed, sorted(declared - listed)


def _placeholder(match: re.Match[str]) -> str:
    section = re.search(r"/(subscribers|sources|users|tokens)/\{id:int\}", match.string)
    kinds = {"subscribers": "subscriber", "sources": "source", "users": "user", "tokens": "token"}
    return "{" + (kinds[section.group(1)] if section else match.group(1)) + "}"
