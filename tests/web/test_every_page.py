"""Every public and admin page, and both emails, in headless Chromium at a phone's
and a desktop's width: nothing is wider than the window (no sideways scrolling),
and axe-core finds no serious or critical accessibility violation.

The pages are reached the way people reach them (signing up, following the
confirmation mail, sending a test digest, importing a file), with data that
stretches layouts: long titles, long unbroken URLs, long error messages. The
route table is read from the app, so a page added later without a visit here
fails the coverage check.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from starlette.routing import Route

from mailer.config import Settings
from mailer.context import AppContext
from mailer.web.app import create_app
from tests.admin.conftest import ADMIN_PASSWORD, site_settings
from tests.admin.test_access import walk
from tests.support.live import launch_chromium, seed_admin_site, serving
from tests.support.node_tools import NODE_DIR, node_package, run_node_script
from tests.support.smtp import SmtpServer
from tests.web.test_browser import _free_port, _wait_for_mail, chromium_path  # noqa: F401

pytestmark = pytest.mark.browser

PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 900}
READER = "reader@example.org"
LONG_URL = (
    "https://www.example.gov/press/releases/2026/03/"
    "government-adopts-the-budget-and-the-medium-term-fiscal-plan-for-2026-2029"
    "?utm_source=newsletter&utm_medium=email&utm_campaign=budget2026"
)
LONG_TITLE = (
    "Government adopts the 2026 budget, the medium-term fiscal plan and the "
    "Vyriausybėsatstovųsusitikimasdėlmokesčiųreformos tax reform"
)
# GET routes that are not pages a person reads, each with the reason.
NOT_PAGES = {
    "/admin": "redirects to /admin/",
    "/admin/digests/{id:int}/progress": "JSON polled by the progress page",
    "/admin/digests/preview/html": "the digest email itself, checked as an email below",
    "/admin/subscribers/export.csv": "a CSV download",
    "/admin/engagement/releases.csv": "a CSV download",
    "/admin/engagement/topics.csv": "a CSV download",
    "/admin/engagement/sends/{id:int}.csv": "a CSV download",
    "/r/{token}": "a redirect to a release (tests/engagement)",
    "/r/{token}/{reader}": "a redirect to a release (tests/engagement)",
    "/o/{token}": "the open image (tests/engagement)",
    "/o/{token}/{reader}": "the open image (tests/engagement)",
    "/preferences/{token}/data.json": "a JSON download",
    "/releases.atom": "an Atom feed (validated in test_feeds.py)",
    "/releases.json": "a JSON Feed (validated in test_feeds.py)",
    "/topics/{slug}.atom": "an Atom feed (validated in test_feeds.py)",
    "/topics/{slug}.json": "a JSON Feed (validated in test_feeds.py)",
    "/robots.txt": "for crawlers",
    "/sitemap.xml": "for crawlers",
    "/sitemap-pages.xml": "for crawlers",
    "/sitemap-releases-{number:int}.xml": "for crawlers",
}
# html-validate's recommended rules, less three matters of taste, and with the
# checkbox groups (several inputs named "topics") allowed.
HTML_VALIDATE = {
    "extends": ["html-validate:recommended"],
    "rules": {
        "doctype-style": "off",
        "no-trailing-whitespace": "off",
        # The scrolling wrapper of a table is a labelled div role="region": a
        # <section> would take the card styling and add a heading-less section.
        "prefer-native-element": ["error", {"exclude": ["region"]}],
        "form-dup-name": ["error", {"shared": ["radio", "checkbox", "button", "submit"]}],
    },
}
AXE_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}


@dataclass
class Audit:
    """What every visit found, reported together at the end."""

    viewport: dict[str, int]
    axe_source: str
    base: str
    problems: list[str] = field(default_factory=list)
    visited: set[str] = field(default_factory=set)
    # Each page's markup as served, for html-validate.
    documents: dict[str, str] = field(default_factory=dict)

    def check(self, page: Any, what: str) -> None:
        # A click returns once the next page starts loading: wait for its stylesheet.
        page.wait_for_load_state("load")
        if page.url.startswith("http"):
            self.visited.add(page.url)
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        if widths[0] > widths[1]:
            wide = page.evaluate(WIDEST_ELEMENTS)
            self.problems.append(
                f"{what} at {self.viewport['width']} px: the document is {widths[0]} px wide "
                f"in a {widths[1]} px window; widest: {wide}"
            )
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.add_script_tag(content=self.axe_source)
        result = page.evaluate("options => window.axe.run(document, options)", AXE_OPTIONS)
        for violation in result["violations"]:
            if violation["impact"] in ("serious", "critical"):
                targets = [" ".join(map(str, n["target"])) for n in violation["nodes"][:4]]
                self.problems.append(
                    f"{what} at {self.viewport['width']} px: axe {violation['impact']} "
                    f"{violation['id']} ({violation['help']}) on {targets}"
                )

    def visit(self, page: Any, url: str, what: str | None = None) -> None:
        response = page.goto(url)
        assert response is not None
        if "html" in response.headers.get("content-type", ""):
            self.documents[what or url.removeprefix(self.base)] = response.text()
        self.check(page, what or url)


# The elements and text that stick out furthest to the right, to say what overflows.
WIDEST_ELEMENTS = """() => {
  const limit = document.documentElement.clientWidth;
  const out = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (typeof el.className === 'string' && el.className.trim()
      ? '.' + el.className.trim().replace(/\\s+/g, '.') : '');
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (box.right > limit + 1) out.push([Math.round(box.right), name(el)]);
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  while (walker.nextNode()) {
    range.selectNodeContents(walker.currentNode);
    const box = range.getBoundingClientRect();
    if (box.right > limit + 1) {
      out.push([Math.round(box.right), 'text "' + walker.currentNode.textContent.trim()
        .slice(0, 30) + '" in ' + name(walker.currentNode.parentElement)]);
    }
  }
  out.sort((a, b) => b[0] - a[0]);
  return out.slice(0, 5).map(([right, what]) => what + ' to ' + right + 'px');
}"""


@dataclass
class Site:
    url: str
    settings: Settings
    app: Any


@pytest.fixture
def site(tmp_path: Path, sqlite_url: str, smtp_server: SmtpServer) -> Iterator[Site]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    folder = tmp_path / "drop"
    folder.mkdir()
    settings = site_settings(
        tmp_path,
        sqlite_url,
        site={"base_url": url},
        smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_server.port},
        sources=[{"name": "Drop folder", "kind": "folder", "path": str(folder)}],
        # The digest email is checked with its tracked links and open image.
        tracking={"clicks": True, "opens": True},
    )

    body = (
        "The government adopted the budget and the tax plan for 2026. "
        f"The full text is at {LONG_URL} and in the annex.\n\n"
        "Hospitals receive more money for vaccines."
    )
    asyncio.run(
        seed_admin_site(
            settings,
            admin_password=ADMIN_PASSWORD,
            reader=READER,
            reader_name="Rūta Žemaitytė-Vaitkevičienė",
            title=LONG_TITLE,
            body=body,
            url=LONG_URL,
        )
    )
    app = create_app(AppContext(settings=settings), run_background=True)
    with serving(app, port, stop_timeout=70):
        yield Site(url, settings, app)


def _html_part(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _text_part(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def _page_routes(app: Any) -> set[str]:
    return {
        path
        for path, method, route in walk(list(app.routes))
        if method == "GET"
        and isinstance(route, Route)
        and not path.startswith(("/api", "/metrics", "/static", "/health"))
    }


def _pattern_of(path: str, patterns: set[str]) -> str | None:
    # Literal paths first: /admin/digests/preview is not /admin/digests/{id:int}.
    for pattern in sorted(patterns, key=lambda p: (p.count("{"), p)):
        regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(pattern))
        if re.fullmatch(regex, path):
            return pattern
    return None


def _visit_archive_pages(audit: Any, page: Any, site: Any, digest_html: str) -> None:
    """The public archive, from the digest's "View in browser" link on."""
    web_version = re.search(r'href="([^"]+/digests/[^"]+)"', digest_html)
    assert web_version, "the digest has no View in browser link"
    audit.visit(page, web_version.group(1), "a digest's web version")
    audit.visit(page, site.url + "/releases")
    audit.visit(page, site.url + "/releases?q=budget", "an archive search")
    audit.visit(page, site.url + "/topics/economy")
    page.goto(site.url + "/releases")
    page.get_by_role("link", name=LONG_TITLE).first.click()
    audit.check(page, "a release page")


