"""DKIM: keys from `mailer dkim keygen`, signatures that dkimpy verifies against
the published record, and that break when a signed header is changed; the
relaxed canonicalisation edge cases; messages spliced from remembered pieces
signed exactly as whole messages; Ed25519 beside RSA."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import dkim
import pytest
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailer.cli import main
from mailer.config import ConfigError, Settings
from mailer.dkim import (
    ED25519_SHA256,
    RSA_SHA256,
    DkimKey,
    DkimSigner,
    PieceMemo,
    dns_record,
    generate_key,
    load_signer,
)
from mailer.message import (
    DigestItem,
    MessageComposer,
    SourceLink,
    build_confirmation_message,
)
from tests.conftest import make_settings
from tests.digest.test_message import NOW, item

REQUIRED_SIGNED = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
}


def run_keygen(
    tmp_path: Path, sqlite_url: str, selector: str, file_name: str, *extra: str
) -> tuple[Path, str, str]:
    """Run the real command; return the key file, the published TXT value and the
    command's output."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": sqlite_url}}))
    key_file = tmp_path / "keys" / file_name
    result = CliRunner().invoke(
        main,
        [
            "--config",
            str(config),
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            selector,
            "--out",
            str(key_file),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    pattern = rf"{re.escape(selector)}\._domainkey\.example\.org\. IN TXT \((.*)\)"
    record = re.search(pattern, result.output)
    assert record, result.output
    value = "".join(re.findall(r'"([^"]*)"', record.group(1)))
    assert key_file.stat().st_mode & 0o777 == 0o600
    return key_file, value, result.output


@pytest.fixture
def keygen(tmp_path: Path, sqlite_url: str) -> tuple[Path, str]:
    key_file, value, _ = run_keygen(tmp_path, sqlite_url, "news2025", "mailer.pem")
    assert value.startswith("v=DKIM1; k=rsa; p=")
    return key_file, value


def dns_stub(txt_value: str, **more: str):
    """A resolver for dkimpy: news2025 publishes ``txt_value``; ``more`` maps
    further selectors to their records."""
    records = {"news2025": txt_value, **more}

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        wanted = name.decode() if isinstance(name, bytes) else name
        selector, _, domain = wanted.rstrip(".").partition("._domainkey.")
        value = records.get(selector) if domain == "example.org" else None
        return value.encode() if value is not None else None

    return lookup


def signed_settings(tmp_path: Path, sqlite_url: str, key_file: Path) -> Settings:
    return make_settings(
        tmp_path,
        sqlite_url,
        site={"base_url": "https://news.example.org"},
        dkim={"domain": "example.org", "selector": "news2025", "private_key_file": str(key_file)},
    )


def digest_message(settings: Settings) -> bytes:
    release = DigestItem(
        id=1,
        title="Šimonytė: the 2026 budget",
        url="https://gov.example.lt/r/1",
        published_at=NOW,
        published_estimated=False,
        summary="The government approved the draft budget.",
        image_url=None,
        image_alt="",
        photo_credit=None,
        publisher="Government",
        sources=(SourceLink("Government", "https://gov.example.lt/r/1"),),
    )
    composer = MessageComposer(settings, {1: release})
    return composer.compose(9, 3, "reader@example.lt", "Žygimantas", [1], link_key="test-key").data


def test_digest_is_signed_and_verifies(tmp_path: Path, sqlite_url: str, keygen) -> None:
    key_file, txt = keygen
    data = digest_message(signed_settings(tmp_path, sqlite_url, key_file))
    assert data.startswith(b"DKIM-Signature:")
    signature = data.split(b"\r\n\r\n", 1)[0].decode()
    tags = dict(
        (k.strip(), v.strip())
        for k, v in (
            t.split("=", 1)
            for t in re.sub(r"\s+", "", signature.split(":", 1)[1]).split(";")
            if "=" in t
        )
    )
    assert tags["a"] == "rsa-sha256"
    assert tags["d"] == "example.org" and tags["s"] == "news2025"
    assert REQUIRED_SIGNED <= set(tags["h"].lower().split(":"))
    assert dkim.verify(data, dnsfunc=dns_stub(txt))


def test_altered_list_unsubscribe_fails_verification(
    tmp_path: Path, sqlite_url: str, keygen
) -> None:
    key_file, txt = keygen
    data = digest_message(signed_settings(tmp_path, sqlite_url, key_file))
    tampered = re.sub(
        rb"List-Unsubscribe: <https://news\.example\.org/unsubscribe/",
        b"List-Unsubscribe: <https://evil.example.com/unsubscribe/",
        data,
    )
    assert tampered != data
    assert not dkim.verify(tampered, dnsfunc=dns_stub(txt))
    # Adding a second List-Unsubscribe is caught as well (the header is over-signed).
    added = data.replace(
        b"\r\nAuto-Submitted:",
        b"\r\nList-Unsubscribe: <https://evil.example.com/>\r\nAuto-Submitted:",
        1,
    )
    assert not dkim.verify(added, dnsfunc=dns_stub(txt))


def test_transactional_mail_is_signed_too(tmp_path: Path, sqlite_url: str, keygen) -> None:
    key_file, txt = keygen
    settings = signed_settings(tmp_path, sqlite_url, key_file)
    message = build_confirmation_message(
        settings, "ruta@example.lt", "Rūta", "https://news.example.org/confirm/x"
    )
    assert dkim.verify(message.data, dnsfunc=dns_stub(txt))


def test_keygen_refuses_to_overwrite(tmp_path: Path, sqlite_url: str, keygen) -> None:
    key_file, _ = keygen
    before = key_file.read_bytes()
    config = tmp_path / "config.yaml"
    args = [
        "--config",
        str(config),
        "dkim",
        "keygen",
        "--domain",
        "example.org",
        "--selector",
        "news2025",
        "--out",
        str(key_file),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "already exists" in result.output
    assert key_file.read_bytes() == before
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert key_file.read_bytes() != before
    bad = CliRunner().invoke(
        main,
        [*args[:4], "--domain", "not a domain", "--selector", "s", "--out", str(tmp_path / "k")],
    )
    assert bad.exit_code == 2 and "not a domain name" in bad.output


def test_unusable_key_file_is_a_configuration_error(tmp_path: Path, sqlite_url: str) -> None:
    missing = signed_settings(tmp_path, sqlite_url, tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"dkim\.private_key_file"):
        load_signer(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_signer(signed_settings(tmp_path, sqlite_url, garbage))


# --- the relaxed canonicalisation edge cases --------------------------------------

HEAD = (
    b"From: Press Office <press@example.org>\r\n"
    b"To: reader@example.lt\r\n"
    b"Subject:  Budget \t 2026,\r\n\t  folded  \r\n"
    b"Date: Thu, 23 Oct 2025 09:30:00 +0000\r\n"
    b"Message-ID: <1.d9.abc@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
)
EDGE_BODIES = {
    "trailing whitespace": b"line one   \r\nline two\t\t\r\nline three \t \r\n",
    "blank-line run at the end": b"text\r\n\r\n\r\n\r\n\r\n",
    "whitespace-only lines at the end": b"text\r\n  \r\n\t\r\n \t \r\n",
    "whitespace runs": b"a  b\t\tc \t d    e\r\n",
    "leading whitespace": b"   indented\r\n\tdeeper\r\n",
    "blank lines inside": b"one\r\n\r\n\r\ntwo\r\n",
    "empty body": b"",
    "only blank lines": b"\r\n\r\n\r\n",
    "long line": b"x" * 3000 + b"   y \r\n",
    "non-ASCII": "Šimonytė  ir\tŽygimantas \r\n".encode(),
}
NOW_T = 1_761_211_800


@pytest.fixture(scope="module")
def rsa_signer() -> tuple[DkimSigner, str]:
    pem, public = generate_key()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    record = dns_record("example.org", "news2025", public)
    return DkimSigner("example.org", [DkimKey(RSA_SHA256, "news2025", key)]), _txt(record)


def _txt(record: str) -> str:
    return "".join(re.findall(r'"([^"]*)"', record))


@pytest.mark.parametrize("body", list(EDGE_BODIES.values()), ids=list(EDGE_BODIES))
def test_canonical_edge_cases_verify(rsa_signer, body: bytes) -> None:
    signer, txt = rsa_signer
    signed = signer.sign(HEAD + b"\r\n" + body)
    assert dkim.verify(signed, dnsfunc=dns_stub(txt))
    # Relaxed means what it says: blank lines added at the end and whitespace
    # re-spaced within lines, as relays do, keep the signature valid ...
    head = signed[: len(signed) - len(body)]
    assert dkim.verify(signed + b"\r\n\r\n", dnsfunc=dns_stub(txt))
    respaced = head + body.replace(b" ", b" \t ").replace(b"\r\n", b" \r\n")
    assert dkim.verify(respaced, dnsfunc=dns_stub(txt))
    # ... while changing a visible character breaks it.
    if re.search(rb"[a-z]", body):
        changed = head + re.sub(rb"[a-z]", b"Q", body, count=1)
        assert not dkim.verify(changed, dnsfunc=dns_stub(txt))


def test_body_without_final_line_end_verifies_as_delivered(rsa_signer) -> None:
    # SMTP ends the data with CRLF, so receivers see (and hash) the line ended.
    signer, txt = rsa_signer
    signed = signer.sign(HEAD + b"\r\nlast line without its end  \t")
    assert dkim.verify(signed + b"\r\n", dnsfunc=dns_stub(txt))


TEXT = st.lists(
    st.sampled_from([b"a", b"Z", b" ", b"  ", b"\t", b"\r\n", b"\r\n\r\n", b"=", b"\xc5\xa0"]),
    max_size=80,
).map(b"".join)
BARE_LINE_BREAK = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fixed=TEXT,
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
    personal=st.lists(TEXT, min_size=3, max_size=3),
    where=st.integers(min_value=0, max_value=6),
    names=st.lists(st.text(max_size=12), min_size=3, max_size=3),
)
def test_spliced_messages_are_signed_as_whole_ones(
    rsa_signer,
    fixed: bytes,
    cuts: list[int],
    personal: list[bytes],
    where: int,
    names: list[str],
) -> None:
    """Fixed pieces (the same objects message after message, so the memo learns
    them) around personal ones, in the header section and in the body, cut at any
    byte, between the halves of a CRLF too: the signature is byte for byte the one
    of the joined message, and dkimpy verifies it."""
    signer, txt = rsa_signer
    memo = PieceMemo()
    header_pieces = [HEAD[:40], HEAD[40:130], HEAD[130:] + b"\r\n"]
    bounds = [0, *sorted({min(cut, len(fixed)) for cut in cuts}), len(fixed)]
    body_pieces = [fixed[start:end] for start, end in itertools.pairwise(bounds)]
    where = min(where, len(body_pieces))
    for personal_body, name in zip(personal, names, strict=True):
        to = f"To: {name.encode('unicode_escape').decode()} <r@example.lt>\r\n".encode()
        body = [*body_pieces[:where], bytes(personal_body), *body_pieces[where:]]
        parts = (header_pieces[0], to, header_pieces[1], header_pieces[2], *body)
        whole = b"".join(parts)
        spliced = signer.signature_headers(parts, memo, now=NOW_T)
        assert spliced == signer.signature_headers((whole,), now=NOW_T)
        if not BARE_LINE_BREAK.search(whole):  # a personal piece inside a CRLF makes two
            delivered = whole if whole.endswith(b"\r\n") else whole + b"\r\n"
            assert dkim.verify(spliced + delivered, dnsfunc=dns_stub(txt))
    assert len(memo) >= 3  # the fixed pieces were learnt


# --- real digests, many readers -------------------------------------------------------

READERS = [
    ("Žygimantas", "zygimantas@example.lt"),
    ("Ingrida Šimonytė", "ingrida@example.lt"),
    ("Anna  Maria\tvon   Tabs ", "anna@example.org"),
    ("  Jonas\t\tPetraitis  ", "jonas@example.lt"),
    ("Šarūnė Žemaitytė-Čiurlionienė, Ministerijos spaudos skyriaus vedėja", "sarune@gov.lt"),
    ('O\'Brien "The Quote" \\ Backslash', "obrien@example.ie"),
    ("x" * 190 + " long", "long@example.com"),
    ("", "noname@example.org"),
    ("Rūta", "ruta@example.lt"),
]


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked per reader"])
def test_many_readers_of_real_digests_verify(
    tmp_path: Path, sqlite_url: str, keygen, tracked: bool
) -> None:
    """Two contents interleaved, readers with spaces, tabs, non-ASCII and long
    names, a test send without List-Unsubscribe in between: every message
    verifies, and is signed exactly as if it were signed whole. Tracked per reader,
    every release link carries a value of the reader's own as well."""
    key_file, txt = keygen
    settings = signed_settings(tmp_path, sqlite_url, key_file)
    if tracked:
        settings = make_settings(
            tmp_path,
            sqlite_url,
            site={"base_url": "https://news.example.org"},
            dkim={
                "domain": "example.org",
                "selector": "news2025",
                "private_key_file": str(key_file),
            },
            tracking={"clicks": True, "opens": True, "individual": True},
        )
    summary = "The  ministry\tannounced the measure today.   Details follow in the release. " * 4
    releases = {
        n: item(n, f"Šimonytė: measure {n}", hours_ago=n, summary=summary) for n in range(1, 13)
    }
    composer = MessageComposer(settings, releases, digest_id=4 if tracked else None)
    signer = composer.signer
    assert signer is not None
    contents = [list(range(1, 13)), [1, 2, 3]]
    for round_number in range(2):
        for index, (name, address) in enumerate(READERS):
            subscriber = None if index == 4 and round_number == 1 else index + 10
            ids = contents[index % 2]
            data = composer.compose(index, subscriber, address, name, ids, link_key="k").data
            assert dkim.verify(data, dnsfunc=dns_stub(txt)), (name, round_number)
            header, message = data.split(b"\r\n", 1)[0], data
            while message.startswith(b"DKIM-Signature:"):
                message = message.split(b"\r\n", 1)[1]
                while message[:1] in (b"\t", b" "):
                    message = message.split(b"\r\n", 1)[1]
            timestamp = int(re.search(rb" t=(\d+);", header).group(1))
            assert data == signer.sign(message, now=timestamp)
    assert all(len(composer.content(ids).signing_memo) > 10 for ids in contents)


# --- Ed25519 beside RSA --------------------------------------------------------------


def ed25519_settings(
    tmp_path: Path, sqlite_url: str, rsa_key: Path, ed_key: Path | None, **dkim_extra: object
) -> Settings:
    section: dict[str, object] = {
        "domain": "example.org",
        "selector": "news2025",
        "private_key_file": str(rsa_key),
        "algorithms": ["rsa-sha256", "ed25519-sha256"],
        "ed25519_selector": "news2025e",
        **dkim_extra,
    }
    if ed_key is not None:
        section["ed25519_private_key_file"] = str(ed_key)
    return make_settings(
        tmp_path, sqlite_url, site={"base_url": "https://news.example.org"}, dkim=section
    )


def test_ed25519_signature_beside_rsa_verifies(tmp_path: Path, sqlite_url: str, keygen) -> None:
    rsa_key, rsa_txt = keygen
    ed_key, ed_txt, output = run_keygen(
        tmp_path, sqlite_url, "news2025e", "mailer-ed25519.pem", "--algorithm", "ed25519"
    )
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed_txt)
    assert "algorithms: [rsa-sha256, ed25519-sha256]" in output
    assert f"ed25519_private_key_file: {ed_key}" in output
    loaded = serialization.load_pem_private_key(ed_key.read_bytes(), password=None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)

    settings = ed25519_settings(tmp_path, sqlite_url, rsa_key, ed_key)
    resolver = dns_stub(rsa_txt, news2025e=ed_txt)
    composer = MessageComposer(settings, {1: item(1, "Šimonytė: the 2026 budget")})
    for n, (name, address) in enumerate(READERS[:4]):
        data = composer.compose(n, n + 1, address, name, [1], link_key="k").data
        checker = dkim.DKIM(data)
        assert checker.verify(idx=0, dnsfunc=resolver), name
        assert checker.signature_fields[b"a"] == b"rsa-sha256"
        assert checker.verify(idx=1, dnsfunc=resolver), name
        assert checker.signature_fields[b"a"] == b"ed25519-sha256"
        assert checker.signature_fields[b"s"] == b"news2025e"
        tampered = data.replace(b"Subject: ", b"Subject: Re: ", 1)
        assert not dkim.DKIM(tampered).verify(idx=1, dnsfunc=resolver)
    transactional = build_confirmation_message(
        settings, "ruta@example.lt", "Rūta", "https://news.example.org/confirm/x"
    ).data
    assert dkim.DKIM(transactional).verify(idx=1, dnsfunc=resolver)


def test_ed25519_configuration_errors(tmp_path: Path, sqlite_url: str, keygen) -> None:
    rsa_key, _ = keygen
    with pytest.raises(ConfigError, match="ed25519_private_key_file"):
        ed25519_settings(tmp_path, sqlite_url, rsa_key, None)
    with pytest.raises(ConfigError, match="must include rsa-sha256"):
        ed25519_settings(tmp_path, sqlite_url, rsa_key, rsa_key, algorithms=["ed25519-sha256"])
    with pytest.raises(ConfigError, match=r"must differ from dkim\.selector"):
        ed25519_settings(tmp_path, sqlite_url, rsa_key, rsa_key, ed25519_selector="news2025")
    with pytest.raises(ConfigError, match="does not include ed25519-sha256"):
        ed25519_settings(tmp_path, sqlite_url, rsa_key, rsa_key, algorithms=["rsa-sha256"])
    # The RSA key given as the Ed25519 one: caught when the signer loads.
    wrong = ed25519_settings(tmp_path, sqlite_url, rsa_key, rsa_key)
    with pytest.raises(ConfigError, match=r"ed25519_private_key_file: .* not an Ed25519 key"):
        load_signer(wrong)
    # ... and the other way round.
    ed_pem, _ = generate_key(ED25519_SHA256)
    ed_file = tmp_path / "ed.pem"
    ed_file.write_bytes(ed_pem)
    with pytest.raises(ConfigError, match=r"dkim\.private_key_file: .* not an RSA key"):
        load_signer(signed_settings(tmp_path, sqlite_url, ed_file))
