"""Section 4 of the review: the lower-severity findings, one test per attack."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from mailer import accounts
from mailer import subscribers as store
from mailer.cli import main
from mailer.config import ConfigError, load_settings
from mailer.models import ConsentEvent, Digest, DigestStatus
from tests.admin.conftest import csrf_token, post_form
from tests.security.conftest import (
    ADMIN_PASSWORD,
    EDITOR_PASSWORD,
    WEBHOOK_SECRET,
    AdminSite,
    signed_in,
)
from tests.web.conftest import Site, SiteFactory

FAR_FUTURE = ["9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59-14:00", "9999-12-31T12:00:00+14:00"]


# --- far-future dates ------------------------------------------------------------------


async def test_far_future_schedule_from_an_editor_token_is_refused(admin: AdminSite) -> None:
    token, _ = await accounts.create_token(admin.db, "newsroom", "editor")
    headers = {"authorization": f"Bearer {token}"}
    async with admin.client() as api:
        for value in FAR_FUTURE:
            answer = await api.post("/api/digests", json={"scheduled_for": value}, headers=headers)
            assert answer.status_code == 422, (value, answer.status_code, answer.text)
            assert "scheduled_for" in answer.json()["error"]
        for value in FAR_FUTURE:
            listing = await api.get("/api/releases", params={"since": value}, headers=headers)
            assert listing.status_code == 422, (value, listing.status_code)
        soon = await api.post(
            "/api/digests", json={"scheduled_for": "2025-03-11T09:00:00+00:00"}, headers=headers
        )
        assert soon.status_code == 201
    async with admin.db.session() as session:
        stored = (await session.scalars(select(Digest.scheduled_for))).all()
    assert len(stored) == 1


async def test_admin_forms_refuse_far_future_dates(admin: AdminSite) -> None:
    editor = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    scheduled = await post_form(
        editor,
        "/admin/digests",
        "/admin/digests/schedule",
        {"frequency": "all", "at": "9999-12-31T23:59"},
    )
    assert scheduled.status_code == 303
    flash = await editor.get(scheduled.headers["location"])
    assert "at most a year ahead" in flash.text
    release = await post_form(
        editor,
        "/admin/releases/new",
        "/admin/releases/new",
        {"title": "Budget", "body": "The budget.", "published": "9999-12-31T23:59"},
    )
    assert release.status_code == 422 and "not in the future" in release.text
    async with admin.db.session() as session:
        assert (await session.scalars(select(Digest))).all() == []


async def test_digest_pages_render_a_stored_far_future_date(admin: AdminSite) -> None:
    """A value stored before the checks existed must not take the pages down."""
    async with admin.db.transaction() as session:
        session.add(
            Digest(
                kind="manual",
                frequency="all",
                status=DigestStatus.QUEUED,
                scheduled_for=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                created_by="token:newsroom",
            )
        )
    editor = await signed_in(admin, "eddie", EDITOR_PASSWORD)
    listing = await editor.get("/admin/digests")
    assert listing.status_code == 200 and "9999-12-31" in listing.text
    detail = await editor.get(re.search(r'href="(/admin/digests/\d+)"', listing.text).group(1))  # type: ignore[union-attr]
    assert detail.status_code == 200


# --- deeply nested JSON ------------------------------------------------------------------


async def test_deeply_nested_json_answers_400_not_500(admin: AdminSite) -> None:
    token, _ = await accounts.create_token(admin.db, "ops", "admin")
    nested = "[" * 100_000
    async with admin.client() as api:
        subscribers = await api.post(
            "/api/subscribers",
            content=nested,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        assert subscribers.status_code == 400, subscribers.text
        assert "nested too deeply" in subscribers.json()["error"]
        moderate = await api.post(
            "/api/subscribers",
            content="[" * 500 + "]" * 500,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        assert moderate.status_code == 400
        bounce = await api.post(
            "/webhooks/bounce",
            content=nested,
            headers={
                "authorization": f"Bearer {WEBHOOK_SECRET}",
                "content-type": "application/json",
            },
        )
        assert bounce.status_code == 400, bounce.text


# --- admin user enumeration ----------------------------------------------------------------


def _error_of(page: httpx.Response) -> str:
    match = re.search(r'<p class="flash flash-error" role="alert">(.*?)</p>', page.text, re.S)
    assert match, page.text
    return match.group(1)


async def test_login_answers_do_not_tell_real_users_from_unknown_ones(
    admin: AdminSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes: list[str] = []
    real_verify = accounts._verify

    async def counting(password_hash: str, password: str) -> bool:
        hashes.append(password_hash)
        return await real_verify(password_hash, password)

    monkeypatch.setattr(accounts, "_verify", counting)
    from tests.admin.conftest import login

    async with admin.client() as attacker:
        for _ in range(admin.settings.admin.lockout_threshold):
            await login(attacker, "eddie", "wrong guess")
        hashes.clear()
        locked = await login(attacker, "eddie", "another guess")
        hashes_for_locked = len(hashes)
        hashes.clear()
        unknown = await login(attacker, "nobody-here", "another guess")
        hashes_for_unknown = len(hashes)
        assert locked.status_code == unknown.status_code == 401
        assert _error_of(locked) == _error_of(unknown)
        # The same work for both: one password hash each (the timing the review saw
        # was 3 ms for a locked account against 150 ms for an unknown name).
        assert hashes_for_locked == hashes_for_unknown == 1
        # The owner, who knows the password, is told about the lock.
        owner = await login(attacker, "eddie", EDITOR_PASSWORD)
        assert owner.status_code == 401 and "is locked" in _error_of(owner)


# --- CSRF bound to the session ------------------------------------------------------------


async def test_planted_csrf_cookie_cannot_forge_an_admin_post(admin: AdminSite) -> None:
    """A sibling subdomain plants its own CSRF cookie in the admin's browser and
    posts a form with the matching token it fetched for itself."""
    async with admin.client() as attacker:
        page = await attacker.get("/admin/login")
        planted_cookie = attacker.cookies["mailer_csrf"]
        planted_token = csrf_token(page.text)
    victim = await signed_in(admin, "alice", ADMIN_PASSWORD)
    victim.cookies.set("mailer_csrf", planted_cookie, path="/")
    forged = await victim.post(
        "/admin/users/new",
        data={
            "username": "mallory",
            "password": "mallory password 1",
            "role": "admin",
            "csrf_token": planted_token,
        },
    )
    assert forged.status_code == 403
    assert "mallory" not in {u.username for u in await accounts.list_users(admin.db)}
    # The admin's own form still works.
    own = await post_form(
        victim,
        "/admin/users",
        "/admin/users/new",
        {"username": "carol", "password": "carol password 1", "role": "editor"},
    )
    assert own.status_code in (200, 303)


async def test_public_csrf_cookie_cannot_be_planted_by_a_sibling_over_https(
    make_site: SiteFactory, database_url: str
) -> None:
    site = await make_site(database_url, site={"base_url": "https://press.example.org"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=site.app, client=("203.0.113.7", 4000)),
        base_url="https://press.example.org",
    ) as browser:
        page = await browser.get("/")
        cookie = page.headers["set-cookie"]
        # __Host-: browsers take it only from this host, never from a sibling's Domain=.
        assert cookie.startswith("__Host-mailer_csrf=")
        assert "secure" in cookie.lower() and "path=/" in cookie.lower()
        assert "domain" not in cookie.lower()
        # A cookie without the prefix (all a sibling can plant) is not the secret.
        token = csrf_token(page.text)
        value = browser.cookies["__Host-mailer_csrf"]
        browser.cookies.clear()
        browser.cookies.set("mailer_csrf", value, domain="press.example.org")
        refused = await browser.post(
            "/subscribe", data={"email": "a@example.org", "consent": "y", "csrf_token": token}
        )
        assert refused.status_code == 403


# --- content injection through the name --------------------------------------------------


async def test_confirmation_mail_does_not_print_the_name_typed_into_the_form(
    public: Site,
) -> None:
    for hostile in ("Hello <http://evil.example/x>", "see evil.example now", "www.evil"):
        answer = await public.subscribe("victim@example.org", name=hostile)
        assert answer.status_code == 422, hostile
        assert "must not contain a web or email address" in answer.text
    assert public.mails("victim@example.org") == []
    await public.subscribe("victim@example.org", name="Ona Plain")
    mail = public.mails("victim@example.org")[-1]
    body = mail.get_body(("plain",)).get_content()
    assert "Ona" not in body and "Ona" not in str(mail["To"])
    # A second request for the pending address does not replace the name.
    public.clock.advance(public.settings.signup.confirmation_interval)
    other = public.new_client(ip="198.51.100.20")
    await public.subscribe("victim@example.org", client=other, name="Mallory Writes")
    view = await store.find_subscriber(public.database, "victim@example.org")
    assert view is not None and view.name == "Ona Plain"


async def test_sub_addressed_variants_share_one_mailbox_limit(public: Site) -> None:
    limit = public.settings.signup.rate_limit_per_address
    for number in range(limit + 5):
        client = public.new_client(ip=f"198.51.100.{number + 1}")
        await public.subscribe(f"victim+{number}@example.org", client=client)
    sent = [m for m in public.smtp.messages if any(r.startswith("victim") for r in m.rcpt_tos)]
    assert len(sent) == limit


# --- configuration that cannot work ------------------------------------------------------


@pytest.mark.parametrize("problem", ["templates_dir", "data_dir"])
def test_unusable_folders_stop_the_start_with_one_line(tmp_path: Path, problem: str) -> None:
    raw: dict[str, object] = {"database": {"url": f"sqlite:///{tmp_path}/m.db"}}
    if problem == "templates_dir":
        raw["site"] = {"templates_dir": "/nonexistent"}
        raw["data_dir"] = str(tmp_path / "data")
    else:
        (tmp_path / "a-file").write_text("not a folder")
        raw["data_dir"] = str(tmp_path / "a-file")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=problem):
        load_settings(config)
    result = CliRunner().invoke(main, ["--config", str(config), "subscribers", "list"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and problem in result.output


# --- proxies ------------------------------------------------------------------------------


async def _recorded_ip(site: Site) -> str | None:
    async with site.database.session() as session:
        event = await session.scalar(select(ConsentEvent).order_by(ConsentEvent.id.desc()))
    assert event is not None
    return event.ip


async def test_forwarded_for_is_read_only_from_trusted_proxies(
    public: Site, caplog: pytest.LogCaptureFixture
) -> None:
    forged = public.new_client(ip="203.0.113.50")
    forged.headers["x-forwarded-for"] = "192.0.2.1"
    await public.subscribe("a@example.org", client=forged)
    assert await _recorded_ip(public) == "203.0.113.50"

    proxied = public.new_client(ip="127.0.0.1")
    proxied.headers["x-forwarded-for"] = "192.0.2.99"
    await public.subscribe("b@example.org", client=proxied)
    assert await _recorded_ip(public) == "192.0.2.99"

    with caplog.at_level(logging.WARNING, logger="mailer.web.proxies"):
        bare = public.new_client(ip="127.0.0.1")
        await public.subscribe("c@example.org", client=bare)
    assert any("without X-Forwarded-For" in r.getMessage() for r in caplog.records)
