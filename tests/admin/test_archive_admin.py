"""An editor embargoes, withdraws and restores releases in the admin; readers of the
archive and of unsent digests see the effect."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select

from mailer import archive
from mailer.models import AuditEntry, Delivery, DeliveryStatus, Release
from mailer.send import start_digest
from tests.admin.conftest import AdminSite, post_form
from tests.digest.conftest import add_subscriber


async def test_embargo_set_when_adding_a_release(
    site: AdminSite, editor_client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    added = await post_form(
        editor_client,
        "/admin/releases/new",
        "/admin/releases/new",
        {
            "title": "Quarterly figures",
            "body": "Growth was 2 % in the quarter.",
            # Site timezone is UTC in these tests; the clock stands at 09:00.
            "embargo_until": "2025-03-10T12:00",
        },
    )
    assert added.status_code == 303, added.text
    release_id = int(added.headers["location"].rsplit("/", 1)[1])
    admin_page = await editor_client.get(added.headers["location"])
    assert "Embargoed until 2025-03-10 12:00" in admin_page.text
    assert 'value="2025-03-10T12:00"' in admin_page.text

    path = archive.release_path(release_id, "Quarterly figures")
    assert (await anonymous.get(path)).status_code == 404
    # Past the embargo in two steps: the editor's session stays within admin.session_idle.
    site.clock.advance(timedelta(hours=1, minutes=30))
    assert (await anonymous.get(path)).status_code == 404
    assert (await editor_client.get(f"/admin/releases/{release_id}")).status_code == 200
    site.clock.advance(timedelta(hours=1, minutes=31))
    assert (await anonymous.get(path)).status_code == 200

    # Lifting or changing it is one form.
    cleared = await post_form(
        editor_client,
        f"/admin/releases/{release_id}",
        f"/admin/releases/{release_id}/embargo",
        {"embargo_until": ""},
    )
    assert cleared.status_code == 303
    async with site.db.session() as session:
        assert (await session.get(Release, release_id)).embargo_until is None


async def test_withdraw_and_restore(
    site: AdminSite, editor_client: httpx.AsyncClient, anonymous: httpx.AsyncClient
) -> None:
    added = await post_form(
        editor_client,
        "/admin/releases/new",
        "/admin/releases/new",
        {"title": "Hospital budget", "body": "The hospital budget grows."},
    )
    release_id = int(added.headers["location"].rsplit("/", 1)[1])
    path = archive.release_path(release_id, "Hospital budget")
    async with site.db.transaction() as session:
        await add_subscriber(
            session, "ona@example.lt", confirmed_at=site.clock.now() - timedelta(days=1)
        )
    digest = await start_digest(site.db, site.settings, now=site.clock.now())
    admin_page = (await editor_client.get(f"/admin/releases/{release_id}")).text
    assert f'href="{path}"' in admin_page

    withdrawn = await post_form(
        editor_client,
        f"/admin/releases/{release_id}",
        f"/admin/releases/{release_id}/withdraw",
        {"note": "Figures under review."},
    )
    assert withdrawn.status_code == 303
    after = await editor_client.get(withdrawn.headers["location"])
    assert "Taken out of 1 unsent message(s) (1 left empty and cancelled)." in after.text
    assert "Withdrawn 2025-03-10 09:00" in after.text and "Figures under review." in after.text

    gone = await anonymous.get(path)
    assert gone.status_code == 410 and "Figures under review." in gone.text
    assert "Hospital budget" not in (await anonymous.get("/releases")).text
    async with site.db.session() as session:
        delivery = await session.scalar(select(Delivery).where(Delivery.digest_id == digest.id))
        assert delivery.status == DeliveryStatus.CANCELLED
        entry = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "release.withdraw")
        )
        assert entry.actor == "user:eddie" and entry.details["deliveries_cancelled"] == 1

    restored = await post_form(
        editor_client,
        f"/admin/releases/{release_id}",
        f"/admin/releases/{release_id}/restore",
    )
    assert restored.status_code == 303
    assert (await anonymous.get(path)).status_code == 200
