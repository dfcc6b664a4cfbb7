"""How a realistic digest fares with a spam filter and in a browser engine."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from mailer.config import Settings
from mailer.message import DigestItem, MessageComposer, SourceLink
from tests.conftest import IN_CI, make_settings
from tests.digest.test_message import NOW

CHROMIUM = os.environ.get("MAILER_TEST_CHROMIUM", "/usr/bin/chromium")

RELEASES = [
    (
        "Prime Minister Ingrida Šimonytė met the heads of regional hospitals",
        "Health",
        "The Prime Minister discussed the reform of emergency care with the heads of "
        "twelve regional hospitals. Waiting times in emergency departments fell by a fifth "
        "this year, and the government will keep funding the new triage system in 2026.",
        "https://lrv.example.lt/news/hospitals-meeting",
        "https://lrv.example.lt/images/hospitals.jpg",
    ),
    (
        "Finance Minister Žygimantas presents the draft budget for 2026",
        "Economy",
        "The draft budget plans revenue of 21.4 billion euro and a deficit of 2.9 percent "
        "of GDP. Spending on defence rises to 3.5 percent of GDP; pensions are indexed by "
        "seven percent from January.",
        "https://finmin.example.lt/news/budget-2026",
        None,
    ),
    (
        "Lithuania opens an embassy in Canberra",
        "Foreign affairs",
        "The new embassy will serve citizens living in Australia and New Zealand and "
        "strengthen cooperation in education, research and trade.",
        "https://urm.example.lt/news/canberra",
        None,
    ),
    (
        "Statistics: inflation slowed to 2.1 percent in September",
        "Economy",
        "Annual inflation slowed for the third month in a row. Food prices rose by 1.4 "
        "percent, while energy prices fell by 3 percent compared with September last year.",
        "https://stat.example.lt/news/inflation-september",
        None,
    ),
]


@pytest.fixture
def realistic_settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        site={
            "name": "Government press releases",
            "base_url": "https://news.example.org",
            "postal_address": "Gedimino pr. 11, LT-01103 Vilnius, Lithuania",
        },
        sender={
            "from": "Government press office <press@news.example.org>",
            "list_id": "releases.news.example.org",
        },
    )


def realistic_digest(settings: Settings) -> bytes:
    items = {}
    for number, (title, _topic, summary, url, image) in enumerate(RELEASES, start=1):
        sources = [SourceLink("Government of Lithuania", url)]
        if number == 1:
            sources.append(SourceLink("BNS press releases", "https://bns.example.lt/r/1"))
        items[number] = DigestItem(
            id=number,
            title=title,
            url=url,
            published_at=NOW - timedelta(hours=number),
            published_estimated=False,
            summary=summary,
            image_url=image,
            image_alt="Ingrida Šimonytė with hospital directors" if image else title,
            photo_credit="Lukas Balandis" if image else None,
            publisher="Office of the Government",
            sources=tuple(sources),
        )
    composer = MessageComposer(settings, items)
    return composer.compose(
        7, 3, "ona.petraitiene@example.lt", "Ona Petraitienė", list(items), link_key="test-key"
    ).data


def test_spamassassin_scores_a_realistic_digest_below_one(
    realistic_settings: Settings, tmp_path: Path
) -> None:
    binary = shutil.which("spamassassin")
    if binary is None:
        if IN_CI:
            pytest.fail("spamassassin is required under CI (Debian package spamassassin)")
        pytest.skip("spamassassin is not installed (Debian package spamassassin)")
    result = subprocess.run(
        [binary, "-L", "-t"],
        input=realistic_digest(realistic_settings),
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
        check=True,
    )
    report = result.stdout.decode("utf-8", "replace")
    status = re.search(r"^X-Spam-Status: (Yes|No), score=(-?\d+(?:\.\d+)?)", report, re.M)
    assert status, report[:2000]
    score = float(status.group(2))
    details = report[report.find("Content analysis details") :][:2000]
    assert score < 1.0, details


@pytest.mark.browser
def test_html_part_renders_within_600px_and_fits_a_phone(
    realistic_settings: Settings, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"Chromium is required under CI at {CHROMIUM}")
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    parsed = email.message_from_bytes(
        realistic_digest(realistic_settings), policy=email.policy.default
    )
    html = parsed.get_body(("html",)).get_content()
    # Keep the page offline: the release images point at hosts that do not exist.
    html = re.sub(r'src="https://[^"]+"', 'src="data:image/gif;base64,R0lGODlhAQABAAAAACw="', html)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            desktop = browser.new_page(viewport={"width": 1024, "height": 800})
            desktop.set_content(html)
            desktop.screenshot(path=str(tmp_path / "digest-desktop.png"), full_page=True)
            container = desktop.locator("table.container").bounding_box()
            assert container is not None
            assert 560 <= container["width"] <= 600
            # Centred.
            assert abs(container["x"] * 2 + container["width"] - 1024) <= 2

            phone = browser.new_page(viewport={"width": 375, "height": 800})
            phone.set_content(html)
            phone.screenshot(path=str(tmp_path / "digest-phone.png"), full_page=True)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 375
            widest = phone.evaluate(
                "Math.max(...[...document.querySelectorAll('body *')]"
                ".map(e => e.getBoundingClientRect().right))"
            )
            assert widest <= 375
            # The unsubscribe link is there, visible, at the bottom.
            unsubscribe = phone.get_by_role("link", name="Unsubscribe")
            assert unsubscribe.is_visible()
            assert "Finance Minister Žygimantas" in phone.inner_text("body")
        finally:
            browser.close()
    for name in ("digest-desktop.png", "digest-phone.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
