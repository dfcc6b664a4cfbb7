"""A reader in headless Chromium (JavaScript off): from a digest caught by a real
SMTP server, "View in browser" opens the digest; from there each release has its
page; the archive's search works; signup is one click away. At phone and desktop
widths, without sideways scrolling and without a CSP violation."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from mailer.context import AppContext
from mailer.models import utcnow
from mailer.send import Worker, start_digest
from tests.digest.conftest import add_release, add_subscriber
from tests.support.smtp import SmtpServer
from tests.web.test_browser import LiveSite, _wait_for_mail, chromium_path, live_site  # noqa: F401

pytestmark = pytest.mark.browser


def _send_a_digest(site: LiveSite) -> None:
    async def send() -> None:
        async with AppContext(settings=site.settings).database(prepare=False) as database:
            async with database.transaction() as session:
                await add_subscriber(session, "ona@example.lt", name="Ona", topics=["health"])
                await add_release(
                    session,
                    "Naujoji ligoninė Vilniuje atidaryta",
                    topics=["health"],
                    published_at=utcnow() - timedelta(hours=2),
                    html="<p>The new <strong>hospital</strong> opened today.</p>",
                    publisher="Ministry of Health",
                    sources=[
                        ("Ministry of Health", "https://sam.example.lt/1"),
                        ("Government", "https://gov.example.lt/2"),
                    ],
                )
                await add_release(
                    session,
                    "Vaccination campaign starts",
                    topics=["health"],
                    published_at=utcnow() - timedelta(hours=1),
                )
            await start_digest(database, site.settings)
            await Worker(database, site.settings, poll_interval=0.05).run(until_empty=True)

    # Playwright's sync API keeps an event loop running in this thread.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result()


@pytest.mark.parametrize(
    "viewport", [{"width": 375, "height": 800}, {"width": 1280, "height": 900}]
)
def test_view_in_browser_from_a_caught_digest(
    chromium_path: Path,  # noqa: F811
    live_site: LiveSite,  # noqa: F811
    smtp_server: SmtpServer,
    viewport: dict,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    _send_a_digest(live_site)
    _wait_for_mail(smtp_server, 1)
    mail = smtp_server.messages[0].message
    html = mail.get_body(("html",)).get_content()
    link = re.search(r'<a href="([^"]+)"[^>]*>View in browser</a>', html)
    assert link, html
    web_url = link.group(1)
    assert web_url.startswith(f"{live_site.url}/digests/")
    assert f"View in browser: {web_url}" in mail.get_body(("plain",)).get_content()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport=viewport, java_script_enabled=False)
            problems: list[str] = []
            page.on(
                "console",
                lambda message: (
                    problems.append(message.text)
                    if message.type == "error" and "404" not in message.text
                    else None
                ),
            )
            # Every request but the browser's own favicon guess succeeds.
            page.on(
                "response",
                lambda response: (
                    problems.append(f"{response.status} {response.url}")
                    if response.status >= 400 and not response.url.endswith("/favicon.ico")
                    else None
                ),
            )

            def fits() -> None:
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]

            page.goto(web_url)
            expect(
                page.get_by_role("heading", name="Press releases from Test Press Office")
            ).to_be_visible()
            expect(page.get_by_text("ona@example.lt")).to_have_count(0)
            fits()

            page.get_by_role("link", name="Naujoji ligoninė Vilniuje atidaryta").click()
            expect(page.get_by_role("heading", level=1)).to_have_text(
                "Naujoji ligoninė Vilniuje atidaryta"
            )
            expect(page.locator(".release-body strong")).to_have_text("hospital")
            expect(page.get_by_role("link", name="Government")).to_have_attribute(
                "href", "https://gov.example.lt/2"
            )
            assert re.search(r"/releases/\d+-naujoji-ligonine-vilniuje-atidaryta$", page.url)
            fits()

            page.get_by_role("link", name="All releases").click()
            page.get_by_label("Search").fill("ligonine")
            page.get_by_role("button", name="Search").click()
            expect(page.locator(".release-list h2")).to_have_text(
                ["Naujoji ligoninė Vilniuje atidaryta"]
            )
            fits()

            page.get_by_role("link", name="Subscribe", exact=True).first.click()
            expect(page).to_have_title("Subscribe — Test Press Office")
            # Stylesheet and pages load under the strict CSP: nothing was refused.
            assert not problems, problems
        finally:
            browser.close()
