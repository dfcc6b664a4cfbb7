"""Our emails against caniemail's data on what Gmail, Outlook for Windows (and
Windows Mail), Apple Mail and Yahoo support.

Every HTML or CSS feature one of those clients lacks must have a fallback that
keeps the mail readable and its layout intact there. FALLBACKS names each such
feature, why it degrades gracefully, and (where the fallback is markup) a pattern
the mail must contain: a feature used without an entry here fails the test, so a
template change that relies on, say, `word-break` or flexbox shows up at once.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailer.config import Settings, TrackingConfig
from mailer.message import (
    ComposedMessage,
    DigestItem,
    MessageComposer,
    SourceLink,
    build_confirmation_message,
    build_notice_message,
)
from tests.conftest import make_settings
from tests.digest.conftest import TOPICS
from tests.support.node_tools import NODE_DIR, node_package, run_node_script

CLIENTS = [
    "gmail.desktop-webmail",
    "gmail.ios",
    "gmail.android",
    "gmail.mobile-webmail",
    "outlook.windows",
    "outlook.windows-mail",
    "apple-mail.macos",
    "apple-mail.ios",
    "yahoo.desktop-webmail",
    "yahoo.ios",
    "yahoo.android",
]
NOW = datetime(2025, 10, 23, 9, 30, tzinfo=UTC)
LONG_URL = "https://news.example.org/confirm/" + "Ab3dEfGhJk" * 12

# feature title (as caniemail names it) -> (why the mail still holds, evidence pattern)
FALLBACKS: dict[str, tuple[str, str | None]] = {
    "<body> element": (
        "Yahoo's apps drop <body>; the background colour is repeated on the outer table",
        r'class="outer"[^>]*bgcolor="#eef1f4"',
    ),
    "<style> element": (
        "Gmail's webmail for non-Gmail accounts drops <style>; every rule that matters "
        "is inlined, only dark mode and the narrow-screen padding live in <style>",
        r'class="card"[^>]*style="[^"]*background-color',
    ),
    "@media": (
        "only tightens padding on phones and adds dark colours; the layout is fluid "
        "(100% wide tables up to 600 px) and Outlook gets a fixed 600 px table",
        r'<!--\[if mso\]><table role="presentation" width="600"',
    ),
    "border-radius": ("decorative: Outlook draws square corners", None),
    "color-scheme meta tag": (
        "every background and text colour is set explicitly, so a client that ignores "
        "the hint still shows dark text on light backgrounds",
        r'bgcolor="#ffffff"',
    ),
    "role attribute": (
        "Windows Mail reads the layout tables as tables and loses the main landmark; "
        "the content and its headings are unchanged",
        None,
    ),
    "display:none": (
        "hides the preheader; Gmail's webmail for other accounts still hides it with "
        "max-height:0, overflow:hidden and 1 px text, Outlook with mso-hide:all",
        r"max-height: ?0;.*mso-hide: ?all",
    ),
    "opacity": ("hides the preheader, like display:none", r"mso-hide: ?all"),
    "overflow": ("hides the preheader, like display:none", r"mso-hide: ?all"),
    "max-height property": ("hides the preheader, like display:none", r"mso-hide: ?all"),
    "table-layout": (
        "Outlook for Windows and Windows Mail lay tables out as fixed anyway (the 600 px "
        "MSO table); elsewhere it keeps a long word from widening the mail",
        r'<!--\[if mso\]><table role="presentation" width="600"',
    ),
    "word-wrap": (
        "breaks a word longer than the line (a long name, a pasted URL); Outlook for "
        "Windows and Windows Mail ignore it, and their fixed 600 px table keeps the "
        "layout while such a word runs past its line",
        None,
    ),
    "height property": (
        "height:auto keeps photos in proportion; Yahoo uses the width attribute and "
        "the image's own proportions instead",
        r'<img[^>]*width="552"',
    ),
}


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str) -> Settings:
    return make_settings(
        tmp_path, sqlite_url, topics=TOPICS, site={"base_url": "https://news.example.org"}
    )


def _html(message: ComposedMessage) -> str:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    part = parsed.get_body(("html",))
    assert part is not None
    return str(part.get_content())


def _digest(settings: Settings, digest_id: int | None = None) -> str:
    def item(number: int, topic: int, image: bool = False) -> DigestItem:
        url = f"https://gov.example.lt/press/releases/2026/{number}"
        return DigestItem(
            id=number,
            title=f"Release {number}: the Seimas adopts the budget",
            url=url,
            published_at=NOW,
            published_estimated=False,
            summary="The ministry announced the measure today. Details follow.",
            image_url="https://gov.example.lt/img/1.jpg" if image else None,
            image_alt="The minister at the lectern",
            photo_credit="Jonas Petraitis" if image else None,
            publisher="Ministry of Finance",
            sources=(SourceLink("Government", url), SourceLink("Aggregator", url + "?via=1")),
            topic_ids=(topic,),
        )

    releases = {1: item(1, 1, image=True), 2: item(2, 2), 3: item(3, 3)}
    composer = MessageComposer(settings, releases, digest_id=digest_id)
    return _html(composer.compose(1, 1, "reader@example.org", "Rūta", [1, 2, 3], link_key="k"))


def _emails(settings: Settings) -> dict[str, str]:
    mails = {
        "confirmation": _html(
            build_confirmation_message(
                settings, "reader@example.org", "Rūta", LONG_URL, LONG_URL.replace("confirm", "p")
            )
        ),
        "digest": _digest(settings),
        # Tracked links and the 1x1 open image (tracking.*): the same checks hold.
        "digest, tracked": _digest(
            settings.model_copy(
                update={"tracking": TrackingConfig(clicks=True, opens=True, individual=True)}
            ),
            digest_id=1,
        ),
    }
    for kind in ("unsubscribed", "already-subscribed", "preferences-updated"):
        mails[kind] = _html(
            build_notice_message(
                settings,
                "reader@example.org",
                None,
                kind,
                manage_url="https://news.example.org/p/x",
                topics=["Economy"],
                frequency="daily",
            )
        )
    return mails


def _report(html: str) -> list[dict]:
    return run_node_script(NODE_DIR / "caniemail-report.mjs", {"html": html, "clients": CLIENTS})


def test_every_feature_a_client_lacks_has_a_fallback(settings: Settings) -> None:
    node_package("caniemail")
    problems: list[str] = []
    listing: list[str] = []
    for name, html in _emails(settings).items():
        found = run_node_script(
            NODE_DIR / "caniemail-report.mjs", {"html": html, "clients": CLIENTS}
        )
        by_feature: dict[tuple[str, str], set[str]] = defaultdict(set)
        for issue in found:
            by_feature[(issue["feature"], issue["kind"])].add(issue["client"])
        for (feature, kind), clients in sorted(by_feature.items()):
            listing.append(f"{name}: {feature}: {kind} in {', '.join(sorted(clients))}")
            if kind != "error":
                continue
            if feature not in FALLBACKS:
                problems.append(
                    f"{name} uses {feature!r}, which {', '.join(sorted(clients))} do not "
                    "support, with no fallback named in FALLBACKS"
                )
                continue
            evidence = FALLBACKS[feature][1]
            if evidence and not re.search(evidence, html, re.S):
                problems.append(f"{name}: the fallback for {feature!r} is missing ({evidence})")
    print("\n".join(listing))
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_a_feature_without_a_fallback(settings: Settings) -> None:
    """The test above can fail: word-break, which Yahoo and Windows Mail ignore."""
    node_package("caniemail")
    html = _emails(settings)["confirmation"].replace(
        'class="fallback"', 'class="fallback" style="word-break: break-all"'
    )
    found = _report(html)
    unsupported = {i["feature"] for i in found if i["kind"] == "error"} - set(FALLBACKS)
    assert unsupported == {"word-break"}


def test_confirmation_email_layout(settings: Settings) -> None:
    """What caniemail cannot see: a bulletproof button, no long bare URL, headings,
    the language and a main landmark."""
    html = _emails(settings)["confirmation"]
    # The button's colour and padding sit on a table cell (Outlook for Windows
    # ignores padding on links); the link itself has none.
    cell = re.search(r'<td class="button-td"[^>]*bgcolor="#0b5394"[^>]*style="([^"]*)"', html)
    assert cell and "padding: 12px 22px" in cell.group(1)
    link = re.search(r'<a class="button"[^>]*style="([^"]*)"', html)
    assert link and "padding" not in link.group(1)
    # No word-break anywhere, and the long address is not shown as text.
    assert "word-break" not in html
    assert f">{LONG_URL}<" not in html and f'href="{LONG_URL}"' in html
    assert len(re.findall(r"<h1\b", html)) == 1
    wrapper = re.search(r'<div class="wrapper"[^>]*>', html)
    assert wrapper and 'lang="en"' in wrapper.group(0) and 'dir="ltr"' in wrapper.group(0)
    assert '<div role="main">' in html
