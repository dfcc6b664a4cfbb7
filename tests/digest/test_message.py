"""The digest message as a mail client sees it: headers, structure, both parts,
non-ASCII text, header-injection attempts, personalisation, size, overrides."""

from __future__ import annotations

import email
import email.policy
import itertools
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from mailer.config import ConfigError, Settings
from mailer.message import (
    ComposedMessage,
    DigestItem,
    MessageComposer,
    MessageError,
    SourceLink,
    build_confirmation_message,
    build_notice_message,
    parse_verp,
)
from mailer.tokens import MailTokenKind, MailTokenSigner, Purpose, read_token
from tests.conftest import make_settings
from tests.digest.conftest import TOPICS

NOW = datetime(2025, 10, 23, 9, 30, tzinfo=UTC)


@pytest.fixture
def plain_settings(tmp_path: Path, sqlite_url: str) -> Settings:
    """For tests that build messages from plain data, without a database."""
    return make_settings(
        tmp_path,
        sqlite_url,
        topics=TOPICS,
        site={"base_url": "https://news.example.org"},
        sender={"reply_to": "Press desk <desk@example.org>"},
    )


def item(
    release_id: int,
    title: str,
    *,
    hours_ago: float = 1,
    topic_ids: tuple[int, ...] = (),
    sources: tuple[SourceLink, ...] | None = None,
    summary: str = "The ministry announced the measure today. Details follow in the release.",
    image_url: str | None = None,
) -> DigestItem:
    url = f"https://gov.example.lt/r/{release_id}"
    return DigestItem(
        id=release_id,
        title=title,
        url=url,
        published_at=NOW - timedelta(hours=hours_ago),
        published_estimated=False,
        summary=summary,
        image_url=image_url,
        image_alt=f"Photo for {title}",
        photo_credit="Jonas Petraitis" if image_url else None,
        publisher="Ministry of Finance",
        sources=sources if sources is not None else (SourceLink("Government", url),),
        topic_ids=topic_ids,
    )


def parse(message: ComposedMessage) -> EmailMessage:
    parsed = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(parsed: EmailMessage) -> tuple[str, str]:
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    # The parser keeps the wire's CRLF line ends in decoded content.
    return text.get_content().replace("\r\n", "\n"), html.get_content().replace("\r\n", "\n")


@pytest.fixture
def releases() -> dict[int, DigestItem]:
    return {
        1: item(1, "Žygimantas presents the 2026 budget", hours_ago=3, topic_ids=(1,)),
        2: item(
            2,
            "Šimonytė meets hospital directors",
            hours_ago=2,
            topic_ids=(2,),
            image_url="https://gov.example.lt/img/2.jpg",
        ),
        3: item(
            3,
            "Embassy opens in Canberra",
            hours_ago=1,
            topic_ids=(3,),
            sources=(
                SourceLink("Ministry of Foreign Affairs", "https://urm.example.lt/3"),
                SourceLink("News aggregator", "https://agg.example.com/3"),
            ),
        ),
    }


