"""Reports across sends: releases ranked over every send, clicks per topic and week,
unsubscribes beside clicks, the same figures in the API (and its OpenAPI document)
and as CSV."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import httpx
from sqlalchemy import select

from mailer import accounts, engagement
from mailer import subscribers as store
from mailer.collect.ingest import add_release
from mailer.models import Subscriber
from mailer.send import start_digest
from tests.admin.conftest import ADMIN_PASSWORD, login
from tests.engagement.conftest import (
    READERS,
    RELEASES,
    TrackedSite,
    read_mail,
    send_to_readers,
)
from tests.send.conftest import deliver_all
from tests.support.smtp import SmtpServer

BUDGET, HOSPITAL, TAX = RELEASES
VACCINES = "Vaccine campaign extended to schools"


async def _second_send(site: TrackedSite, smtp: SmtpServer) -> dict[str, str]:
    """A later send with one new release; returns its links as the first reader got them."""
    before = len(smtp.messages)
    await add_release(
        site.db,
        site.settings,
        title=VACCINES,
        body="The hospital vaccine campaign now reaches schools.",
        url="https://gov.example.lt/news/vaccines",
        added_by="test",
        now=site.clock.now(),
    )
    digest = await start_digest(site.db, site.settings, now=site.clock.now())
    await deliver_all(site.db, site.settings)
    site.digest_id = digest.id
    mails = [read_mail(m.data) for m in smtp.messages[before:]]
    site.clock.advance(timedelta(minutes=30))
    return next(m for m in mails if m.address == READERS[0]).links


async def _follow(site: TrackedSite, ip: str, *links: str) -> None:
    async with site.client(ip) as browser:
        for link in links:
            assert (await browser.get(link)).status_code == 302
            site.clock.advance(timedelta(minutes=2))


async def _editor_api(site: TrackedSite) -> httpx.AsyncClient:
    token, _ = await accounts.create_token(site.db, "reports", "editor")
    client = site.client()
    client.headers["authorization"] = f"Bearer {token}"
    return client


async def test_releases_are_ranked_across_sends_and_topics_counted_per_week(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    await send_to_readers(tracked, smtp)
    first_send = tracked.digest_id
    first = tracked.sent[READERS[0]].links
    await _follow(tracked, "198.51.100.1", first[HOSPITAL])
    await _follow(tracked, "198.51.100.2", first[HOSPITAL])
    await _follow(tracked, "198.51.100.3", first[BUDGET])
    tracked.clock.advance(timedelta(days=7))
    second = await _second_send(tracked, smtp)
    assert tracked.digest_id != first_send
    await _follow(tracked, "198.51.100.4", second[VACCINES])

    totals = await engagement.release_totals(tracked.db)
    assert [(r.title, r.clicks, r.sends) for r in totals] == [
        (HOSPITAL, 2, 1),
        (BUDGET, 1, 1),
        (VACCINES, 1, 1),
    ]
    trend = await engagement.topic_trend(tracked.db, tracked.clock.now(), weeks=4)
    per_topic = dict(trend.topics)
    # The budget is Economy (budget, tax); the hospital and vaccines are Health.
    assert sum(per_topic["Health"]) == 3
    assert sum(per_topic["Economy"]) == 1
    assert per_topic["Health"][-1] == 1  # this week: the vaccines
    assert len(trend.weeks) == 4 and trend.weeks == sorted(trend.weeks)

    async with await _editor_api(tracked) as api:
        releases = (await api.get("/api/engagement/releases")).json()
        topics = (await api.get("/api/engagement/topics", params={"weeks": 4})).json()
        assert (await api.get("/api/engagement/topics", params={"weeks": 0})).status_code == 422
        assert (await api.get("/api/engagement/sends/999999")).status_code == 404
        document = (await api.get("/api/openapi.json")).json()
    assert [r["title"] for r in releases["items"]] == [HOSPITAL, BUDGET, VACCINES]
    assert {t["topic"]: sum(t["clicks"]) for t in topics["topics"]} == {"Health": 3, "Economy": 1}
    for path in (
        "/api/engagement/sends/{id}",
        "/api/engagement/releases",
        "/api/engagement/topics",
    ):
        assert path in document["paths"], path
    described = document["components"]["schemas"]["SendEngagementOut"]["properties"]
    assert "approximate" in described["opens_approximate"]["description"]

    # The same figures as CSV (signed in afresh: a week has passed since the fixture's sign-in).
    admin = tracked.client()
    assert (await login(admin, "alice", ADMIN_PASSWORD)).status_code == 303
    rows = list(
        csv.DictReader(io.StringIO((await admin.get("/admin/engagement/releases.csv")).text))
    )
    assert [(r["title"], r["clicks"]) for r in rows] == [
        (HOSPITAL, "2"),
        (BUDGET, "1"),
        (VACCINES, "1"),
    ]
    weekly = list(
        csv.DictReader(io.StringIO((await admin.get("/admin/engagement/topics.csv")).text))
    )
    assert sum(int(r["clicks"]) for r in weekly if r["topic"] == "Health") == 3
    overview = (await admin.get("/admin/engagement")).text
    assert overview.index(HOSPITAL) < overview.index(BUDGET)
    assert "Opens (approximate)" in overview


async def test_an_unsubscribe_counts_for_the_send_whose_link_was_used(
    tracked: TrackedSite, smtp: SmtpServer, admin: httpx.AsyncClient
) -> None:
    await send_to_readers(tracked, smtp)
    first_send = tracked.digest_id
    old_link = tracked.sent[READERS[0]].unsubscribe
    assert old_link.endswith(f"?send={first_send}")
    await _second_send(tracked, smtp)
    # The page behind the link keeps the send in its button's form.
    async with tracked.client() as visitor:
        page = (await visitor.get(old_link)).text
    assert f'action="{old_link}"' in page
    # Ona uses the link of the first digest, as a mail client's one-click button would.
    async with tracked.client() as mail_client:
        response = await mail_client.post(old_link, data={"List-Unsubscribe": "One-Click"})
        assert response.status_code == 200
    # Jonas leaves without a link (the mailto address, the admin): his last message counts.
    async with tracked.db.session() as session:
        jonas = await session.scalar(select(Subscriber).where(Subscriber.email == READERS[1]))
    assert jonas is not None
    await store.unsubscribe(tracked.db, tracked.settings, jonas.id, now=tracked.clock.now())

    earlier = await engagement.send_report(tracked.db, tracked.settings, first_send)
    later = await engagement.send_report(tracked.db, tracked.settings, tracked.digest_id)
    assert earlier is not None and later is not None
    assert (earlier.unsubscribed, later.unsubscribed) == (1, 1)
    assert (later.delivered, later.bounced) == (2, 0)
    page = (await admin.get(f"/admin/engagement/sends/{first_send}")).text
    assert 'data-total="unsubscribed">1<' in page


async def test_a_send_named_in_a_link_counts_only_for_its_recipients(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    await send_to_readers(tracked, smtp)
    link = tracked.sent[READERS[0]].unsubscribe.split("?")[0]
    async with tracked.client() as mail_client:
        response = await mail_client.post(
            f"{link}?send=999999", data={"List-Unsubscribe": "One-Click"}
        )
        assert response.status_code == 200
    # Named a send the reader never got: counted as after their last message instead.
    report = await engagement.send_report(tracked.db, tracked.settings, tracked.digest_id)
    assert report is not None and report.unsubscribed == 1
    assert (await engagement.recent_sends(tracked.db))[0].unsubscribed == 1
