"""Fixtures for the admin, API and metrics tests: the app on a test client with
injected clocks, an admin and an editor account, signed-in clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from mailer import accounts
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.web.app import create_app
from tests.conftest import make_settings
from tests.support.clock import Clock

ADMIN_PASSWORD = "correct horse battery"
EDITOR_PASSWORD = "editor password 123"
BASE = "http://127.0.0.1:8000"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class AdminSite:
    app: Starlette
    settings: Settings
    clock: Clock

    @property
    def db(self) -> Database:
        return self.app.state.web.db

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("203.0.113.7", 5000)),
            base_url=BASE,
            follow_redirects=False,
        )


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    page = await client.get("/admin/login")
    return await client.post(
        "/admin/login",
        data={"username": username, "password": password, "csrf_token": csrf_token(page.text)},
    )


async def post_form(
    client: httpx.AsyncClient,
    page_path: str,
    action: str,
    data: dict[str, Any] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Open ``page_path`` as a browser would, then submit a form to ``action`` with its token."""
    page = await client.get(page_path)
    assert page.status_code == 200, (page_path, page.status_code)
    # The token of the form that posts to ``action``: a form missing its own token fails here.
    forms = re.findall(
        rf'<form[^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', page.text, re.S
    )
    assert forms, f"{page_path} has no form posting to {action}"
    return await client.post(
        action, data={**(data or {}), "csrf_token": csrf_token(forms[0])}, **kwargs
    )


def site_settings(tmp_path: Path, database_url: str, **sections: Any) -> Settings:
    defaults: dict[str, Any] = {
        "site": {"base_url": BASE},
        "topics": [
            {"name": "Economy", "keywords": ["budget", "tax"]},
            {"name": "Health", "keywords": ["hospital", "vaccine"]},
        ],
    }
    defaults.update(sections)
    return make_settings(tmp_path, database_url, **defaults)


@pytest.fixture(autouse=True)
def quick_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id with the smallest cost: the production profile costs ~0.1 s of CPU per
    hash, and these tests sign in hundreds of times. test_accounts checks the profile."""
    from argon2 import PasswordHasher

    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(accounts, "_hasher", quick)
    monkeypatch.setattr(accounts, "_DUMMY_HASH", quick.hash("dummy"))


@pytest.fixture
def clock() -> Clock:
    return Clock(wall=datetime(2025, 3, 10, 9, 0, tzinfo=UTC))


@pytest.fixture
def admin_settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return site_settings(tmp_path, sqlite_url)


@pytest.fixture
async def site(admin_settings: Settings, clock: Clock) -> AsyncIterator[AdminSite]:
    app = create_app(
        AppContext(settings=admin_settings),
        run_background=False,
        now=clock.now,
        monotonic=clock.monotonic,
    )
    async with app.router.lifespan_context(app):
        database = app.state.web.db
        await accounts.create_user(database, "alice", ADMIN_PASSWORD, "admin")
        await accounts.create_user(database, "eddie", EDITOR_PASSWORD, "editor")
        yield AdminSite(app, admin_settings, clock)


@pytest.fixture
async def anonymous(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    async with site.client() as client:
        yield client


@pytest.fixture
async def admin_client(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    async with site.client() as client:
        response = await login(client, "alice", ADMIN_PASSWORD)
        assert response.status_code == 303, response.text
        yield client


@pytest.fixture
async def editor_client(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    async with site.client() as client:
        response = await login(client, "eddie", EDITOR_PASSWORD)
        assert response.status_code == 303, response.text
        yield client
