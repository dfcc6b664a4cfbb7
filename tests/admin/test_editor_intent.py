"""Issue 13 in the admin and the API: releases added by hand go out whatever their
date (unless the editor says not to), every "nothing" and "fewer" names its reason,
the arrival rule is the same as a collection's, one release count per source, times
labelled with the zone, and a test send is marked as one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mailer import accounts
from mailer import subscribers as store
from mailer.config import Settings
from mailer.models import Digest, Release
from mailer.send import Worker
from tests.admin.conftest import AdminSite, csrf_token, post_form, site_settings
from tests.support.smtp import SmtpServer


@pytest.fixture
def admin_settings(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> Settings:
    return site_settings(
        tmp_path,
        database_url,
        digest={"timezone": "Europe/Vilnius"},
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
    )


@pytest.fixture
async def api(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = await accounts.create_token(site.db, "cms", "editor")
    async with site.client() as client:
        client.headers["authorization"] = f"Bearer {token}"
        yield client


async def _reader(site: AdminSite, address: str, frequency: str = "daily") -> None:
    await store.add(
        site.db, site.settings, address, confirmed=True, frequency=frequency, now=site.clock.now()
    )
    site.clock.advance(timedelta(minutes=1))


async def add_in_admin(client: httpx.AsyncClient, fields: dict[str, str]) -> httpx.Response:
    """Fill in and submit the admin's "Add a release" form."""
    return await post_form(client, "/admin/releases/new", "/admin/releases/new", fields)


async def _releases(site: AdminSite) -> list[Release]:
    async with site.db.session() as session:
        return list((await session.scalars(select(Release).order_by(Release.id))).all())


async def _digests(site: AdminSite) -> list[Digest]:
    async with site.db.session() as session:
        return list((await session.scalars(select(Digest).order_by(Digest.id))).all())