def _visit_public_pages(audit: Audit, page: Any, site: Site, smtp_server: SmtpServer) -> str:
    """Sign up (with a mistake first), confirm, change preferences, unsubscribe,
    erase; returns the confirmation email's HTML."""
    audit.visit(page, site.url + "/")
    audit.visit(page, site.url + "/privacy")
    audit.visit(page, site.url + "/subscribe")
    page.get_by_label("Email address").fill("not an address")
    page.get_by_role("button", name="Subscribe").click()
    audit.check(page, "the signup form with errors")
    page.get_by_label("Email address").fill("Zygimantas@example.lt")
    page.get_by_label("I agree to receive press releases").check()
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Check your inbox").wait_for()
    audit.check(page, "the check-your-inbox page")

    _wait_for_mail(smtp_server, 1)
    confirmation = smtp_server.messages[-1].message
    confirm_url = next(w for w in _text_part(confirmation).split() if "/confirm/" in w)
    audit.visit(page, confirm_url, "the confirm page")
    page.get_by_role("button", name="Confirm subscription").click()
    audit.check(page, "the confirmed page")
    page.get_by_role("link", name="Choose topics and frequency").click()
    audit.check(page, "the preferences page")
    preferences_url = page.url
    page.get_by_role("button", name="Save choices").click()
    audit.check(page, "the preferences page, saved")
    audit.visit(page, preferences_url + "/erase", "the erase page")
    audit.visit(page, site.url + "/confirm/not-a-token", "an invalid link")
    audit.visit(page, site.url + "/no-such-page", "the not-found page")
    page.goto(preferences_url)
    unsubscribe_path = page.locator("form[action*='/unsubscribe/']").get_attribute("action")
    assert unsubscribe_path
    audit.visit(page, site.url + unsubscribe_path, "the unsubscribe page")
    page.get_by_role("button", name="Unsubscribe").click()
    audit.check(page, "the unsubscribed page")
    page.goto(preferences_url + "/erase")
    page.get_by_role("button", name="Erase my data").click()
    audit.check(page, "the erased page")
    return _html_part(confirmation)


