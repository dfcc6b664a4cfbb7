"""DKIM: keys from `mailer dkim keygen`, signatures that dkimpy verifies against
the published record, and that break when a signed header is changed."""

from __future__ import annotations

import re
from pathlib import Path

import dkim
import pytest
import yaml
from click.testing import CliRunner

from mailer.cli import main
from mailer.config import ConfigError, Settings
from mailer.dkim import load_signer
from mailer.message import (
    DigestItem,
    MessageComposer,
    SourceLink,
    build_confirmation_message,
)
from tests.conftest import make_settings
from tests.digest.test_message import NOW

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


@pytest.fixture
def keygen(tmp_path: Path, sqlite_url: str) -> tuple[Path, str]:
    """Run the real command; return the key file and the published TXT value."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"database": {"url": sqlite_url}}))
    key_file = tmp_path / "keys" / "mailer.pem"
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
            "news2025",
            "--out",
            str(key_file),
        ],
    )
    assert result.exit_code == 0, result.output
    record = re.search(r"news2025\._domainkey\.example\.org\. IN TXT \((.*)\)", result.output)
    assert record, result.output
    value = "".join(re.findall(r'"([^"]*)"', record.group(1)))
    assert value.startswith("v=DKIM1; k=rsa; p=")
    assert key_file.stat().st_mode & 0o777 == 0o600
    return key_file, value


def dns_stub(txt_value: str):
    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        wanted = name.decode() if isinstance(name, bytes) else name
        return (
            txt_value.encode() if wanted.rstrip(".") == "news2025._domainkey.example.org" else None
        )

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
    return composer.compose(9, 3, "reader@example.lt", "Žygimantas", [1]).data


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
