"""Tracked links are signed, name a release of that send, and never redirect anywhere
else: tampered tokens, other sends' releases and open-redirect tricks all 404."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote

import httpx
import pytest
from itsdangerous import URLSafeSerializer
from sqlalchemy import func, select

from mailer import engagement
from mailer.models import Click
from tests.engagement.conftest import READERS, RELEASES, TrackedSite, send_to_readers
from tests.support.smtp import SmtpServer

BUDGET, HOSPITAL, TAX = RELEASES


def test_a_token_names_only_the_send_and_the_release(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    from tests.engagement.conftest import tracked_settings

    signer = engagement.LinkSigner(tracked_settings(tmp_path, sqlite_url, 25))
    url = signer.click_url(7, 42)
    token = url.rsplit("/", 1)[1]
    assert signer.read_click(token) == (7, 42)
    # Changing any character of the token breaks the signature.
    for position in range(len(token)):
        flipped = (
            token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
        )
        with pytest.raises(engagement.UnknownLink):
            signer.read_click(flipped)
    # Signed with the site's key for this purpose only: not an open-image or a foreign token.
    with pytest.raises(engagement.UnknownLink):
        signer.read_open(token)
    foreign = URLSafeSerializer("another-site-key-0123456789", salt="mailer.click").dumps([7, 42])
    with pytest.raises(engagement.UnknownLink):
        signer.read_click(foreign)
    assert signer.read_reader(signer.reader(9)) == 9
    with pytest.raises(engagement.UnknownLink):
        signer.read_reader(signer.reader(9).replace("9.", "8.", 1))


async def _clicks(site: TrackedSite) -> int:
    async with site.db.session() as session:
        return await session.scalar(select(func.count()).select_from(Click)) or 0


async def test_tampered_unknown_and_foreign_tokens_are_404_and_count_nothing(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    await send_to_readers(tracked, smtp, titles=(BUDGET, HOSPITAL))
    link = tracked.sent[READERS[0]].links[BUDGET]
    token = link.rsplit("/r/", 1)[1]
    signer = engagement.LinkSigner(tracked.settings)
    # A release that exists but was not in this send, a send that does not exist.
    async with tracked.db.session() as session:
        from mailer.models import Release

        other = await session.scalar(select(Release.id).where(Release.title == HOSPITAL))
    assert other is not None
    attempts = [
        "/r/" + token[:-2] + ("xx" if not token.endswith("xx") else "yy"),
        "/r/" + token + "x",
        "/r/not-a-token",
        "/r/" + signer.click_url(tracked.digest_id + 1000, other).rsplit("/r/", 1)[1],
        "/r/" + signer.click_url(tracked.digest_id, 999_999).rsplit("/r/", 1)[1],
        "/r/" + token + "/1.0000000000000000",
        "/o/" + token,
    ]
    async with tracked.client() as browser:
        for path in attempts:
            response = await browser.get(path)
            assert response.status_code == 404, path
            assert "location" not in response.headers
    assert await _clicks(tracked) == 0


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/phish",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "%6Aavascript:alert(1)",
        "https:%2F%2Fevil.example",
        "data:text/html,<script>alert(1)</script>",
    ],
)
async def test_no_request_can_choose_where_r_redirects(
    tracked: TrackedSite, smtp: SmtpServer, target: str
) -> None:
    await send_to_readers(tracked, smtp, titles=(BUDGET,))
    link = tracked.sent[READERS[0]].links[BUDGET]
    path = link.removeprefix("http://127.0.0.1:8000")
    async with tracked.client() as browser:
        for attempt in (
            f"/r/{quote(target, safe='')}",
            f"{path}?url={quote(target, safe='')}",
            f"{path}?next={quote(target)}&redirect={quote(target)}",
            f"/r/{quote(target, safe='')}/{path.rsplit('/', 1)[1]}",
        ):
            response = await browser.get(attempt)
            location = response.headers.get("location")
            assert location in (None, RELEASES[BUDGET]), (attempt, location)
        # A signed token whose release's link is the only possible destination.
        signed = URLSafeSerializer(tracked.settings.get_secret_key(), salt="mailer.click").dumps(
            [tracked.digest_id, target]
        )
        assert (await browser.get(f"/r/{signed}")).status_code == 404


async def test_link_scanners_are_counted_apart(tracked: TrackedSite, smtp: SmtpServer) -> None:
    await send_to_readers(tracked, smtp)
    links = tracked.sent[READERS[0]].links
    # A security gateway sweeps every link of the message within a second.
    async with tracked.client("203.0.113.50") as gateway:
        for title in RELEASES:
            assert (await gateway.get(links[title])).status_code == 302
            tracked.clock.advance(timedelta(milliseconds=300))
    # Link checkers send HEAD; known gateways say who they are.
    async with tracked.client("203.0.113.51") as checker:
        assert (await checker.head(links[BUDGET])).status_code == 302
        agent = {"user-agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"}
        assert (await checker.get(links[BUDGET], headers=agent)).status_code == 302
        assert (await checker.get(links[BUDGET], headers={"user-agent": ""})).status_code == 302
    # A reader reads, then follows one link a minute later and another one later still.
    tracked.clock.advance(timedelta(minutes=1))
    async with tracked.client("198.51.100.9") as reader:
        assert (await reader.get(links[TAX])).status_code == 302
        tracked.clock.advance(timedelta(minutes=2))
        assert (await reader.get(links[HOSPITAL])).status_code == 302

    report = await engagement.send_report(tracked.db, tracked.settings, tracked.digest_id)
    assert report is not None
    assert (report.clicks, report.unique_clicks, report.discarded) == (2, 2, 6)
    by_title = {r.title: (r.clicks, r.discarded) for r in report.releases}
    assert by_title == {BUDGET: (0, 4), HOSPITAL: (1, 1), TAX: (1, 1)}
    async with tracked.db.session() as session:
        reasons = dict(
            (
                await session.execute(
                    select(Click.discarded, func.count()).group_by(Click.discarded)
                )
            ).all()
        )
    assert reasons == {"burst": 3, "head": 1, "agent": 2, None: 2}


async def test_clicks_switched_off_after_the_send_still_lead_on_uncounted(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    await send_to_readers(tracked, smtp, titles=(BUDGET,))
    link = tracked.sent[READERS[0]].links[BUDGET]
    off = tracked.settings.model_copy(
        update={"tracking": tracked.settings.tracking.model_copy(update={"clicks": False})}
    )
    tracked.app.state.web.settings = off
    tracked.app.state.web.tracker = engagement.Tracker(off)
    async with tracked.client() as browser:
        response = await browser.get(link)
    assert response.status_code == 302
    assert response.headers["location"] == RELEASES[BUDGET]
    assert await _clicks(tracked) == 0


async def test_reports_404_for_unknown_sends(
    tracked: TrackedSite, admin: httpx.AsyncClient
) -> None:
    assert (await admin.get("/admin/engagement/sends/999")).status_code == 404
    assert (await admin.get("/admin/engagement/sends/999.csv")).status_code == 404
    assert (await admin.get("/admin/engagement")).status_code == 200