def _visit_admin_pages(audit: Audit, page: Any, site: Site, smtp_server: SmtpServer) -> str:
    """Every admin page, signed in as an admin; returns a test digest's HTML."""
    base = site.url + "/admin"
    audit.visit(page, base + "/login", "the sign-in page")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("a wrong password")
    page.get_by_role("button", name="Sign in").click()
    audit.check(page, "the sign-in page with an error")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Dashboard").wait_for()

    # A test send, to have a finished send and a digest email.
    mails = len(smtp_server.messages)
    audit.visit(page, base + "/digests")
    page.get_by_label("Address", exact=True).fill("desk@example.org")
    page.get_by_role("button", name="Send test").click()
    progress = page.locator("#progress [data-status]")
    progress.filter(has_text="done").wait_for(timeout=60_000)
    audit.check(page, "a finished send")
    # A finished send offers nothing to start, pause, resume or cancel.
    for action in ("Start now", "Pause", "Resume", "Cancel"):
        button = page.get_by_role("button", name=action, exact=True)
        assert button.count() == 0 or not button.is_visible(), f"{action} on a finished send"
    finished_send = page.url
    # A scheduled send, still queued.
    audit.visit(page, base + "/digests")
    page.locator("form[action$='/schedule'] select").select_option("weekly")
    # Far enough ahead to stay queued, within the year a schedule may reach.
    later = (datetime.now(UTC) + timedelta(days=60)).strftime("%Y-%m-%dT09:00")
    page.get_by_label(re.compile(r"^At")).fill(later)
    page.get_by_role("button", name="Schedule").click()
    audit.check(page, "a scheduled send")
    assert page.get_by_role("button", name="Start now").is_visible()
    assert not page.get_by_role("button", name="Pause").is_visible()

    _wait_for_mail(smtp_server, mails + 1)
    digest_html = _html_part(smtp_server.messages[-1].message)

    audit.visit(page, base + "/")
    audit.visit(page, base + "/digests")
    audit.visit(page, finished_send)
    # A click on the test digest's release, so the engagement pages have figures.
    tracked = re.search(r'href="([^"]+/r/[^"]+)"', digest_html)
    assert tracked, "the digest has no tracked link"
    page.request.get(tracked.group(1), max_redirects=0)
    audit.visit(page, base + "/engagement")
    send_id = finished_send.rstrip("/").rsplit("/", 1)[1]
    audit.visit(page, base + f"/engagement/sends/{send_id}", "a send's engagement")
    audit.visit(page, base + "/digests/send?frequency=all", "a send about to start")
    audit.visit(page, base + "/digests/send?frequency=weekly", "a send that would reach nobody")
    audit.visit(page, base + "/digests/preview", "the preview of a sample")
    audit.visit(page, base + f"/digests/preview?subscriber={READER}", "a subscriber's preview")
    audit.visit(page, base + "/digests/preview?subscriber=nobody@example.org", "no preview")
    audit.visit(page, base + "/releases")
    page.get_by_role("link", name=LONG_TITLE).click()
    audit.check(page, "a release")
    audit.visit(page, base + "/releases/new")
    page.get_by_role("button", name="Add release").click()
    audit.check(page, "the new-release form with errors")
    audit.visit(page, base + "/sources/new")
    page.get_by_label("Name", exact=True).fill("Ministry of Foreign Affairs of the Republic")
    page.get_by_label("URL").fill("http://127.0.0.1:9/" + "very-long-path-segment-" * 8)
    page.get_by_role("button", name="Add source").click()
    audit.check(page, "an admin-defined source")
    audit.visit(page, base + "/sources")
    page.get_by_role("link", name="Drop folder").click()
    audit.check(page, "a source from config.yaml")
    audit.visit(page, base + "/subscribers")
    page.get_by_role("link", name=READER).click()
    audit.check(page, "a subscriber")
    audit.visit(page, base + "/subscribers/new")
    audit.visit(page, base + "/subscribers/import")
    page.get_by_label("CSV file").set_input_files(
        {
            "name": "press-list.csv",
            "mimeType": "text/csv",
            "buffer": (
                "email,name,topics\n"
                "new.reader@example.lt,Naujas,economy\n"
                "not an address,Broken,\n"
                f"{READER},Rūta,health\n"
            ).encode(),
        }
    )
    page.get_by_role("button", name="Check the file").click()
    audit.check(page, "an import preview")
    audit.visit(page, base + "/audit")
    audit.visit(page, base + "/settings")
    audit.visit(page, base + "/users")
    page.get_by_label("Name", exact=True).fill("website-cms")
    page.get_by_role("button", name="Create token").click()
    audit.check(page, "a new API token")
    return digest_html