async def test_an_old_release_added_in_the_admin_is_sent_and_shown_as_published(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await _reader(site, "ona@example.org", frequency="immediately")
    added = await add_in_admin(
        editor_client,
        {
            "title": "Minister Šimonytė opens the Vilnius summit media centre",
            "body": "The media centre of the NATO summit opened in Vilnius on Monday.",
            "published": "2023-07-10",
        },
    )
    assert added.status_code == 303, added.text
    (release,) = await _releases(site)
    assert release.published_date_only and release.exempt_from_max_age
    # The arrival rule: "as soon as published" readers get it now, like after a collection.
    (arrival,) = await _digests(site)
    assert (arrival.frequency, arrival.recipient_count) == ("immediately", 1)

    page = await editor_client.get(added.headers["location"])
    assert "2023-07-10" in page.text and "2023-07-10 03:00" not in page.text
    listing = await editor_client.get("/admin/releases")
    assert "2023-07-10" in listing.text
    assert "EEST" in page.text or "EET" in page.text  # first seen: labelled with the zone
    dashboard = await editor_client.get("/admin/")
    assert "Added in the admin" in dashboard.text


async def test_do_not_send_and_old_collected_releases_are_explained_on_the_confirm_page(
    site: AdminSite, editor_client: httpx.AsyncClient, admin_client: httpx.AsyncClient
) -> None:
    await _reader(site, "ona@example.org")
    await add_in_admin(
        editor_client,
        {
            "title": "Consular statistics of 2024",
            "body": "The ministry published the consular statistics of 2024.",
            "published": "2025-01-05 10:00",
            "no_send": "1",
        },
    )
    (release,) = await _releases(site)
    assert release.excluded and not release.exempt_from_max_age
    assert release.published_at.isoformat() == "2025-01-05T08:00:00+00:00"
    confirm = await editor_client.get("/admin/digests/send", params={"frequency": "all"})
    assert "Nobody would receive anything now" in confirm.text
    assert "1 release is excluded from digests by an editor." in confirm.text
    preview = await admin_client.get(
        "/admin/digests/preview", params={"subscriber": "ona@example.org"}
    )
    assert "No digest would be sent to ona@example.org now" in preview.text
    assert "1 release is excluded from digests by an editor." in preview.text
    # Sending anyway (a stale confirm page in another tab) says why nothing went.
    digests_page = await editor_client.get("/admin/digests")
    sent = await editor_client.post(
        "/admin/digests/send",
        data={"frequency": "all", "csrf_token": csrf_token(digests_page.text)},
    )
    page = await editor_client.get(sent.headers["location"])
    assert "Nothing was sent." in page.text and "excluded from digests" in page.text


async def test_the_confirm_page_says_who_is_left_out(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await _reader(site, "ona@example.org")
    await add_in_admin(
        editor_client,
        {"title": "Budget for 2026 adopted", "body": "The parliament adopted the budget."},
    )
    site.clock.advance(timedelta(minutes=1))
    await _reader(site, "late@example.org")
    confirm = await editor_client.get("/admin/digests/send", params={"frequency": "all"})
    assert '<strong id="recipient-count">1</strong> recipient<' in confirm.text
    assert "1 reader confirmed after these releases arrived" in confirm.text


async def test_send_test_is_marked_in_subject_and_both_parts(
    site: AdminSite, editor_client: httpx.AsyncClient, smtp_server: SmtpServer
) -> None:
    await add_in_admin(
        editor_client,
        {"title": "Budget for 2026 adopted", "body": "The parliament adopted the budget."},
    )
    response = await post_form(
        editor_client, "/admin/digests", "/admin/digests/test", {"address": "desk@example.org"}
    )
    assert response.status_code == 303
    notice = await editor_client.get(response.headers["location"])
    assert "[Test]" in notice.text
    await Worker(site.db, site.settings, poll_interval=0.1).run(until_empty=True)
    (received,) = smtp_server.messages
    message = received.message
    assert str(message["Subject"]).startswith("[Test] ")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "[TEST] This is a test send" in text
    assert "Test send:" in html and "not to subscribers" in html


async def test_api_adds_releases_by_the_same_rules_and_explains_sends(
    site: AdminSite, api: httpx.AsyncClient
) -> None:
    await _reader(site, "now@example.org", frequency="immediately")
    created = await api.post(
        "/api/releases",
        json={
            "title": "Prime Minister Šimonytė meets Baltic counterparts",
            "text": "Prime Minister Ingrida Šimonytė met her Latvian and Estonian counterparts.",
            "published": "2023-10-23",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["outcome"] == "new"
    assert body["release"]["published_at"] == "2023-10-23"
    assert body["release"]["published_date_only"] is True
    assert body["release"]["sources"] == ["Added through the API"]
    again = await api.post(
        "/api/releases",
        json={
            "title": "Prime Minister Šimonytė meets Baltic counterparts",
            "text": "Prime Minister Ingrida Šimonytė met her Latvian and Estonian counterparts.",
            "topics": ["economy"],
        },
    )
    # The same release again: the stored one, as it stands after the second add.
    assert again.status_code == 200, again.text
    assert again.json()["outcome"] != "new"
    assert again.json()["release"]["id"] == body["release"]["id"]
    assert again.json()["release"]["topics"] == ["economy"]
    assert [d.frequency for d in await _digests(site)] == ["immediately"]

    held = await api.post(
        "/api/releases",
        json={"title": "Archive note", "text": "An archive note for the record.", "send": False},
    )
    assert held.status_code == 201 and held.json()["release"]["excluded"] is True
    bad = await api.post("/api/releases", json={"title": "X", "text": "Y", "published": "soon"})
    assert bad.status_code == 422 and "YYYY-MM-DD" in bad.json()["error"]

    dry = await api.get("/api/digests/dry-run", params={"frequency": "all"})
    assert dry.status_code == 200
    assert dry.json()["recipients"] == 0 and dry.json()["readers"] == 1
    assert dry.json()["reasons"] == [
        "1 release is excluded from digests by an editor.",
        "1 reader has already received every release that could go out.",
    ]
    preview = await api.get("/api/digests/preview")
    assert preview.json()["would_send"] is True
    assert "1 reader has already received" in " ".join(preview.json()["reasons"])
