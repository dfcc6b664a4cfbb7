"""In headless Chromium: a press officer sends a digest, a reader clicks a release in
the caught email, and the click shows up in the send's engagement report."""

from __future__ import annotations

import asyncio
import re
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
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = site_settings(
        tmp_path,
        sqlite_url,
        site={"base_url": url},
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
        tracking={"clicks": True, "opens": True},
    )
    asyncio.run(
        seed_admin_site(
            settings,
            admin_password=ADMIN_PASSWORD,
            reader=READER,
            reader_name="Rūta",
            title=TITLE,
            body="The government adopted the budget and the tax plan for 2026.",
            # The publisher's page: one this server answers, so the redirect can land.
            url=f"{url}/releases",
        )
    )
    app = create_app(AppContext(settings=settings), run_background=True)
    with serving(app, port, stop_timeout=70):
        yield url


def test_a_click_in_a_caught_digest_reaches_the_report(
    running_site: str,
    chromium_path: Path,  # noqa: F811 - the fixture imported above
    smtp_server: SmtpServer,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        page = browser.new_page()
        page.goto(f"{running_site}/admin/")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("navigation", name="Admin").get_by_role("link", name="Digests").click()
        page.get_by_role("button", name="Continue…").click()
        page.get_by_role("button", name="Send to 1 recipient").click()
        expect(page.locator("#progress [data-status]")).to_have_text("done", timeout=30_000)
        send_id = page.url.rstrip("/").rsplit("/", 1)[1]

        _wait_for_mail(smtp_server, 1)
        html = smtp_server.messages[0].message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert re.search(rf'href="{re.escape(running_site)}/r/[^"]+"', html)

        # The reader, in another browser, opens the email and follows the release.
        reader = browser.new_context().new_page()
        reader.set_content(html)
        reader.get_by_role("link", name=TITLE).first.click()
        expect(reader).to_have_url(f"{running_site}/releases")

        page.get_by_role("navigation", name="Admin").get_by_role("link", name="Engagement").click()
        page.get_by_role("link", name=f"Send {send_id}").click()
        expect(page.get_by_role("heading", name=f"Engagement of send {send_id}")).to_be_visible()
        expect(page.locator('[data-total="clicks"]')).to_have_text("1")
        expect(page.locator('[data-total="delivered"]')).to_have_text("1")
        ranked = page.get_by_role("region", name="Releases of this send by clicks")
        expect(ranked.get_by_role("row").nth(1)).to_contain_text(TITLE)
        expect(page.locator("#chart-send-releases rect")).to_have_count(1)
        browser.close()