def _check_email(audit: Audit, page: Any, html: str, what: str) -> None:
    page.set_content(html)
    audit.check(page, what)


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["375px", "1280px"])
def test_every_page_and_email_fits_and_passes_axe(
    chromium_path: Path,  # noqa: F811 - the fixture imported above
    site: Site,
    smtp_server: SmtpServer,
    viewport: dict[str, int],
) -> None:
    from playwright.sync_api import sync_playwright

    axe = node_package("axe-core") / "axe.min.js"
    audit = Audit(viewport, axe.read_text(), site.url)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium_path)
        try:
            # bypass_csp: the pages forbid inline scripts, and axe is injected as one.
            context = browser.new_context(viewport=viewport, bypass_csp=True)
            # Remote images in the emails: nothing leaves this machine.
            context.route(
                re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort()
            )
            page = context.new_page()
            confirmation_html = _visit_public_pages(audit, page, site, smtp_server)
            digest_html = _visit_admin_pages(audit, page, site, smtp_server)
            _visit_archive_pages(audit, page, site, digest_html)
            _check_email(audit, page, confirmation_html, "the confirmation email")
            _check_email(audit, page, digest_html, "the digest email")
        finally:
            browser.close()

    patterns = _page_routes(site.app)
    paths = {url.split("?")[0].removeprefix(site.url) for url in audit.visited}
    seen = {_pattern_of(path, patterns) for path in paths}
    unvisited = patterns - seen - set(NOT_PAGES)
    if viewport is DESKTOP:
        node_package("html-validate")
        found = run_node_script(
            NODE_DIR / "html-validate-report.mjs",
            {"config": HTML_VALIDATE, "documents": audit.documents},
        )
        audit.problems += [
            f"html-validate: {n}: {rule}: {text} (line {line}, {where})"
            for n, rule, text, line, where in found
        ]
    assert not audit.problems, "\n".join(audit.problems)
    assert not unvisited, f"pages this test does not visit: {sorted(unvisited)}"
