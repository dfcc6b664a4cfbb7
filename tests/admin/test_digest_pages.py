"""Digest pages: preview, test send, confirm-then-send, progress, pause/resume/cancel, schedule."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select

from mailer import audit
from mailer import subscribers as store
from mailer.models import Delivery, Digest, Release
from mailer.releases import add_release, set_excluded
from mailer.send import start_due_digests
from tests.admin.conftest import AdminSite, csrf_token, post_form


async def _content(site: AdminSite, readers: int = 2) -> None:
    now = site.clock.now()
    for number in range(readers):
        await store.add(
            site.db, site.settings, f"reader{number}@example.org", confirmed=True, now=now
        )
    site.clock.advance(timedelta(minutes=1))
    await add_release(
        site.db,
        site.settings,
        title="Budget for 2026 adopted",
        body="The parliament adopted the budget and the tax plan.",
        published=site.clock.now(),
        added_by="test",
        now=site.clock.now(),
    )


async def test_preview_shows_html_in_a_sandbox_and_the_text(
    site: AdminSite, admin_client: httpx.AsyncClient
) -> None:
    await _content(site)
    page = await admin_client.get(
        "/admin/digests/preview", params={"subscriber": "reader0@example.org"}
    )
    assert page.status_code == 200
    assert "reader0@example.org" in page.text
    assert 'sandbox=""' in page.text
    assert "Budget for 2026 adopted" in page.text  # the text part, shown in <pre>
    frame = await admin_client.get(
        "/admin/digests/preview/html", params={"subscriber": "reader0@example.org"}
    )
    assert frame.status_code == 200
    assert "Budget for 2026 adopted" in frame.text
    policy = frame.headers["content-security-policy"]
    assert policy.startswith("sandbox") and "script-src" not in policy
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    # Previewing writes nothing.
    async with site.db.session() as session:
        assert (await session.scalars(select(Digest))).all() == []


async def test_preview_errors_are_explained(
    admin_client: httpx.AsyncClient, site: AdminSite
) -> None:
    empty = await admin_client.get("/admin/digests/preview")
    assert "No releases are stored yet" in empty.text
    unknown = await admin_client.get(
        "/admin/digests/preview", params={"subscriber": "x@example.org"}
    )
    assert unknown.status_code == 422
    assert "no subscriber with the address" in unknown.text


async def test_editor_previews_only_the_sample(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await _content(site)
    sample = await editor_client.get("/admin/digests/preview")
    assert sample.status_code == 200 and "Budget for 2026 adopted" in sample.text
    personal = await editor_client.get(
        "/admin/digests/preview", params={"subscriber": "reader0@example.org"}
    )
    assert personal.status_code == 403


async def test_send_asks_for_confirmation_with_the_count_then_sends(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await _content(site, readers=3)
    confirm = await editor_client.get("/admin/digests/send", params={"frequency": "all"})
    assert confirm.status_code == 200
    assert 'id="recipient-count">3<' in confirm.text
    assert "Send to 3 recipients</button>" in confirm.text
    async with site.db.session() as session:
        assert (await session.scalars(select(Digest))).all() == [], "the count wrote nothing"
    sent = await editor_client.post(
        "/admin/digests/send", data={"frequency": "all", "csrf_token": csrf_token(confirm.text)}
    )
    assert sent.status_code == 303
    location = sent.headers["location"]
    digest_id = int(location.rsplit("/", 1)[1])
    progress = (await editor_client.get(f"/admin/digests/{digest_id}/progress")).json()
    assert progress["status"] == "sending"
    assert progress["recipients"] == 3 and progress["pending"] == 3
    page = await editor_client.get(location)
    assert "Sending to 3 recipients." in page.text
    assert f'data-progress-url="/admin/digests/{digest_id}/progress"' in page.text

    paused = await post_form(editor_client, location, f"{location}/pause")
    assert paused.status_code == 303
    assert (await editor_client.get(f"{location}/progress")).json()["status"] == "paused"
    await post_form(editor_client, location, f"{location}/resume")
    assert (await editor_client.get(f"{location}/progress")).json()["status"] == "sending"
    await post_form(editor_client, location, f"{location}/cancel")
    final = (await editor_client.get(f"{location}/progress")).json()
    assert final["status"] == "cancelled" and final["cancelled"] == 3
    refused = await post_form(editor_client, location, f"{location}/resume")
    follow = await editor_client.get(refused.headers["location"])
    assert "cannot resume" in follow.text
    actions = {e.action for e in (await audit.query(site.db, actor="user:eddie"))[0]}
    assert {"digest.send", "digest.pause", "digest.resume", "digest.cancel"} <= actions


async def test_nobody_to_send_to_is_said_plainly(editor_client: httpx.AsyncClient) -> None:
    confirm = await editor_client.get("/admin/digests/send", params={"frequency": "weekly"})
    assert "Nobody would receive anything now (weekly subscribers):" in confirm.text
    assert 'id="selection-reasons"' in confirm.text
    everyone = await editor_client.get("/admin/digests/send", params={"frequency": "all"})
    sentence = everyone.text.split("Nobody would", 1)[1].split("</p>", 1)[0]
    assert "every confirmed subscriber, whatever their frequency" in sentence
    # One plain aside, never one parenthesis inside another.
    assert sentence.count("(") == 1
    bad = await editor_client.get("/admin/digests/send", params={"frequency": "hourly"})
    assert bad.status_code == 422


async def test_a_test_send_with_nothing_to_send_says_why_with_numbers(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    empty = await post_form(
        editor_client, "/admin/digests", "/admin/digests/test", {"address": "desk@example.org"}
    )
    assert empty.headers["location"] == "/admin/digests"
    page = (await editor_client.get("/admin/digests")).text
    assert "Nothing to test with. No releases are stored yet: collect or add some first." in page
    await _content(site)
    async with site.db.session() as session:
        release_id = (await session.scalars(select(Release.id))).one()
    await set_excluded(site.db, site.settings, release_id, True, actor="test")
    excluded = await post_form(
        editor_client, "/admin/digests", "/admin/digests/test", {"address": "desk@example.org"}
    )
    page = (await editor_client.get(excluded.headers["location"])).text
    assert "1 release is excluded from digests by an editor." in page
    async with site.db.session() as session:
        assert (await session.scalars(select(Delivery))).all() == []
    # Each attempt is in the audit log, even the ones that sent nothing.
    assert (await audit.log_page(site.db, action="digest.test")).total == 2


async def test_test_send_goes_to_one_address(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await _content(site)
    response = await post_form(
        editor_client, "/admin/digests", "/admin/digests/test", {"address": "desk@example.org"}
    )
    assert response.status_code == 303
    async with site.db.session() as session:
        digest = (await session.scalars(select(Digest))).one()
        deliveries = (await session.scalars(select(Delivery))).all()
    assert digest.kind == "test"
    assert [d.email for d in deliveries] == ["desk@example.org"]
    invalid = await post_form(
        editor_client, "/admin/digests", "/admin/digests/test", {"address": "not-an-address"}
    )
    page = await editor_client.get(invalid.headers["location"])
    assert "Test send:" in page.text and "not a valid email address" in page.text


async def test_scheduled_send_starts_when_due(
    site: AdminSite, editor_client: httpx.AsyncClient
) -> None:
    await _content(site)
    # 10:30 in the site's timezone (UTC in these tests) on the clock's day.
    at = site.clock.now().replace(hour=10, minute=30)
    response = await post_form(
        editor_client,
        "/admin/digests",
        "/admin/digests/schedule",
        {"frequency": "all", "at": at.strftime("%Y-%m-%dT%H:%M")},
    )
    assert response.status_code == 303
    digest_id = int(response.headers["location"].rsplit("/", 1)[1])
    progress = (await editor_client.get(f"/admin/digests/{digest_id}/progress")).json()
    assert progress["status"] == "queued"
    assert await start_due_digests(site.db, site.settings, now=at - timedelta(minutes=1)) == []
    assert await start_due_digests(site.db, site.settings, now=at) == [digest_id]
    progress = (await editor_client.get(f"/admin/digests/{digest_id}/progress")).json()
    assert progress["status"] == "sending" and progress["recipients"] == 2
    past = await post_form(
        editor_client,
        "/admin/digests",
        "/admin/digests/schedule",
        {"frequency": "all", "at": "2020-01-01T07:00"},
    )
    assert "must be in the future" in (await editor_client.get(past.headers["location"])).text
