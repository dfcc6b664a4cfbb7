"""The composer's shortcuts give exactly what the general code gives: the SMTP
DATA payload built from pre-stuffed pieces is what the transport would make of
the message (CRLF checked, lines starting with a dot doubled, terminated), for
signed and unsigned digests and readers whose values start a line with a dot;
the links signed with the pre-derived key are ``tokens.link``'s."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailer.dkim import generate_key
from mailer.message import MessageComposer
from mailer.tokens import Purpose, link, read_token
from mailer.transport import wire_format
from tests.conftest import make_settings
from tests.digest.test_message import item

READERS = [
    ("Žygimantas", "zygimantas@example.lt"),
    ("Anna  Maria\tvon   Tabs ", "anna@example.org"),
    (".Dot at the start", ".dot@example.org"),
    ("x" * 190 + " long", "long@example.com"),
    ("", "noname@example.org"),
]
LINE_WITH_DOT = re.compile(rb"(?:^|\r\n)\.")


@pytest.mark.parametrize(
    ("signed", "tracked"),
    [(False, False), (True, False), (True, True)],
    ids=["unsigned", "signed", "signed, tracked per reader"],
)
def test_composer_wire_payload_is_the_transports(
    tmp_path: Path, sqlite_url: str, signed: bool, tracked: bool
) -> None:
    extra: dict[str, object] = {}
    if tracked:
        # A value after every release link: many reader pieces in each message.
        extra["tracking"] = {"clicks": True, "opens": True, "individual": True}
    if signed:
        pem, _ = generate_key()
        key_file = tmp_path / "dkim.pem"
        key_file.write_bytes(pem)
        extra["dkim"] = {
            "domain": "example.org",
            "selector": "news2025",
            "private_key_file": str(key_file),
        }
    settings = make_settings(
        tmp_path, sqlite_url, site={"base_url": "https://news.example.org"}, **extra
    )
    releases = {n: item(n, f"Šimonytė: measure {n}", hours_ago=n) for n in range(1, 6)}
    composer = MessageComposer(settings, releases, digest_id=5 if tracked else None)
    dotted_lines = set()
    for n in range(60):
        name, address = READERS[n % len(READERS)]
        # Link keys of every length move the dots of the signed links across the
        # quoted-printable line breaks, so some wrapped line starts with one.
        subscriber = None if n == 7 else n + 1
        message = composer.compose(
            n, subscriber, address, name, [1, 2, 3, 4, 5], link_key="k" * (n % 30 + 1)
        )
        assert message.wire is not None
        assert message.wire == wire_format(message.data), (name, n)
        dotted_lines.add(len(LINE_WITH_DOT.findall(message.data)))
    # Some messages had more lines starting with a dot than the fixed text gives
    # every message: values that start a line with one were stuffed too.
    assert len(dotted_lines) > 1
    reader = composer.compose(1, 2, ".dot@example.org", "Dot", [1, 2, 3], link_key="k")
    assert b"\r\n..dot@example.org" in reader.wire
    assert b"\r\n.dot@example.org" in reader.data


def test_links_are_the_tokens_modules(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tokens carry the second they were made in: one second for all of them.
    monkeypatch.setattr("itsdangerous.timed.time.time", lambda: 1_761_211_800.0)
    settings = make_settings(tmp_path, sqlite_url, site={"base_url": "https://news.example.org"})
    composer = MessageComposer(settings, {1: item(1, "Budget")})
    for subscriber, key in [(1, "abc"), (123456, "x" * 40), (7, "Žž-key")]:
        values = composer.recipient_values(subscriber, "r@example.org", "R", key)
        for purpose, slot in [
            (Purpose.UNSUBSCRIBE, "unsubscribe_url"),
            (Purpose.MANAGE, "preferences_url"),
        ]:
            assert values[slot] == link(settings, purpose, subscriber, key)
            token = values[slot].rsplit("/", 1)[1]
            assert read_token(settings, purpose, token).subscriber_id == subscriber