def test_digest_headers_and_mime_structure(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    composer = MessageComposer(plain_settings, releases)
    message = composer.compose(
        41, 7, "reader@example.lt", "Ingrida Šimonytė", [1, 2, 3], link_key="test-key"
    )
    parsed = parse(message)

    assert parsed["From"] == "Press Office <press@example.org>"
    assert parsed["To"].addresses[0].display_name == "Ingrida Šimonytė"
    assert parsed["To"].addresses[0].addr_spec == "reader@example.lt"
    assert parsed["Subject"] == "Test Press Office — 3 new press releases"
    assert parsedate_to_datetime(parsed["Date"]).tzinfo is not None
    assert re.fullmatch(r"<[^<>@\s]+@example\.org>", parsed["Message-ID"])
    assert parsed["Message-ID"] == message.message_id
    assert parsed["Reply-To"] == "Press desk <desk@example.org>"
    assert parsed["List-Id"] == "Test Press Office <press.example.org>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["MIME-Version"] == "1.0"

    # No bounce mailbox is configured, so nothing would read a mailto: https only.
    [https_link] = re.findall(r"<([^<>]+)>", str(parsed["List-Unsubscribe"]))
    assert https_link.startswith("https://news.example.org/unsubscribe/")
    token = https_link.rsplit("/", 1)[1]
    assert read_token(plain_settings, Purpose.UNSUBSCRIBE, token).subscriber_id == 7

    assert parsed.get_content_type() == "multipart/alternative"
    kinds = [(p.get_content_type(), p.get_content_charset()) for p in parsed.iter_parts()]
    assert kinds == [("text/plain", "utf-8"), ("text/html", "utf-8")]
    assert not parsed.defects
    assert all(not part.defects for part in parsed.walk())

    assert message.recipients == ["reader@example.lt"]
    assert re.fullmatch(r"press\+d41\.[0-9a-f]{16}@example\.org", message.envelope_from)
    assert parse_verp(plain_settings, message.envelope_from) == 41
    assert b"\r\n" in message.data and b"\n" not in message.data.replace(b"\r\n", b"")
    assert max(len(line) for line in message.data.split(b"\r\n")) <= 998
    head, body = message.data.split(b"\r\n\r\n", 1)
    # Quoted-printable keeps every body line within RFC 2045's 76 characters.
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert head.isascii() and body.isascii()


def test_message_ids_are_unique(plain_settings: Settings, releases: dict[int, DigestItem]) -> None:
    composer = MessageComposer(plain_settings, releases)
    ids = {
        composer.compose(n, n, f"r{n}@example.org", None, [1], link_key="test-key").message_id
        for n in range(200)
    }
    assert len(ids) == 200


def test_non_ascii_intact_everywhere(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    composer = MessageComposer(plain_settings, {1: releases[1]})
    parsed = parse(
        composer.compose(1, 1, "reader@example.lt", "Žygimantas Šimonytė", [1], link_key="test-key")
    )
    assert parsed["Subject"] == "Test Press Office: Žygimantas presents the 2026 budget"
    assert parsed["To"].addresses[0].display_name == "Žygimantas Šimonytė"
    text, html = parts(parsed)
    for part in (text, html):
        assert "Hello Žygimantas Šimonytė," in part
        assert "Žygimantas presents the 2026 budget" in part


def test_text_part_is_a_faithful_rendering(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    composer = MessageComposer(plain_settings, releases)
    text, _ = parts(
        parse(composer.compose(1, 5, "reader@example.lt", None, [1, 2, 3], link_key="test-key"))
    )
    assert text.startswith("Hello,\n")
    # Newest first; every title, date, publisher, summary, link and source.
    positions = [text.index(releases[n].title) for n in (3, 2, 1)]
    assert positions == sorted(positions)
    assert "23 October 2025 · Ministry of Finance" in text
    assert "The ministry announced the measure today." in text
    for release in releases.values():
        assert f"Read the full release: {release.url}" in text
    # Readers see the publisher and the original's link; source names are internal.
    assert "News aggregator" not in text and "Source" not in text
    assert "Photo: Jonas Petraitis" in text
    assert re.search(r"Unsubscribe: https://news\.example\.org/unsubscribe/\S+", text)
    assert re.search(
        r"Change topics or frequency: https://news\.example\.org/preferences/\S+", text
    )
    assert "1 Test Street, Vilnius" in text
    long_lines = [line for line in text.splitlines() if len(line) > 72 and "http" not in line]
    assert long_lines == []


def test_html_part_layout_and_footer(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    composer = MessageComposer(plain_settings, releases)
    _, html = parts(
        parse(composer.compose(1, 5, "reader@example.lt", None, [1, 2, 3], link_key="test-key"))
    )
    assert 'class="preheader"' in html
    assert "Embassy opens in Canberra · Šimonytė meets hospital directors" in html
    assert re.search(r'<table[^>]*class="container"[^>]*style="[^"]*max-width: ?600px', html)
    assert re.search(r'<img class="photo"[^>]* src="https://gov.example.lt/img/2.jpg"', html)
    assert 'alt="Photo for Šimonytė meets hospital directors"' in html
    assert re.search(r'href="https://news\.example\.org/unsubscribe/[^"]+"', html)
    assert re.search(r'href="https://news\.example\.org/preferences/[^"]+"', html)
    assert "1 Test Street, Vilnius" in html
    # Merged release: the original is linked; where else it appeared stays internal.
    assert f'<a href="{releases[3].url}"' in html
    assert "agg.example.com" not in html and "News aggregator" not in html
    # CSS inlined into the elements; only @media rules (dark mode) stay in <style>.
    assert re.search(r'<h[23] class="item-title" style="[^"]*font-size', html)
    # One h1 (the digest's headline); releases are h2, or h3 under a topic's h2.
    assert len(re.findall(r"<h1\b", html)) == 1
    levels = [int(n) for n in re.findall(r"<h([1-6])\b", html)]
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), levels
    style_blocks = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert style_blocks and all(block.strip().startswith("@media") for block in style_blocks)
    assert "prefers-color-scheme: dark" in html
    assert '<meta name="color-scheme" content="light dark">' in html
    assert html.index('<meta charset="utf-8">') < 200


def test_subscriber_values_cannot_inject_headers_or_markup(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    composer = MessageComposer(plain_settings, releases)
    name = 'Eve\r\nBcc: victim@example.com\r\n\r\n<script>alert("x")</script>'
    parsed = parse(composer.compose(1, 5, "eve@example.org", name, [1], link_key="test-key"))
    assert parsed["Bcc"] is None
    assert parsed["To"].addresses[0].addr_spec == "eve@example.org"
    assert len(parsed["To"].addresses) == 1
    text, html = parts(parsed)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert 'Hello Eve Bcc: victim@example.com <script>alert("x")</script>,' in text

    for address in (
        "eve@example.org\r\nBcc: victim@example.com",
        "eve@example.org, victim@example.com",
        "Eve <eve@example.org>",
        "not-an-address",
    ):
        with pytest.raises(MessageError):
            composer.compose(1, 5, address, None, [1], link_key="test-key")


def test_release_text_cannot_inject_headers(plain_settings: Settings) -> None:
    hostile = item(9, "Budget\r\nBcc: victim@example.com")
    parsed = parse(
        MessageComposer(plain_settings, {9: hostile}).compose(
            1, 1, "a@example.org", None, [9], link_key="test-key"
        )
    )
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == "Test Press Office: Budget Bcc: victim@example.com"


def test_configured_values_with_line_breaks_are_refused(tmp_path: Path, sqlite_url: str) -> None:
    for section, values in (
        ("site", {"name": "Press\r\nBcc: victim@example.com"}),
        ("sender", {"from": "Press <press@example.org>\nBcc: victim@example.com"}),
        ("sender", {"list_id": "press.example.org\r\nX-Evil: 1"}),
        ("digest", {"subject": "News\nBcc: victim@example.com"}),
    ):
        with pytest.raises(ConfigError, match="line breaks"):
            make_settings(tmp_path, sqlite_url, **{section: values})


def test_one_body_per_content_personalised_per_recipient(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    composer = MessageComposer(plain_settings, releases)
    first = composer.compose(1, 101, "ona@example.org", "Ona", [1, 2], link_key="test-key")
    second = composer.compose(2, 102, "jonas@example.org", "Jonas", [2, 1], link_key="test-key")
    assert composer.renders == 1
    composer.compose(3, 103, "ada@example.org", None, [1, 2, 3], link_key="test-key")
    assert composer.renders == 2

    text_one, html_one = parts(parse(first))
    text_two, html_two = parts(parse(second))
    assert "Hello Ona," in text_one and "Hello Jonas," in text_two
    assert "ona@example.org" in html_one and "ona@example.org" not in html_two

    def generic(body: str) -> str:
        body = re.sub(r"/(unsubscribe|preferences)/[\w.\-]+", r"/\1/TOKEN", body)
        return (
            body.replace("Ona", "NAME")
            .replace("Jonas", "NAME")
            .replace("ona@", "X@")
            .replace("jonas@", "X@")
        )

    assert generic(text_one) == generic(text_two)
    assert generic(html_one) == generic(html_two)


def test_several_topics_group_the_digest(
    plain_settings: Settings, releases: dict[int, DigestItem]
) -> None:
    names = {1: "Economy", 2: "Health", 3: "Foreign affairs"}
    composer = MessageComposer(
        plain_settings, releases, topic_choices={7: [1, 2]}, topic_names=names
    )
    grouped_text, grouped_html = parts(
        parse(composer.compose(1, 7, "a@example.org", None, [1, 2], link_key="test-key"))
    )
    assert "ECONOMY\n=======" in grouped_text and "HEALTH\n======" in grouped_text
    assert grouped_text.index("ECONOMY") < grouped_text.index("Žygimantas presents")
    assert grouped_text.index("HEALTH") < grouped_text.index("Šimonytė meets")
    assert "<h2" in grouped_html and "Economy</h2>" in grouped_html

    flat_text, _ = parts(
        parse(composer.compose(2, 8, "b@example.org", None, [1, 2], link_key="test-key"))
    )
    assert "ECONOMY" not in flat_text


def test_large_digest_stays_under_gmail_clipping_limit(plain_settings: Settings) -> None:
    long_summary = " ".join(["The government approved a long list of measures."] * 20)
    many = {
        n: item(
            n,
            f"Release number {n} about the budget of Šiauliai region",
            hours_ago=n,
            summary=long_summary,
            image_url=f"https://gov.example.lt/img/{n}.jpg",
        )
        for n in range(1, 301)
    }
    composer = MessageComposer(plain_settings, many)
    parsed = parse(composer.compose(1, 1, "a@example.org", None, list(many), link_key="test-key"))
    text, html = parts(parsed)
    assert len(html.encode()) < 102 * 1024
    raw_html_part = parsed.get_body(("html",)).as_bytes()
    assert len(raw_html_part) < 102 * 1024
    # The footer with the unsubscribe link is never cut off ...
    assert "/unsubscribe/" in html and "1 Test Street, Vilnius" in html
    # ... the HTML says how much it shows, and the text part has everything.
    shown = re.search(r"shows the newest (\d+) of 300 releases", html)
    assert shown and 0 < int(shown.group(1)) < 300
    assert all(f"Release number {n} " in text for n in many)


def test_default_sized_digest_keeps_full_layout(plain_settings: Settings) -> None:
    summary = " ".join(["The ministry explains the decision in detail."] * 9)
    fifty = {
        n: item(
            n, f"Release {n}", hours_ago=n, summary=summary, image_url=f"https://x.example/{n}.jpg"
        )
        for n in range(1, 51)
    }
    _, html = parts(
        parse(
            MessageComposer(plain_settings, fifty).compose(
                1, 1, "a@example.org", None, list(fifty), link_key="test-key"
            )
        )
    )
    assert len(html.encode()) < 102 * 1024
    assert html.count('class="photo"') == 50
    assert "shows the newest" not in html


def test_site_templates_override_shipped_ones(tmp_path: Path, sqlite_url: str) -> None:
    overrides = tmp_path / "my-templates" / "email"
    overrides.mkdir(parents=True)
    (overrides / "greeting.txt.j2").write_text(
        "{% if name %}Labas, {{ name }}!{% else %}Labas!{% endif %}\n"
    )
    settings = make_settings(tmp_path, sqlite_url, site={"templates_dir": "my-templates"})
    composer = MessageComposer(settings, {1: item(1, "Budget")})
    text, html = parts(
        parse(composer.compose(1, 1, "a@example.org", "Rūta", [1], link_key="test-key"))
    )
    assert text.startswith("Labas, Rūta!")
    assert "Labas, Rūta!" in html
    assert "Read the full release" in text  # the rest still comes from the shipped templates


def test_missing_releases(plain_settings: Settings) -> None:
    composer = MessageComposer(plain_settings, {1: item(1, "Budget")})
    with pytest.raises(MessageError, match="none of the digest's releases"):
        composer.compose(1, 1, "a@example.org", None, [99], link_key="test-key")
    # Some gone (deleted after planning): the rest is still sent.
    text, _ = parts(
        parse(composer.compose(1, 1, "a@example.org", None, [1, 99], link_key="test-key"))
    )
    assert "Budget" in text


def test_test_send_has_no_unsubscribe_headers(plain_settings: Settings) -> None:
    composer = MessageComposer(plain_settings, {1: item(1, "Budget")})
    parsed = parse(composer.compose(5, None, "editor@example.org", None, [1]))
    assert parsed["List-Unsubscribe"] is None and parsed["List-Unsubscribe-Post"] is None
    assert parsed["List-Id"] == "Test Press Office <press.example.org>"


def test_confirmation_message(plain_settings: Settings) -> None:
    confirm = "https://news.example.org/confirm/abc.def"
    manage = "https://news.example.org/preferences/xyz"
    message = build_confirmation_message(
        plain_settings, "ruta@example.lt", "Rūta Šimonytė", confirm, manage
    )
    parsed = parse(message)
    assert parsed["Subject"] == "Confirm your subscription to Test Press Office"
    assert parsed["To"].addresses[0].display_name == "Rūta Šimonytė"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["List-Unsubscribe"] is None
    assert re.fullmatch(r"<[^<>@\s]+@example\.org>", parsed["Message-ID"])
    assert re.fullmatch(r"press\+t\.[0-9a-f]{16}@example\.org", message.envelope_from)
    text, html = parts(parsed)
    assert "Hello Rūta Šimonytė," in text and confirm in text and manage in text
    assert f'href="{confirm}"' in html and "Confirm my subscription" in html


@pytest.mark.parametrize("kind", ["unsubscribed", "already-subscribed", "preferences-updated"])
def test_notice_messages(plain_settings: Settings, kind: str) -> None:
    manage = "https://news.example.org/preferences/xyz"
    parsed = parse(
        build_notice_message(
            plain_settings, "ruta@example.lt", None, kind, manage_url=manage, topics=["Health"]
        )
    )
    assert "Test Press Office" in parsed["Subject"]
    assert parsed["Auto-Submitted"] == "auto-generated"
    text, html = parts(parsed)
    assert text.startswith("Hello,") and "Hello," in html
    assert "ruta@example.lt" in text or manage in text


def test_unknown_notice_kind(plain_settings: Settings) -> None:
    with pytest.raises(MessageError, match="unknown notice kind 'welcome'"):
        build_notice_message(plain_settings, "a@example.org", None, "welcome")
    with pytest.raises(MessageError):
        build_notice_message(plain_settings, "a@example.org", None, "../digest")


def test_mailto_unsubscribe_goes_to_the_polled_bounce_address(
    tmp_path: Path, sqlite_url: str, releases: dict[int, DigestItem]
) -> None:
    settings = make_settings(
        tmp_path,
        sqlite_url,
        bounces={"address": "bounces@news.example.org", "maildir": str(tmp_path / "box")},
    )
    message = MessageComposer(settings, releases).compose(
        41, 7, "a@example.lt", None, [1], link_key="k"
    )
    https_link, mailto = re.findall(r"<([^<>]+)>", str(parse(message)["List-Unsubscribe"]))
    assert "/unsubscribe/" in https_link
    found = re.fullmatch(
        r"mailto:bounces\+(u7\.[0-9a-f]{16})@news\.example\.org\?subject=unsubscribe", mailto
    )
    assert found, mailto
    signer = MailTokenSigner(settings)
    token = signer.read(found.group(1).upper())
    assert token is not None and (token.kind, token.number) == (MailTokenKind.UNSUBSCRIBE, 7)
    # Bound to the reader's link key: a new holder of id 7 has another key.
    assert signer.link_key_matches(token, "k")
    assert not signer.link_key_matches(token, "another-key")
    assert parse_verp(settings, message.envelope_from) == 41
    assert message.envelope_from.startswith("bounces+d41.")


def test_readers_see_the_publisher_and_credit_as_written_never_a_host_or_source_name(
    plain_settings: Settings,
) -> None:
    from mailer.models import Release, ReleaseLink

    release = Release(
        id=9,
        title="Foreign Minister meets Baltic counterparts",
        published_at=datetime(2025, 10, 23, tzinfo=UTC),
        published_estimated=False,
        published_date_only=True,
        canonical_url=None,
        summary="The ministers met in Vilnius.",
        image_url="https://urm.example.lt/img/1.jpg",
        photo_credit="Photo by Žygimantas Gedvila / ELTA.",
        publisher="127.0.0.1:8790",
    )
    release.links = [ReleaseLink(source_name="Drop folder", url=None, guid="file:1.txt")]
    release.topics = []
    item = DigestItem.from_release(release)
    assert item.publisher is None and item.url is None
    # West of UTC, midnight UTC would be the evening before: a date must not move.
    new_york = plain_settings.model_copy(
        update={"digest": plain_settings.digest.model_copy(update={"timezone": "America/New_York"})}
    )
    text, html = parts(
        parse(
            MessageComposer(new_york, {9: item}).compose(
                1, 5, "r@example.lt", None, [9], link_key="k"
            )
        )
    )
    for part in (text, html):
        assert "23 October 2025" in part and "22 October" not in part
        assert "Photo by Žygimantas Gedvila / ELTA." in part
        assert "Photo: Photo" not in part
        assert "127.0.0.1" not in part and "Drop folder" not in part
    assert "Read the full release" not in text
