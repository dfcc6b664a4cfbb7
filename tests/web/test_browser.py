"""A person in headless Chromium: subscribe, confirm from the mail, change
preferences, unsubscribe. The app runs under uvicorn on a loopback port and its
mail goes to a real SMTP server inside the test."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailer import subscribers as store
from mailer.config import Settings
from mailer.context import AppContext
from mailer.models import SubscriberStatus
from mailer.web.app import create_app
from tests.conftest import IN_CI, make_settings
from tests.support.live import launch_chromium, serving
from tests.support.smtp import SmtpServer
from tests.web.conftest import TOPICS

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


@dataclass
class LiveSite:
    url: str
    settings: Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required under CI (.ci/run installs chromium)")
        pytest.skip(f"{CHROMIUM} is not installed; install the Debian chromium package")
    return CHROMIUM


@pytest.fixture
def live_site(tmp_path: Path, sqlite_url: str, smtp_server: SmtpServer) -> Iterator[LiveSite]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        tmp_path,
        sqlite_url,
        topics=TOPICS,
        site={"base_url": url},
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
    )
    app = create_app(AppContext(settings=settings), run_background=False)
    with serving(app, port):
        yield LiveSite(url, settings)


def _wait_for_mail(smtp_server: SmtpServer, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(smtp_server.messages) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"expected {count} mail(s), got {len(smtp_server.messages)}")
        time.sleep(0.05)


def _subscriber(settings: Settings, address: str) -> store.SubscriberView | None:
    async def read() -> store.SubscriberView | None:
        async with AppContext(settings=settings).database(prepare=False) as database:
            return await store.find_subscriber(database, address)

    # Playwright's sync API keeps an event loop running in this thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result()


@pytest.mark.parametrize(
    "viewport", [{"width": 390, "height": 844}, {"width": 1280, "height": 900}]
)
def test_subscribe_confirm_change_preferences_unsubscribe(
    chromium_path: Path, live_site: LiveSite, smtp_server: SmtpServer, viewport: dict
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        try:
            page = browser.new_page(viewport=viewport, java_script_enabled=False)
            page.goto(live_site.url + "/")
            expect(page).to_have_title("Subscribe — Test Press Office")
            page.get_by_label("Email address").fill("Zygimantas@example.lt")
            page.get_by_label("Name").fill("Žygimantas Šimonytė")
            page.get_by_label("Health").check()
            page.get_by_label("Once a week").check()
            # The form fits the screen: no sideways scrolling on a phone.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= viewport["width"]
            page.get_by_label("I agree to receive press releases").check()
            page.get_by_role("button", name="Subscribe").click()
            expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

            _wait_for_mail(smtp_server, 1)
            mail = smtp_server.messages[0].message
            assert smtp_server.messages[0].rcpt_tos == ["Zygimantas@example.lt"]
            text = mail.get_body(("plain",)).get_content()
            confirm_url = next(w for w in text.split() if "/confirm/" in w)
            assert confirm_url.startswith(live_site.url)

            page.goto(confirm_url)
            pending = _subscriber(live_site.settings, "zygimantas@example.lt")
            assert pending is not None and pending.status is SubscriberStatus.PENDING
            page.get_by_role("button", name="Confirm subscription").click()
            expect(page.get_by_role("heading", name="You are subscribed")).to_be_visible()

            page.get_by_role("link", name="Choose topics and frequency").click()
            expect(page.get_by_label("Health")).to_be_checked()
            page.get_by_label("Economy").check()
            page.get_by_label("Once a day").check()
            page.get_by_role("button", name="Save choices").click()
            expect(page.get_by_text("Your choices are saved")).to_be_visible()
            saved = _subscriber(live_site.settings, "zygimantas@example.lt")
            assert saved is not None
            assert (saved.status, saved.topics, saved.frequency.value) == (
                SubscriberStatus.CONFIRMED,
                ("economy", "health"),
                "daily",
            )

            page.get_by_role("button", name="Unsubscribe").click()
            expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
            gone = _subscriber(live_site.settings, "zygimantas@example.lt")
            assert gone is not None and gone.status is SubscriberStatus.UNSUBSCRIBED
        finally:
            browser.close()


def test_signup_errors_are_shown_announced_and_lead_to_their_fields(
    chromium_path: Path, live_site: LiveSite
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        try:
            page = browser.new_page()
            page.goto(live_site.url + "/subscribe")
            page.get_by_label("Email address").fill("ona at example.org")
            page.get_by_label("Name").fill("Ona")
            page.get_by_role("button", name="Subscribe").click()
            summary = page.get_by_role("alert")
            # Focused on load: screen readers read it out, the keyboard starts there.
            expect(summary).to_be_focused()
            expect(summary).to_contain_text("This is not a valid email address")
            expect(page.get_by_label("Name")).to_have_value("Ona")
            expect(page.get_by_label("Email address")).to_have_value("ona at example.org")
            expect(page.get_by_label("Email address")).to_have_attribute("aria-invalid", "true")
            consent = page.get_by_label("I agree to receive press releases")
            expect(consent).to_have_attribute("aria-invalid", "true")
            expect(consent).to_have_accessible_description(re.compile("tick the box"))
            # Each message links to its field.
            summary.get_by_role("link", name=re.compile("tick the box")).click()
            expect(page).to_have_url(re.compile("#consent$"))
            page.keyboard.press("Space")
            expect(consent).to_be_checked()
            page.get_by_role("button", name="Subscribe").click()
            expect(page.get_by_role("alert")).to_have_text(re.compile("not a valid email"))
            expect(page.get_by_label("I agree to receive press releases")).not_to_have_attribute(
                "aria-invalid", "true"
            )
        finally:
            browser.close()
