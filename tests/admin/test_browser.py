"""In headless Chromium, as a press officer: sign in, preview a digest, send it,
watch the progress page count it out, and see it arrive at an SMTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.context import AppContext
from mailer.web.app import create_app
from tests.admin.conftest import ADMIN_PASSWORD, site_settings
from tests.support.live import launch_chromium, seed_admin_site, serving
from tests.support.smtp import SmtpServer
from tests.web.test_browser import _free_port, _wait_for_mail, chromium_path  # noqa: F401

pytestmark = pytest.mark.browser
READER = "reader@example.org"
TITLE = "Government adopts the 2026 budget"


@pytest.fixture
def running_site(tmp_path: Path, sqlite_url: str, smtp_server: SmtpServer) -> Iterator[str]:
    """``mailer serve`` as in production: web app, scheduler and delivery worker."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = site_settings(
        tmp_path,
        sqlite_url,
        site={"base_url": url},
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
    )

    asyncio.run(
        seed_admin_site(
            settings,
            admin_password=ADMIN_PASSWORD,
            reader=READER,
            reader_name="Rūta",
            title=TITLE,
            body="The government adopted the budget and the tax plan for 2026.",
        )
    )
    app = create_app(AppContext(settings=settings), run_background=True)
    with serving(app, port, stop_timeout=70):
        yield url


def test_preview_send_and_follow_a_digest(
    running_site: str,
    chromium_path: Path,  # noqa: F811 - the fixture imported above
    smtp_server: SmtpServer,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        page = browser.new_page()
        failures: list[str] = []
        page.on(
            "response",
            lambda r: (
                failures.append(f"{r.status} {r.url}")
                if r.status >= 400 and not r.url.endswith("/favicon.ico")
                else None
            ),
        )
        page.on("pageerror", lambda e: failures.append(str(e)))

        page.goto(f"{running_site}/admin/")
        expect(page).to_have_url(f"{running_site}/admin/login?next=%2Fadmin%2F")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

        page.get_by_role("navigation", name="Admin").get_by_role("link", name="Digests").click()
        page.get_by_label("Subscriber's address").fill(READER)
        page.get_by_role("button", name="Preview").click()
        expect(page.locator("#preview-subject")).to_contain_text(TITLE)
        expect(page.locator("#preview-text")).to_contain_text(TITLE)
        frame = page.frame_locator("iframe.preview")
        expect(frame.locator("body")).to_contain_text(TITLE)

        page.get_by_role("link", name="← Digests").click()
        page.get_by_role("button", name="Continue…").click()
        expect(page.locator("#recipient-count")).to_have_text("1")
        page.get_by_role("button", name="Send to 1 recipient").click()

        progress = page.locator("#progress")
        expect(progress.locator("[data-status]")).to_have_text("done", timeout=30_000)
        expect(progress.locator('[data-field="sent"]')).to_have_text("1")
        expect(progress.locator('[data-field="failed"]')).to_have_text("0")
        assert failures == [], failures
        browser.close()

    _wait_for_mail(smtp_server, 1)
    received = smtp_server.messages[0]
    assert received.rcpt_tos == [READER]
    assert TITLE in str(received.message["Subject"])
