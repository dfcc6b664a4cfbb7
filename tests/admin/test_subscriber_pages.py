"""Subscriber pages: search, view, add, unsubscribe, erase, CSV import with preview, export."""

from __future__ import annotations

import csv
import io

import httpx
from sqlalchemy import func, select

from mailer import audit
from mailer import subscribers as store
from mailer.models import ConsentEvent, Subscriber
from tests.admin.conftest import AdminSite, csrf_token, post_form


async def _upload(
    client: httpx.AsyncClient, body: bytes, status: str = "pending", name: str = "list.csv"
) -> httpx.Response:
    page = await client.get("/admin/subscribers/import")
    return await client.post(
        "/admin/subscribers/import",
        data={"status": status, "csrf_token": csrf_token(page.text)},
        files={"file": (name, body, "text/csv")},
    )


async def _count(site: AdminSite) -> int:
    async with site.db.session() as session:
        return await session.scalar(select(func.count(Subscriber.id))) or 0


async def test_import_preview_reports_each_line_and_writes_nothing(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    await store.add(site.db, site.settings, "known@example.org", confirmed=True)
    await store.add(site.db, site.settings, "gone@example.org", confirmed=True)
    gone = await store.find_subscriber(site.db, "gone@example.org")
    assert gone is not None
    await store.unsubscribe(site.db, site.settings, gone.id)
    body = (
        "email,name,topics\n"
        "ona@example.org,Ona Šimonytė,economy\n"
        "not an address,Bad,\n"
        "ONA@example.org,,health\n"
        "known@example.org,Known,\n"
        "gone@example.org,,\n"
        "zygis@example.org,Žygimantas,astrology\n"
        "\n"
        "petras@example.org,,\n"
    ).encode()
    preview = await _upload(admin_client, body)
    assert preview.status_code == 200, preview.text
    text = preview.text
    assert '<strong data-count="imported">2</strong>' in text  # ona, petras
    assert '<strong data-count="merged">1</strong>' in text
    assert '<strong data-count="rejected">3</strong>' in text
    assert '<strong data-count="updated">1</strong>' in text  # known gets a name
    assert '<td class="num">3</td><td>This is not a valid email address' in text
    assert "astrology" in text
    assert "gone@example.org is on the suppression list" in text
    assert await _count(site) == 2, "the preview wrote nothing"

    token = csrf_token(text)
    upload_token = text.split('name="token" value="')[1].split('"')[0]
    done = await admin_client.post(
        "/admin/subscribers/import/confirm",
        data={
            "csrf_token": token,
            "token": upload_token,
            "status": "pending",
            "filename": "list.csv",
        },
    )
    assert done.status_code == 303
    assert await _count(site) == 4
    listing = await admin_client.get(done.headers["location"])
    assert "Imported list.csv: 2 new, 1 updated" in listing.text
    ona = await store.find_subscriber(site.db, "ona@example.org")
    assert ona is not None and ona.name == "Ona Šimonytė"
    assert set(ona.topics) == {"economy", "health"}
    # The upload is used once.
    again = await admin_client.post(
        "/admin/subscribers/import/confirm",
        data={"csrf_token": token, "token": upload_token, "status": "pending"},
    )
    assert (
        "expired or was already imported"
        in (await admin_client.get(again.headers["location"])).text
    )
    assert await _count(site) == 4
    entries, _ = await audit.query(site.db, action="subscriber.import")
    assert entries[0].details["imported"] == 2


async def test_unreadable_files_are_refused_with_a_reason(admin_client: httpx.AsyncClient) -> None:
    latin = await _upload(admin_client, "email\nj\xfcrgen@example.org\n".encode("latin-1"))
    assert latin.status_code == 422 and "not UTF-8" in latin.text
    no_column = await _upload(admin_client, b"address\nx@example.org\n")
    assert no_column.status_code == 422 and "no &#39;email&#39; column" in no_column.text
    empty = await _upload(admin_client, b"")
    assert empty.status_code == 422


async def test_preview_of_100000_rows(site: AdminSite, admin_client: httpx.AsyncClient) -> None:
    """The preview runs the whole import (validation, duplicates, suppression, bulk
    statements) and rolls it back; confirming runs the same code again for real,
    which test_import_preview_reports_each_line_and_writes_nothing covers."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "name"])
    for number in range(100_000):
        writer.writerow([f"reader{number}@example.org", f"Reader {number}"])
    writer.writerow(["reader7@EXAMPLE.org", "Duplicate"])
    writer.writerow(["broken", ""])
    preview = await _upload(admin_client, out.getvalue().encode(), status="confirmed")
    assert preview.status_code == 200
    assert '<strong data-count="imported">100000</strong>' in preview.text
    assert '<strong data-count="merged">1</strong>' in preview.text
    assert '<strong data-count="rejected">1</strong>' in preview.text
    assert '<td class="num">100003</td>' in preview.text
    assert await _count(site) == 0


async def test_add_view_unsubscribe_erase(site: AdminSite, admin_client: httpx.AsyncClient) -> None:
    added = await post_form(
        admin_client,
        "/admin/subscribers/new",
        "/admin/subscribers/new",
        {
            "email": "ona@example.org",
            "name": "Ona",
            "frequency": "weekly",
            "topics": ["health"],
            "confirmed": "1",
        },
    )
    assert added.status_code == 303
    page = await admin_client.get(added.headers["location"])
    assert "ona@example.org" in page.text and "admin-add" in page.text
    assert "weekly" in page.text and "Health" in page.text
    location = added.headers["location"]

    await post_form(admin_client, location, f"{location}/unsubscribe")
    page = await admin_client.get(location)
    assert "unsubscribed" in page.text and "suppressed" in page.text

    refused = await post_form(admin_client, location, f"{location}/erase", {"confirm": "no"})
    assert "Type “erase”" in (await admin_client.get(refused.headers["location"])).text
    erased = await post_form(admin_client, location, f"{location}/erase", {"confirm": "erase"})
    assert erased.status_code == 303
    assert (await admin_client.get(location)).status_code == 404
    async with site.db.session() as session:
        records = (await session.scalars(select(ConsentEvent))).all()
    assert all(r.ip is None for r in records)
    entries, _ = await audit.query(site.db, action="subscriber.erase")
    assert "ona@example.org" not in str(entries[0].as_dict())


async def test_add_form_reports_problems(admin_client: httpx.AsyncClient) -> None:
    response = await post_form(
        admin_client, "/admin/subscribers/new", "/admin/subscribers/new", {"email": "nope"}
    )
    assert response.status_code == 422
    assert "not a valid email address" in response.text
    assert 'value="nope"' in response.text


async def test_search_and_export(site: AdminSite, admin_client: httpx.AsyncClient) -> None:
    await store.add(site.db, site.settings, "ona@example.org", name="Ona Šimonytė", confirmed=True)
    await store.add(site.db, site.settings, "petras@example.org")
    found = await admin_client.get("/admin/subscribers", params={"q": "šimonytė"})
    assert "ona@example.org" in found.text and "petras@example.org" not in found.text
    pending = await admin_client.get("/admin/subscribers", params={"status": "pending"})
    assert "petras@example.org" in pending.text and "ona@example.org" not in pending.text
    export = await admin_client.get("/admin/subscribers/export.csv", params={"status": "confirmed"})
    assert export.headers["content-type"].startswith("text/csv")
    assert "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["email"] for r in rows] == ["ona@example.org"]
    assert rows[0]["name"] == "Ona Šimonytė"
