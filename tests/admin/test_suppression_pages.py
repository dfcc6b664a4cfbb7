"""The admin's subscriber pages show suppressed and bounced readers, and why."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from mailer import accounts
from mailer import subscribers as store
from mailer.config import Settings
from mailer.subscribers import queries
from mailer.suppression import suppress
from tests.admin.conftest import AdminSite, site_settings


@pytest.fixture
def admin_settings(tmp_path: Path, database_url: str) -> Settings:
    """These pages hash addresses and page in Python: both backends."""
    return site_settings(tmp_path, database_url)


async def test_admin_pages_show_suppression(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    for name in ("ona", "jonas"):
        await store.add(site.db, site.settings, f"{name}@example.org", confirmed=True)
    async with site.db.transaction() as session:
        await suppress(session, site.settings, "jonas@example.org", "hard-bounce", "5.1.1")
    page = await admin_client.get("/admin/subscribers", params={"status": "bounced"})
    assert page.status_code == 200
    assert "jonas@example.org" in page.text and "ona@example.org" not in page.text
    assert '<span class="badge badge-bounced"' in page.text
    confirmed = await admin_client.get("/admin/subscribers", params={"status": "confirmed"})
    assert "ona@example.org" in confirmed.text and "jonas@example.org" not in confirmed.text
    everyone = await admin_client.get("/admin/subscribers")
    assert '<option value="suppressed"' in everyone.text
    jonas = await store.find_subscriber(site.db, "jonas@example.org")
    assert jonas is not None
    detail = await admin_client.get(f"/admin/subscribers/{jonas.id}")
    assert "bounced</span>" in detail.text and "hard-bounce: 5.1.1" in detail.text
    export = await admin_client.get("/admin/subscribers/export.csv", params={"status": "bounced"})
    [row] = list(csv.DictReader(io.StringIO(export.text)))
    assert (row["email"], row["status"], row["suppression"]) == (
        "jonas@example.org",
        "bounced",
        "hard-bounce: 5.1.1",
    )


async def test_the_api_shows_suppression(site: AdminSite) -> None:
    token, _ = await accounts.create_token(site.db, "cms", "admin")
    await store.add(site.db, site.settings, "jonas@example.org", confirmed=True)
    async with site.db.transaction() as session:
        await suppress(session, site.settings, "jonas@example.org", "hard-bounce", "5.1.1")
    async with site.client() as api:
        listed = await api.get("/api/subscribers", headers={"authorization": f"Bearer {token}"})
    assert listed.status_code == 200, listed.text
    [jonas] = listed.json()["items"]
    assert (jonas["status"], jonas["subscription"], jonas["suppression"]) == (
        "bounced",
        "confirmed",
        "hard-bounce",
    )


async def test_large_lists_skip_suppressed_readers_without_hashing_everyone(
    site: AdminSite, admin_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above EXACT_COUNT_LIMIT readers a status page filters page by page (hashing
    only the rows it shows) and says its count is an estimate."""
    for number in range(7):
        await store.add(site.db, site.settings, f"r{number}@example.org", confirmed=True)
    async with site.db.transaction() as session:
        for number in (1, 2, 3, 5):
            await suppress(session, site.settings, f"r{number}@example.org", "hard-bounce")

    async def a_million(*_: object) -> int:
        return 1_000_000

    monkeypatch.setattr(queries, "_estimated_rows", a_million)
    seen: list[str] = []
    after = None
    while True:
        found = await store.search_subscribers(
            site.db, site.settings, status="confirmed", after=after, limit=1
        )
        assert not found.total.exact
        seen += [v.email for v in found.items]
        if found.next_after is None:
            break
        after = found.next_after
    assert seen == ["r6@example.org", "r4@example.org", "r0@example.org"]
    page = await admin_client.get("/admin/subscribers", params={"status": "confirmed"})
    assert "r4@example.org" in page.text and "r5@example.org" not in page.text
