"""Fixtures for the security suite: the public site and the admin on both databases.

Every test here is named after the attack it replays; each one reproduced against
the code before the fix (see docs/security.md for the threat model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from mailer import accounts
from mailer.context import AppContext
from mailer.web.app import create_app
from tests.admin.conftest import (  # noqa: F401 - fixtures used by the tests here
    ADMIN_PASSWORD,
    EDITOR_PASSWORD,
    AdminSite,
    login,
    quick_password_hashing,
    site_settings,
)
from tests.support.clock import Clock
from tests.web.conftest import Site, SiteFactory, make_site  # noqa: F401

WEBHOOK_SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def public(make_site: SiteFactory, database_url: str) -> Site:  # noqa: F811
    """The public pages with a real SMTP server catching the mail."""
    return await make_site(database_url)


@pytest.fixture
async def admin(tmp_path: Path, database_url: str) -> AsyncIterator[AdminSite]:
    """The admin and the API with an admin (alice) and an editor (eddie)."""
    clock = Clock(wall=datetime(2025, 3, 10, 9, 0, tzinfo=UTC))
    settings = site_settings(
        tmp_path,
        database_url,
        bounces={"webhook_secret": WEBHOOK_SECRET},
        # East of UTC: the zone in which a year-9999 date cannot be shown.
        digest={"timezone": "Europe/Vilnius"},
    )
    app = create_app(
        AppContext(settings=settings),
        run_background=False,
        now=clock.now,
        monotonic=clock.monotonic,
    )
    async with app.router.lifespan_context(app):
        await accounts.create_user(app.state.web.db, "alice", ADMIN_PASSWORD, "admin")
        await accounts.create_user(app.state.web.db, "eddie", EDITOR_PASSWORD, "editor")
        yield AdminSite(app, settings, clock)


async def signed_in(site: AdminSite, username: str, password: str) -> httpx.AsyncClient:
    client = site.client()
    response = await login(client, username, password)
    assert response.status_code == 303, response.text
    return client
