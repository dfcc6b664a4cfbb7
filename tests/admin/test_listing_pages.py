"""The admin's listings (audit log, releases): filters, menus, and paging past the end."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx

from mailer import audit
from mailer.releases import add_release
from tests.admin.conftest import AdminSite


async def _note_imports(site: AdminSite, count: int) -> None:
    start = site.clock.now() - timedelta(days=1)
    for number in range(count):
        await audit.record(
            site.db,
            "cli",
            "subscriber.import",
            "file",
            f"list-{number:03}.csv",
            at=start + timedelta(minutes=number),
        )


async def test_a_page_past_the_end_shows_the_oldest_entries(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    await _note_imports(site, 60)
    page = await admin_client.get("/admin/audit", params={"action": "subscriber.import", "page": 9})
    assert page.status_code == 200
    assert "Page 2 of 2 (60 in all)" in page.text
    shown = re.findall(r"list-(\d{3})\.csv", page.text)
    # Newest first: the second page holds the ten oldest.
    assert shown == [f"{n:03}" for n in range(9, -1, -1)]
    assert 'href="/admin/audit?action=subscriber.import&amp;page=1" rel="prev"' in page.text


async def test_the_action_menu_lists_every_action_and_keeps_the_choice(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    await _note_imports(site, 2)
    await audit.record(site.db, "cli", "subscriber.erase", "subscriber", 7)
    page = await admin_client.get("/admin/audit", params={"action": "subscriber.erase"})
    assert '<option value="subscriber.import">' in page.text
    assert '<option value="subscriber.erase" selected>' in page.text
    assert "subscriber 7" in page.text
    assert "list-000.csv" not in page.text
    assert "1 in all." in page.text
    searched = await admin_client.get("/admin/audit", params={"q": "LIST-001"})
    assert "list-001.csv" in searched.text and "list-000.csv" not in searched.text


async def test_a_release_page_past_the_end_shows_the_oldest_releases(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    for number in range(52):
        site.clock.advance(timedelta(minutes=1))
        await add_release(
            site.db,
            site.settings,
            title=f"Budget notice number {number:03}",
            body=f"Budget notice {number} of the ministry.",
            published=site.clock.now(),
            added_by="test",
            now=site.clock.now(),
        )
    page = await editor_client.get("/admin/releases", params={"q": "budget", "page": 7})
    assert page.status_code == 200
    assert "Page 2 of 2 (52 in all)" in page.text
    assert re.findall(r"Budget notice number (\d{3})", page.text) == ["001", "000"]
    assert '<option value="economy"' in page.text
