"""The admin's subscriber list and the API's answer a search alike, on SQLite and
PostgreSQL: one domain function (subscribers.search_subscribers) serves both."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from mailer import accounts
from mailer import subscribers as store
from mailer.config import Settings
from mailer.models import SubscriberStatus
from tests.admin.conftest import AdminSite, site_settings


@pytest.fixture
def admin_settings(tmp_path: Path, database_url: str) -> Settings:
    return site_settings(tmp_path, database_url)


@pytest.fixture
async def api(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = await accounts.create_token(site.db, "cms", "admin")
    async with site.client() as client:
        client.headers["authorization"] = f"Bearer {token}"
        yield client


READERS = [
    ("ona@example.org", "Ona Šimonytė"),
    ("ruta.simonyte@example.lt", None),
    ("simas@example.org", "Simas Petraitis"),
    ("SIMONA@Example.org", "Simona"),
    ("petras@example.org", "Petras ŠIMONYTĖ-Kairė"),
    ("jonas@example.org", "Jonas 100%_sure"),
]


async def _admin_emails(client: httpx.AsyncClient, **params: str) -> tuple[list[str], str]:
    page = await client.get("/admin/subscribers", params=params)
    assert page.status_code == 200, page.text
    emails = re.findall(r'/admin/subscribers/\d+">([^<]+)</a>', page.text)
    total = re.search(r'data-count="total">([^<]+) (?:found|in all)<', page.text)
    assert total is not None
    return emails, total.group(1)


async def _api_emails(client: httpx.AsyncClient, **params: str) -> tuple[list[str], int]:
    response = await client.get("/api/subscribers", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total_precision"] == "exact"
    return [item["email"] for item in body["items"]], body["total"]


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        ("Šimonytė", {"ona@example.org", "petras@example.org"}),
        ("simonyte", {"ona@example.org", "petras@example.org"}),
        ("ŠIMONYTĖ", {"ona@example.org", "petras@example.org"}),
        # An address prefix in any case, or part of a name: "simonyte" inside
        # ruta's address is neither.
        ("RUTA.sim", {"ruta.simonyte@example.lt"}),
        ("jonas@", {"jonas@example.org"}),
        (
            "SIM",
            {"simas@example.org", "SIMONA@example.org", "ona@example.org", "petras@example.org"},
        ),
        ("kaire", {"petras@example.org"}),
        ("ona sim", {"ona@example.org"}),
        ("sim ona", {"ona@example.org"}),
        # Words are matched from their start, not inside.
        ("imonyte", set()),
        # LIKE's wildcards are searched as written; punctuation separates words.
        ("100%_", {"jonas@example.org"}),
        ("%", set()),
        ("%onas", set()),
        ("example.org", set()),
    ],
)
async def test_admin_and_api_find_the_same_readers(
    site: AdminSite,
    admin_client: httpx.AsyncClient,
    api: httpx.AsyncClient,
    search: str,
    expected: set[str],
) -> None:
    for address, name in READERS:
        await store.add(site.db, site.settings, address, name=name, confirmed=True)
    admin, admin_total = await _admin_emails(admin_client, q=search)
    listed, api_total = await _api_emails(api, q=search)
    assert set(admin) == set(listed) == expected
    assert admin_total == str(api_total) == str(len(expected))


async def test_pages_follow_each_other_without_gaps_or_repeats(
    site: AdminSite, admin_client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    for number in range(120):
        await store.add(site.db, site.settings, f"reader{number:03}@example.org", confirmed=True)
    seen: list[str] = []
    params: dict[str, str] = {"q": "reader", "limit": "50"}
    while True:
        response = await api.get("/api/subscribers", params=params)
        body = response.json()
        assert body["total"] == 120
        seen += [item["email"] for item in body["items"]]
        if body["next_after"] is None:
            break
        params["after"] = str(body["next_after"])
    assert seen == [f"reader{n:03}@example.org" for n in range(120)]

    # The admin shows the newest first and links to the next (older) page.
    page = await admin_client.get("/admin/subscribers", params={"q": "reader"})
    shown = re.findall(r'/admin/subscribers/\d+">([^<]+)</a>', page.text)
    assert shown[0] == "reader119@example.org" and len(shown) == 50
    older = re.search(r'href="([^"]+)" rel="next"', page.text)
    assert older is not None
    page = await admin_client.get(older.group(1).replace("&amp;", "&"))
    shown = re.findall(r'/admin/subscribers/\d+">([^<]+)</a>', page.text)
    assert shown[0] == "reader069@example.org"
    assert 'rel="first"' in page.text


async def test_counts_say_when_they_are_estimates() -> None:
    assert str(store.Count(1234)) == "1,234"
    assert str(store.Count(1_000_000, "about")) == "about 1,000,000"
    assert str(store.Count(1_000, "more than")) == "more than 1,000"


async def test_searches_with_many_matches_page_in_order(site: AdminSite) -> None:
    # 1,100 old readers match "old"; 5,100 newer ones do not, so the newest-first
    # page is not among the newest rows and the search must sort every match.
    lines = ["email,name"] + [f"old{n:04}@example.org,Old {n}" for n in range(1100)]
    lines += [f"new{n:04}@example.org,New {n}" for n in range(5100)]
    await store.import_csv(
        site.db,
        site.settings,
        io.StringIO("\n".join(lines) + "\n"),
        status=SubscriberStatus.CONFIRMED,
    )
    for search, newest_first in [("old", True), ("old", False), ("new", True), ("new", False)]:
        seen: list[str] = []
        after = None
        while True:
            found = await store.search_subscribers(
                site.db,
                site.settings,
                search=search,
                after=after,
                limit=400,
                newest_first=newest_first,
            )
            assert str(found.total) == "more than 1,000"
            seen += [v.email for v in found.items]
            if found.next_after is None:
                break
            after = found.next_after
        count = 1100 if search == "old" else 5100
        expected = [f"{search}{n:04}@example.org" for n in range(count)]
        assert seen == (expected[::-1] if newest_first else expected)
