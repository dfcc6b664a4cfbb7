"""Clicks on a digest's release links: counted per send and release, redirected to the
release, with nothing that identifies a reader stored under the defaults."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select

from mailer.models import Click, ConsentEvent, Open
from tests.engagement.conftest import (
    READERS,
    RELEASES,
    TrackedSite,
    send_to_readers,
)
from tests.support.smtp import SmtpServer

BUDGET, HOSPITAL, TAX = RELEASES


async def test_two_readers_click_two_releases_ranked_in_admin_and_api(
    tracked: TrackedSite, smtp: SmtpServer, admin: httpx.AsyncClient
) -> None:
    await send_to_readers(tracked, smtp)
    ona, jonas = (tracked.sent[address] for address in READERS)
    # The same URL for every reader of a content: it names the send and release only.
    assert ona.links == jonas.links
    assert set(ona.links) == set(RELEASES)
    async with tracked.client("198.51.100.1") as browser:
        response = await browser.get(ona.links[BUDGET])
        assert response.status_code == 302
        assert response.headers["location"] == RELEASES[BUDGET]
    tracked.clock.advance(timedelta(minutes=5))
    async with tracked.client("198.51.100.2") as browser:
        assert (await browser.get(jonas.links[BUDGET])).status_code == 302
        tracked.clock.advance(timedelta(minutes=3))
        assert (await browser.get(jonas.links[HOSPITAL])).status_code == 302

    report = await admin.get(f"/admin/engagement/sends/{tracked.digest_id}")
    assert report.status_code == 200
    ranked = report.text.index(BUDGET), report.text.index(HOSPITAL)
    assert ranked[0] < ranked[1]
    assert TAX not in report.text.split("<tbody", 1)[1].split("</tbody>", 1)[0]

    api = await admin.get(f"/api/engagement/sends/{tracked.digest_id}")
    # The API takes bearer tokens only; the admin session is not one.
    assert api.status_code == 401

    from mailer import accounts

    token, _ = await accounts.create_token(tracked.db, "reports", "editor")
    async with tracked.client() as program:
        body = (
            await program.get(
                f"/api/engagement/sends/{tracked.digest_id}",
                headers={"authorization": f"Bearer {token}"},
            )
        ).json()
    assert [(r["title"], r["clicks"], r["unique_clicks"]) for r in body["releases"]] == [
        (BUDGET, 2, 2),
        (HOSPITAL, 1, 1),
    ]
    assert body["delivered"] == 2
    assert body["click_rate"] == 1.5

    # Nothing that identifies a reader was stored with the defaults.
    async with tracked.db.session() as session:
        clicks = (await session.scalars(select(Click))).all()
        assert len(clicks) == 3
        assert all(c.subscriber_id is None for c in clicks)
    await _assert_no_reader_data_stored(tracked)


async def _assert_no_reader_data_stored(tracked: TrackedSite) -> None:
    """No column of the engagement tables holds a subscriber id, an IP or a browser."""
    from sqlalchemy import text

    async with tracked.db.session() as session:
        for table in ("clicks", "opens"):
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).mappings().all()
            for row in rows:
                assert row["subscriber_id"] is None
                values = " ".join(str(v) for v in row.values())
                for marker in ("198.51.100", "Mozilla", "@example.org"):
                    assert marker not in values
        # The consent records are the only place an IP address ever goes (signup).
        consents = (await session.scalars(select(ConsentEvent.ip))).all()
        assert "198.51.100.1" not in consents


async def test_repeated_clicks_from_one_browser_count_once_as_unique(
    tracked: TrackedSite, smtp: SmtpServer, admin: httpx.AsyncClient
) -> None:
    await send_to_readers(tracked, smtp)
    link = tracked.sent[READERS[0]].links[BUDGET]
    async with tracked.client("198.51.100.1") as browser:
        for _ in range(3):
            assert (await browser.get(link)).status_code == 302
            tracked.clock.advance(timedelta(minutes=2))
    body = (await admin.get(f"/admin/engagement/sends/{tracked.digest_id}.csv")).text
    line = next(row for row in body.splitlines() if BUDGET in row)
    assert line.split(",")[3:6] == ["3", "1", "0"]


async def test_opens_are_recorded_without_the_reader(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    await send_to_readers(tracked, smtp)
    image = tracked.sent[READERS[0]].image
    assert image is not None
    async with tracked.client() as mail_client:
        response = await mail_client.get(image)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert (await mail_client.head(image)).status_code == 200
    async with tracked.db.session() as session:
        opens = (await session.scalars(select(Open))).all()
    assert [o.subscriber_id for o in opens] == [None]


async def test_metrics_count_clicks_apart_from_scanners_and_opens(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    from tests.admin.test_metrics import samples

    await send_to_readers(tracked, smtp)
    sent = tracked.sent[READERS[0]]
    async with tracked.client() as browser:
        assert (await browser.get(sent.links[BUDGET])).status_code == 302
        assert (await browser.head(sent.links[HOSPITAL])).status_code == 302
        assert (await browser.get(sent.image or "")).status_code == 200
        values = samples((await browser.get("/metrics")).text)
    assert values[("mailer_clicks_total", (("outcome", "counted"),))] == 1
    assert values[("mailer_clicks_total", (("outcome", "discarded"),))] == 1
    assert values[("mailer_unique_clicks_total", ())] == 1
    assert values[("mailer_opens_approximate_total", ())] == 1
