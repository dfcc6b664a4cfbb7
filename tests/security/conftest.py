"""Fixtures for the security suite: the public site and the admin on both databases.

Every test here is named after the attack it replays; each one reproduced against
the code before the fix (see docs/security.md for the threat model)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mailer.config import Settings
from tests.admin.conftest import (  # noqa: F401 - fixtures used by the tests here
    ADMIN_PASSWORD,
    EDITOR_PASSWORD,
    AdminSite,
    clock,
    login,
    quick_password_hashing,
    site,
    site_settings,
)
from tests.web.conftest import Site, SiteFactory, make_site  # noqa: F401

WEBHOOK_SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def public(make_site: SiteFactory, database_url: str) -> Site:  # noqa: F811
    """The public pages with a real SMTP server catching the mail."""
    return await make_site(database_url)


@pytest.fixture
def admin_settings(tmp_path: Path, database_url: str) -> Settings:
    return site_settings(
        tmp_path,
        database_url,
        bounces={"webhook_secret": WEBHOOK_SECRET},
        # East of UTC: the zone in which a year-9999 date cannot be shown.
        digest={"timezone": "Europe/Vilnius"},
    )


@pytest.fixture
def admin(site: AdminSite) -> AdminSite:  # noqa: F811
    """The admin and the API with an admin (alice) and an editor (eddie), on both
    databases (tests/admin's ``site`` fixture over ``admin_settings`` above)."""
    return site


async def signed_in(admin_site: AdminSite, username: str, password: str) -> httpx.AsyncClient:
    client = admin_site.client()
    response = await login(client, username, password)
    assert response.status_code == 303, response.text
    return client
