"""What is stored about readers under each setting, what their data export shows and
what erasure leaves; with every setting off no email carries a tracked link or image."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailer import engagement
from mailer import subscribers as store
from mailer.config import INDIVIDUAL_TRACKING_VERSION
from mailer.models import Click, ConsentEvent, Open, Subscriber
from tests.engagement.conftest import READERS, RELEASES, TrackedSite, send_to_readers
from tests.support.smtp import SmtpServer

BUDGET, HOSPITAL, TAX = RELEASES


@pytest.mark.parametrize("tracking_options", [{"clicks": False, "opens": False}])
async def test_with_every_setting_off_no_email_carries_a_tracked_link_or_image(
    tracked: TrackedSite, smtp: SmtpServer, tracking_options: dict[str, Any]
) -> None:
    from mailer.digest import preview_digest
    from mailer.message import NOTICE_KINDS, build_confirmation_message, build_notice_message

    await send_to_readers(tracked, smtp)
    bodies = [m.data for m in smtp.messages]
    assert len(bodies) == 2
    preview = await preview_digest(tracked.db, tracked.settings)
    assert preview is not None
    bodies.append(preview.message.data)
    settings = tracked.settings
    base = settings.site.base_url
    bodies.append(
        build_confirmation_message(settings, "new@example.org", "Ona", f"{base}/confirm/x").data
    )
    for kind in NOTICE_KINDS:
        bodies.append(
            build_notice_message(
                settings, "ona@example.org", "Ona", kind, manage_url=f"{base}/preferences/x"
            ).data
        )
    for data in bodies:
        # Quoted-printable may fold a line anywhere: look at the decoded message.
        text = _decoded(data)
        assert f"{base}/r/" not in text
        assert f"{base}/o/" not in text
    # The digest links straight to the releases.
    assert RELEASES[BUDGET] in tracked.sent[READERS[0]].html


def _decoded(data: bytes) -> str:
    import email
    import email.policy

    message: Any = email.message_from_bytes(data, policy=email.policy.default)
    return "\n".join(part.get_content() for part in message.walk() if not part.is_multipart())


async def _subscriber(site: TrackedSite, address: str) -> Subscriber:
    async with site.db.session() as session:
        subscriber = await session.scalar(select(Subscriber).where(Subscriber.email == address))
    assert subscriber is not None
    return subscriber


@pytest.mark.parametrize("tracking_options", [{"individual": True}])
async def test_individual_tracking_ties_clicks_to_readers_exports_and_erases_them(
    tracked: TrackedSite, smtp: SmtpServer, tracking_options: dict[str, Any]
) -> None:
    await send_to_readers(tracked, smtp)
    ona, jonas = (tracked.sent[address] for address in READERS)
    # Each message's links name its delivery, so they differ between readers.
    assert ona.links[BUDGET] != jonas.links[BUDGET]
    assert ona.image != jonas.image
    async with tracked.client("198.51.100.1") as browser:
        assert (await browser.get(ona.links[BUDGET])).status_code == 302
        tracked.clock.advance(timedelta(minutes=3))
        # The same reader again, from another device: still one unique click.
        assert (await browser.get(ona.links[BUDGET])).status_code == 302
        assert (await browser.get(ona.image or "")).status_code == 200
    async with tracked.client("198.51.100.2") as browser:
        assert (await browser.get(jonas.links[HOSPITAL])).status_code == 302

    report = await engagement.send_report(tracked.db, tracked.settings, tracked.digest_id)
    assert report is not None
    assert [(r.title, r.clicks, r.unique_clicks) for r in report.releases] == [
        (BUDGET, 2, 1),
        (HOSPITAL, 1, 1),
    ]
    assert report.readers_opened == 1

    reader = await _subscriber(tracked, READERS[0])
    exported = await store.export_data(tracked.db, tracked.settings, reader.id)
    assert [(c["title"], c["send"]) for c in exported["clicks"]] == [
        (BUDGET, tracked.digest_id),
        (BUDGET, tracked.digest_id),
    ]
    assert len(exported["opens"]) == 1

    await store.erase(tracked.db, tracked.settings, reader.id)
    async with tracked.db.session() as session:
        held = (
            await session.scalars(select(Click.id).where(Click.subscriber_id.is_not(None)))
        ).all()
        opens = (await session.scalars(select(Open.subscriber_id))).all()
        anonymous = (
            await session.scalars(select(Click.id).where(Click.subscriber_id.is_(None)))
        ).all()
    assert len(held) == 1  # Jonas's click only
    assert anonymous == []  # Ona's two clicks are gone, not kept without her
    assert opens == []
    after = await engagement.send_report(tracked.db, tracked.settings, tracked.digest_id)
    assert after is not None and after.clicks == report.clicks - 2


@pytest.mark.parametrize("tracking_options", [{"individual": True}])
async def test_a_click_right_after_delivery_is_a_scanners(
    tracked: TrackedSite, smtp: SmtpServer, tracking_options: dict[str, Any]
) -> None:
    await send_to_readers(tracked, smtp, wait=timedelta(0))
    async with tracked.client() as gateway:
        assert (await gateway.get(tracked.sent[READERS[0]].links[TAX])).status_code == 302
    async with tracked.db.session() as session:
        assert (await session.scalars(select(Click.discarded))).all() == ["early"]


async def test_without_individual_tracking_the_export_holds_no_clicks(
    tracked: TrackedSite, smtp: SmtpServer
) -> None:
    await send_to_readers(tracked, smtp)
    async with tracked.client() as browser:
        assert (await browser.get(tracked.sent[READERS[0]].links[BUDGET])).status_code == 302
    reader = await _subscriber(tracked, READERS[0])
    exported = await store.export_data(tracked.db, tracked.settings, reader.id)
    assert exported["clicks"] == [] and exported["opens"] == []


def test_switching_individual_tracking_on_bumps_the_consent_version(
    tmp_path: Path, sqlite_url: str
) -> None:
    from tests.engagement.conftest import tracked_settings

    before = tracked_settings(tmp_path, sqlite_url, 25)
    after = tracked_settings(tmp_path, sqlite_url, 25, individual=True)
    assert before.signup.consent_version == "1"
    assert after.signup.consent_version == "1" + INDIVIDUAL_TRACKING_VERSION


@pytest.mark.parametrize("tracking_options", [{"individual": True}])
async def test_signups_under_individual_tracking_record_the_new_wording_version(
    tracked: TrackedSite, tracking_options: dict[str, Any]
) -> None:
    await store.signup(tracked.db, tracked.settings, "new@example.org", now=tracked.clock.now())
    async with tracked.db.session() as session:
        versions = (await session.scalars(select(ConsentEvent.wording_version))).all()
    assert versions and all(v and v.endswith(INDIVIDUAL_TRACKING_VERSION) for v in versions)


@pytest.mark.parametrize(
    ("tracking_options", "says"),
    [
        ({"clicks": False, "opens": False}, "we do not record whether you open"),
        ({}, "nothing that identifies you"),
        ({"individual": True}, "together with your subscription"),
    ],
)
async def test_the_privacy_page_says_what_each_setting_records(
    tracked: TrackedSite, tracking_options: dict[str, Any], says: str
) -> None:
    async with tracked.client() as visitor:
        page = (await visitor.get("/privacy")).text
    assert says in page


async def test_engagement_pages_need_an_account(tracked: TrackedSite) -> None:
    async with tracked.client() as visitor:
        for path in ("/admin/engagement", "/admin/engagement/releases.csv"):
            response = await visitor.get(path)
            assert response.status_code == 303
    async with tracked.client() as program:
        response = await program.get("/api/engagement/releases")
        assert response.status_code == 401


def test_the_access_log_keeps_no_address_beside_a_tracked_link() -> None:
    import logging

    from mailer.web.tracking import AnonymousTrackingAccessLog

    def line(path: str) -> str:
        # The arguments uvicorn's access logger is called with.
        record = logging.LogRecord(
            "uvicorn.access",
            logging.INFO,
            __file__,
            1,
            '%s - "%s %s HTTP/%s" %d',
            ("198.51.100.7:51234", "GET", path, "1.1", 302),
            None,
        )
        assert AnonymousTrackingAccessLog().filter(record)
        return record.getMessage()

    assert line("/r/WzEsMl0.abc") == '- - "GET /r/WzEsMl0.abc HTTP/1.1" 302'
    assert line("/o/WzFd.abc/3.0123456789abcdef").startswith('- - "GET /o/')
    assert line("/releases").startswith("198.51.100.7:51234 - ")
