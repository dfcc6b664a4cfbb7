"""HTTP tests for the public pages: every rule of the signup issue, over the real app."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import select

from mailer import subscribers as store
from mailer.models import ConsentEvent, SubscriberStatus
from mailer.suppression import is_suppressed
from mailer.tokens import Purpose, make_token
from tests.web.conftest import CLIENT_IP, Site, SiteFactory, closed_port


async def status_of(site: Site, address: str) -> SubscriberStatus | None:
    found = await store.find_subscriber(site.database, address)
    return None if found is None else found.status


async def suppressed(site: Site, address: str) -> bool:
    async with site.database.session() as session:
        return await is_suppressed(session, site.settings, address)


# --- the form -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/subscribe"])
async def test_form_has_every_field_with_a_label(site: Site, path: str) -> None:
    page = await site.client.get(path)
    assert page.status_code == 200
    html = page.text
    assert "<title>Subscribe — Test Press Office</title>" in html
    assert re.search(r'<input type="email" id="email" name="email"', html)
    for field_id in ("email", "name", "consent"):
        assert f'<label for="{field_id}"' in html or f'id="{field_id}"' in html
    assert '<label for="email">' in html and '<label for="name">' in html
    for slug, name in (
        ("economy", "Economy"),
        ("health", "Health"),
        ("foreign-affairs", "Foreign affairs"),
    ):
        assert re.search(rf'name="topics" value="{slug}"[^>]*>\s*{name}', html)
    for value in ("immediately", "daily", "weekly"):
        assert f'name="frequency" value="{value}"' in html
    assert "I agree to receive press releases from Test Press Office" in html
    assert '<a href="/privacy">Privacy notice</a>' in html
    assert 'name="viewport"' in html
    assert "<script" not in html  # works without JavaScript
    assert page.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "mailer_csrf=" in page.headers["set-cookie"]
    assert "httponly" in page.headers["set-cookie"].lower()
    css = await site.client.get("/static/style.css")
    assert css.status_code == 200 and "@media" in css.text


async def test_privacy_notice_page_and_configured_link(make_site: SiteFactory) -> None:
    site = await make_site(signup={"privacy_notice": "First paragraph.\n\nWe keep little."})
    page = await site.client.get("/privacy")
    assert page.status_code == 200
    assert "<p>First paragraph.</p>" in page.text and "<p>We keep little.</p>" in page.text
    elsewhere = await make_site(signup={"privacy_url": "https://example.org/privacy"})
    assert 'href="https://example.org/privacy"' in (await elsewhere.client.get("/")).text


async def test_site_templates_override_the_shipped_ones(make_site: SiteFactory, tmp_path) -> None:
    override = tmp_path / "site-templates" / "web"
    override.mkdir(parents=True)
    (override / "subscribe_sent.html").write_text(
        '{% extends "web/base.html" %}{% block content %}<h1>Merci!</h1>{% endblock %}'
    )
    site = await make_site(site={"templates_dir": str(tmp_path / "site-templates")})
    response = await site.subscribe("ona@example.org")
    assert response.status_code == 200 and "<h1>Merci!</h1>" in response.text


# --- double opt-in and consent ------------------------------------------------------------


async def test_signup_stores_pending_with_consent_and_mails_a_signed_link(site: Site) -> None:
    response = await site.subscribe(
        "Ona@Example.org",
        name="Ona Šimonytė",
        topics=["economy", "health"],
        frequency="weekly",
        client=site.client,
    )
    assert response.status_code == 200
    assert "Check your inbox" in response.text
    subscriber = await store.find_subscriber(site.database, "ona@example.org")
    assert subscriber is not None
    assert (subscriber.status, subscriber.name, subscriber.topics, subscriber.frequency.value) == (
        SubscriberStatus.PENDING,
        "Ona Šimonytė",
        ("economy", "health"),
        "weekly",
    )
    async with site.database.session() as session:
        [event] = (await session.scalars(select(ConsentEvent))).all()
    assert event.action == "signup"
    assert event.ip == CLIENT_IP
    assert event.user_agent and "python-httpx" in event.user_agent
    assert event.form_url == "http://testserver/subscribe"
    assert event.wording_version == "1"
    assert abs(event.at - site.clock.now()) < timedelta(seconds=1)

    [mail] = site.mails("Ona@example.org")
    assert "Ona" in str(mail["To"])
    confirm = site.link(mail, "confirm")
    # A GET (a mail scanner's prefetch) shows a button and changes nothing.
    page = await site.client.get(confirm)
    assert page.status_code == 200 and "Confirm subscription" in page.text
    assert await status_of(site, "ona@example.org") is SubscriberStatus.PENDING
    done = await site.client.post(confirm, data={"csrf_token": await site.token()})
    assert done.status_code == 200 and "You are subscribed" in done.text
    assert await status_of(site, "ona@example.org") is SubscriberStatus.CONFIRMED
    # Single use: the same link now only says so.
    again = await site.client.post(confirm, data={"csrf_token": await site.token()})
    assert again.status_code == 200 and "already subscribed" in again.text


async def test_confirm_post_needs_the_csrf_token(site: Site) -> None:
    await site.subscribe("ona@example.org")
    confirm = site.link(site.mails()[0], "confirm")
    assert (await site.client.post(confirm, data={})).status_code == 403
    assert await status_of(site, "ona@example.org") is SubscriberStatus.PENDING


async def test_expired_and_broken_confirmation_links(site: Site, monkeypatch) -> None:
    await site.subscribe("ona@example.org")
    confirm = site.link(site.mails()[0], "confirm")
    assert (await site.client.get(confirm[:-3] + "xyz")).status_code == 400
    assert (await site.client.get("/confirm/" + "a" * 5000)).status_code == 400
    subscriber = await store.find_subscriber(site.database, "ona@example.org")
    assert subscriber is not None
    async with site.database.session() as session:
        from mailer.models import Subscriber

        nonce = (await session.get(Subscriber, subscriber.id)).confirm_nonce  # type: ignore[union-attr]
    issued = int(time.time() - timedelta(hours=49).total_seconds())
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: issued)
    expired = make_token(site.settings, Purpose.CONFIRM, subscriber.id, nonce)
    monkeypatch.undo()
    page = await site.client.get(f"/confirm/{expired}")
    assert page.status_code == 410 and "expired" in page.text
    posted = await site.client.post(f"/confirm/{expired}", data={"csrf_token": await site.token()})
    assert posted.status_code == 410
    assert await status_of(site, "ona@example.org") is SubscriberStatus.PENDING


async def test_known_addresses_look_exactly_like_new_ones(site: Site) -> None:
    fresh = await site.subscribe("new@example.org")
    await site.subscribe("pending@example.org")
    again_pending = await site.subscribe("pending@example.org")
    await store.add(site.database, site.settings, "member@example.org", confirmed=True)
    member = await site.subscribe("member@example.org")

    def shape(response, address: str) -> tuple[int, str, str]:
        return (
            response.status_code,
            response.headers["content-type"],
            response.text.replace(address, "ADDRESS"),
        )

    assert shape(fresh, "new@example.org") == shape(again_pending, "pending@example.org")
    assert shape(fresh, "new@example.org") == shape(member, "member@example.org")
    # The confirmed member's choices are untouched; they get a notice, not a link.
    [notice] = site.mails("member@example.org")
    assert "already subscribed" in notice.get_body(("plain",)).get_content()
    assert len(site.mails("pending@example.org")) == 1


async def test_one_confirmation_mail_per_address_per_ten_minutes(site: Site) -> None:
    for _ in range(3):
        assert (await site.subscribe("ona@example.org")).status_code == 200
    assert len(site.mails("ona@example.org")) == 1
    site.clock.advance(timedelta(minutes=9))
    await site.subscribe("ona@example.org")
    assert len(site.mails("ona@example.org")) == 1
    site.clock.advance(timedelta(minutes=1, seconds=1))
    await site.subscribe("ona@example.org")
    assert len(site.mails("ona@example.org")) == 2


async def test_smtp_down_at_signup_loses_nothing(make_site: SiteFactory) -> None:
    site = await make_site(smtp_port=closed_port())
    response = await site.subscribe("ona@example.org")
    assert response.status_code == 200 and "Check your inbox" in response.text
    subscriber = await store.find_subscriber(site.database, "ona@example.org")
    assert subscriber is not None and subscriber.status is SubscriberStatus.PENDING
    assert site.mails() == []
    working = site.settings.model_copy(
        update={"smtp": site.settings.smtp.model_copy(update={"port": site.smtp.port})}
    )
    assert await store.retry_queued_mail(site.database, working) == 1
    assert len(site.mails("ona@example.org")) == 1


# --- bad input and abuse ------------------------------------------------------------------


async def test_invalid_address_reshows_form_with_values_kept(site: Site) -> None:
    response = await site.subscribe(
        "ona(at)example.org", name="Ona", topics=["health"], frequency="weekly"
    )
    assert response.status_code == 422
    assert "This is not a valid email address" in response.text
    assert 'value="ona(at)example.org"' in response.text
    assert 'value="Ona"' in response.text
    assert re.search(r'value="health"\s+aria-describedby="topics-hint"\s+checked', response.text)
    assert re.search(r'value="weekly"\s+checked', response.text)
    assert site.mails() == []


async def test_addresses_that_cannot_be_mailed_are_explained(site: Site) -> None:
    response = await site.subscribe("Žygimantas@example.lt", name="Žygimantas")
    assert response.status_code == 422
    assert "Internationalized characters before the @-sign are not supported" in response.text
    idn = await site.subscribe("ona@žemėlapis.lt")
    assert idn.status_code == 200


async def test_consent_box_is_required(site: Site) -> None:
    token = await site.token()
    response = await site.client.post(
        "/", data={"csrf_token": token, "email": "ona@example.org", "name": "Ona"}
    )
    assert response.status_code == 422 and "tick the box" in response.text
    assert await status_of(site, "ona@example.org") is None


async def test_every_wrong_field_is_shown_at_once(site: Site) -> None:
    response = await site.client.post(
        "/",
        data={
            "csrf_token": await site.token(),
            "email": "ona(at)example.org",
            "name": "Ona\r\nBcc: victim@example.org",
            "topics": ["astrology"],
            "frequency": "hourly",
        },
    )
    assert response.status_code == 422
    summary = response.text.split('class="error-summary"', 1)[1].split("</ul>", 1)[0]
    for field, message in [
        ("email", "This is not a valid email address"),
        ("name", "line breaks or control characters"),
        ("topics", "Choose topics from the list."),
        ("frequency", "Choose how often"),
        ("consent", "tick the box"),
    ]:
        assert f'href="#{field}"' in summary and message in summary, field
    assert site.mails() == []
    assert await status_of(site, "ona@example.org") is None


async def test_preferences_show_every_wrong_field_at_once_and_keep_the_old_choices(
    site: Site,
) -> None:
    preferences = await confirmed_member(site)
    refused = await site.client.post(
        preferences,
        data={
            "csrf_token": await site.token(),
            "name": "a\nb",
            "topics": ["astrology"],
            "frequency": "hourly",
        },
    )
    assert refused.status_code == 422
    summary = refused.text.split('class="error-summary"', 1)[1].split("</ul>", 1)[0]
    assert 'href="#name"' in summary and 'href="#topics"' in summary
    assert 'href="#frequency"' in summary
    member = await store.find_subscriber(site.database, "ona@example.org")
    assert member is not None and (member.name, member.topics) == ("Ona", ("health",))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "Ona\r\nBcc: victim@example.org"}, 422),
        ({"name": "Ona\x00"}, 422),
        ({"name": "Ona\u2028Bcc: x@example.org"}, 422),
        ({"name": "x" * 201}, 422),
        ({"email": "ona@example.org\r\nBcc: victim@example.org"}, 422),
        ({"email": "o" * 250 + "@example.org"}, 422),
        ({"frequency": "hourly"}, 422),
        ({"topics": ["astrology"]}, 422),
        ({"name": "x" * 10_000}, 413),
    ],
)
async def test_header_injection_and_overlong_fields_are_refused(
    site: Site, fields: dict, expected: int
) -> None:
    address = fields.pop("email", "ona@example.org")
    response = await site.subscribe(address, **fields)
    assert response.status_code == expected
    assert site.mails() == []
    assert await status_of(site, "ona@example.org") is None


async def test_csrf_token_missing_or_wrong_is_403(site: Site) -> None:
    good = await site.token()
    missing = await site.client.post("/", data={"email": "a@example.org", "consent": "yes"})
    assert missing.status_code == 403
    forged = await site.client.post(
        "/", data={"email": "a@example.org", "consent": "yes", "csrf_token": good[:-2] + "xx"}
    )
    assert forged.status_code == 403
    # A token taken from another browser does not match this browser's cookie.
    other = site.new_client()
    stolen = await other.post(
        "/", data={"email": "a@example.org", "consent": "yes", "csrf_token": good}
    )
    assert stolen.status_code == 403
    no_cookie = site.new_client(cookies=False)
    assert (
        await no_cookie.post(
            "/", data={"email": "a@example.org", "consent": "yes", "csrf_token": good}
        )
    ).status_code == 403
    assert await status_of(site, "a@example.org") is None


async def test_honeypot_answers_like_success_and_stores_nothing(site: Site) -> None:
    real = await site.subscribe("real@example.org")
    bot = await site.subscribe("bot@example.org", website="http://spam.example")
    assert bot.status_code == real.status_code == 200
    assert bot.text.replace("bot@", "X@") == real.text.replace("real@", "X@").replace(
        "<strong>real@example.org</strong>", "<strong>X@example.org</strong>"
    )
    assert await status_of(site, "bot@example.org") is None
    assert site.mails("bot@example.org") == []


async def test_rate_limit_per_ip_answers_429_with_retry_after(make_site: SiteFactory) -> None:
    site = await make_site(signup={"rate_limit_per_ip": 3, "rate_limit_window": "1h"})
    for n in range(3):
        assert (await site.subscribe(f"reader{n}@example.org")).status_code == 200
    blocked = await site.subscribe("reader9@example.org")
    assert blocked.status_code == 429
    assert 3500 <= int(blocked.headers["retry-after"]) <= 3600
    assert 'value="reader9@example.org"' in blocked.text
    assert await status_of(site, "reader9@example.org") is None
    other_ip = site.new_client(ip="198.51.100.99")
    assert (await site.subscribe("reader9@example.org", client=other_ip)).status_code == 200
    site.clock.advance(timedelta(hours=1, seconds=1))
    assert (await site.subscribe("reader10@example.org")).status_code == 200


async def test_rate_limit_per_address_spans_ips(make_site: SiteFactory) -> None:
    site = await make_site(signup={"rate_limit_per_address": 2})
    for n in range(2):
        client = site.new_client(ip=f"198.51.100.{n + 1}")
        assert (await site.subscribe("ona@example.org", client=client)).status_code == 200
    client = site.new_client(ip="198.51.100.50")
    blocked = await site.subscribe("ONA@example.org", client=client)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=zzz", b"--zzz\r\nContent-Disposition: form-data\r\n\r\n"),
        ("multipart/form-data", b"garbage"),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; "
         b'name="email"; filename="x.txt"\r\n\r\nfile\r\n--b--\r\n'),
        ("application/x-www-form-urlencoded", b"email=%ff%fe&name=%00&csrf_token=%%%"),
        ("application/x-www-form-urlencoded", b"\xff\xfe\x00" * 100),
        ("application/json", b'{"email": "a@example.org"}'),
        ("text/plain", b""),
    ],
)  # fmt: skip
async def test_malformed_bodies_get_4xx_pages(site: Site, content_type: str, body: bytes) -> None:
    for path in ("/", "/subscribe"):
        response = await site.client.post(
            path, content=body, headers={"content-type": content_type}
        )
        assert 400 <= response.status_code < 500, response.text
        assert "Traceback" not in response.text


async def test_oversized_body_is_refused(site: Site) -> None:
    response = await site.client.post(
        "/",
        content=b"email=" + b"a" * 200_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no-such-page", 404),
        ("DELETE", "/", 405),
        ("PUT", "/subscribe", 405),
        ("GET", "/preferences/", 404),
        ("GET", "/preferences/%00%ff", 400),
        ("GET", "/unsubscribe/Ž", 400),
        ("GET", "/static/../config.yaml", 404),
    ],
)
async def test_unknown_pages_and_methods_are_friendly(
    site: Site, method: str, path: str, status: int
) -> None:
    response = await site.client.request(method, path)
    assert response.status_code == status
    assert "text/html" in response.headers["content-type"] or status == 404
    assert "Traceback" not in response.text


# --- preferences, export, erase -------------------------------------------------------


async def confirmed_member(site: Site, address: str = "ona@example.org") -> str:
    """Subscribe and confirm through the pages; returns the preferences path."""
    await site.subscribe(address, name="Ona", topics=["health"])
    confirm = site.link(site.mails(address)[-1], "confirm")
    done = await site.client.post(confirm, data={"csrf_token": await site.token()})
    match = re.search(r'href="(/preferences/[^"]+)"', done.text)
    assert match
    return match.group(1)


async def test_preferences_change_topics_frequency_and_name(site: Site) -> None:
    preferences = await confirmed_member(site)
    page = await site.client.get(preferences)
    assert page.status_code == 200 and "ona@example.org" in page.text
    assert re.search(r'value="health"\s+aria-describedby="topics-hint"\s+checked', page.text)
    saved = await site.client.post(
        preferences,
        data={
            "csrf_token": await site.token(),
            "name": "Ona Šimonytė",
            "topics": ["economy", "foreign-affairs"],
            "frequency": "immediately",
        },
    )
    assert saved.status_code == 200 and "Your choices are saved" in saved.text
    member = await store.find_subscriber(site.database, "ona@example.org")
    assert member is not None
    assert (member.name, member.topics, member.frequency.value) == (
        "Ona Šimonytė",
        ("economy", "foreign-affairs"),
        "immediately",
    )
    refused = await site.client.post(
        preferences, data={"csrf_token": await site.token(), "name": "a\nb", "frequency": "daily"}
    )
    assert refused.status_code == 422
    assert (await site.client.post(preferences, data={"name": "X"})).status_code == 403
    forged = make_token(site.settings, Purpose.MANAGE, member.id, member.link_key)[:-4] + "AAAA"
    assert (await site.client.get(f"/preferences/{forged}")).status_code == 400


async def test_export_download_holds_the_subscribers_data(site: Site) -> None:
    preferences = await confirmed_member(site)
    download = await site.client.get(f"{preferences}/data.json")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("application/json")
    assert "attachment" in download.headers["content-disposition"]
    data = json.loads(download.content)
    assert data["subscriber"]["email"] == "ona@example.org"
    assert [c["action"] for c in data["consent_records"]] == ["signup", "confirm"]
    assert data["consent_records"][0]["ip"] == CLIENT_IP


async def test_erase_removes_personal_data_and_suppresses(site: Site) -> None:
    preferences = await confirmed_member(site)
    page = await site.client.get(f"{preferences}/erase")
    assert page.status_code == 200 and "cannot be undone" in page.text
    assert await status_of(site, "ona@example.org") is SubscriberStatus.CONFIRMED
    assert (await site.client.post(f"{preferences}/erase", data={})).status_code == 403
    erased = await site.client.post(f"{preferences}/erase", data={"csrf_token": await site.token()})
    assert erased.status_code == 200 and "Your data is erased" in erased.text
    assert await status_of(site, "ona@example.org") is None
    assert await suppressed(site, "ona@example.org")
    async with site.database.session() as session:
        events = (await session.scalars(select(ConsentEvent))).all()
    assert all(e.ip is None and e.user_agent is None and e.subscriber_id is None for e in events)
    gone = await site.client.get(preferences)
    assert gone.status_code == 410 and "no longer works" in gone.text


# --- unsubscribe ------------------------------------------------------------------------


async def unsubscribe_path(site: Site, preferences: str) -> str:
    page = await site.client.get(preferences)
    match = re.search(r'action="(/unsubscribe/[^"]+)"', page.text)
    assert match
    return match.group(1)


async def test_unsubscribe_get_changes_nothing_and_one_click_post_works(site: Site) -> None:
    path = await unsubscribe_path(site, await confirmed_member(site))
    page = await site.client.get(path)
    assert page.status_code == 200 and page.text.count("<button") == 1
    assert await status_of(site, "ona@example.org") is SubscriberStatus.CONFIRMED
    provider = site.new_client(ip="192.0.2.1", cookies=False)
    response = await provider.post(path, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert "location" not in response.headers
    assert await status_of(site, "ona@example.org") is SubscriberStatus.UNSUBSCRIBED
    assert await suppressed(site, "ona@example.org")
    again = await provider.post(path, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200


async def test_one_click_accepts_multipart_and_bare_bodies(site: Site) -> None:
    first = await unsubscribe_path(site, await confirmed_member(site, "a@example.org"))
    second = await unsubscribe_path(site, await confirmed_member(site, "b@example.org"))
    provider = site.new_client(ip="192.0.2.1", cookies=False)
    multipart = await provider.post(first, files={"List-Unsubscribe": (None, "One-Click")})
    assert multipart.status_code == 200
    bare = await provider.post(second, content=b"List-Unsubscribe=One-Click")
    assert bare.status_code == 200
    assert await status_of(site, "a@example.org") is SubscriberStatus.UNSUBSCRIBED
    assert await status_of(site, "b@example.org") is SubscriberStatus.UNSUBSCRIBED


async def test_unsubscribe_post_without_the_one_click_body_changes_nothing(site: Site) -> None:
    path = await unsubscribe_path(site, await confirmed_member(site))
    response = await site.client.post(path, data={"something": "else"})
    assert response.status_code == 400
    assert await status_of(site, "ona@example.org") is SubscriberStatus.CONFIRMED


async def test_resubscribing_after_unsubscribe_needs_a_new_confirmation(site: Site) -> None:
    path = await unsubscribe_path(site, await confirmed_member(site))
    await site.client.post(path, data={"List-Unsubscribe": "One-Click"})
    site.clock.advance(timedelta(minutes=11))
    await site.subscribe("ona@example.org")
    assert await status_of(site, "ona@example.org") is SubscriberStatus.PENDING
    assert await suppressed(site, "ona@example.org")
    confirm = site.link(site.mails("ona@example.org")[-1], "confirm")
    await site.client.post(confirm, data={"csrf_token": await site.token()})
    assert await status_of(site, "ona@example.org") is SubscriberStatus.CONFIRMED
    assert not await suppressed(site, "ona@example.org")
