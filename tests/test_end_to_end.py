"""The whole path from the command line, as a user runs it: a subscriber added with
`mailer subscribers add` receives, over SMTP, a digest of releases read from files."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.smtp import SmtpServer, free_port

RELEASE_MD = """\
# Prime Minister Šimonytė meets Baltic counterparts on energy security

Date: 2025-10-23

Prime Minister Ingrida Šimonytė met her Latvian and Estonian counterparts in Vilnius
on Thursday to agree on the next steps of the Baltic electricity synchronisation.

Minister Žygimantas Vaičiūnas said the grid would be ready before winter.
"""

RELEASE_HTML = """\
<!doctype html><html><head><title>Budget 2026 presented to the Seimas</title>
<meta property="article:published_time" content="2025-10-20T09:00:00+03:00"></head>
<body><article><h1>Budget 2026 presented to the Seimas</h1>
<p>The Ministry of Finance presented the 2026 budget, with investment in health and
defence, to the Seimas on Monday.</p>
<p>The budget deficit is planned at 2.9 percent of GDP.</p></article></body></html>
"""


def mailer(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=180,
    )


def write_config(tmp_path: Path, database_url: str, smtp: dict) -> Path:
    config = {
        "data_dir": "data",
        "database": {"url": database_url},
        "site": {
            "name": "Vyriausybės spaudos tarnyba",
            "base_url": "https://news.example.org",
            "postal_address": "Gedimino pr. 11, Vilnius",
        },
        "sender": {"from": "Spaudos tarnyba <press@example.org>", "list_id": "press.example.org"},
        "smtp": smtp,
        "topics": [{"name": "Energy", "keywords": ["energy", "electricity"]}],
        # The fixtures are dated 2025; keep them inside the age limit whenever this runs.
        "digest": {"max_age": "3650d"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def releases_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "releases"
    folder.mkdir()
    (folder / "energy.md").write_text(RELEASE_MD, encoding="utf-8")
    (folder / "budget.html").write_text(RELEASE_HTML, encoding="utf-8")
    return folder


def test_cli_path_to_an_external_smtp_server(
    tmp_path: Path, database_url: str, smtp_server: SmtpServer
) -> None:
    config = write_config(
        tmp_path, database_url, {"embedded": False, "host": "127.0.0.1", "port": smtp_server.port}
    )
    added = mailer(
        config, "subscribers", "add", "ona@example.net", "--name", "Ona Šimonytė", "--confirmed"
    )
    assert added.returncode == 0, added.stderr
    folder = releases_folder(tmp_path)

    dry = mailer(config, "ingest", "--dry-run", "--json", str(folder))
    assert dry.returncode == 0, dry.stderr
    previews = [json.loads(line) for line in dry.stdout.splitlines() if line.strip()]
    assert {p["title"] for p in previews} == {
        "Prime Minister Šimonytė meets Baltic counterparts on energy security",
        "Budget 2026 presented to the Seimas",
    }
    for preview in previews:
        assert {"title", "published", "source", "url", "text"} <= set(preview)
    assert any(p["published"] and p["published"].startswith("2025-10-23") for p in previews)
    # A dry run stores nothing: sending now finds nothing new.
    nothing = mailer(config, "digest", "send", "--yes")
    assert nothing.returncode == 0 and "No releases are stored yet" in nothing.stdout

    ingested = mailer(config, "ingest", str(folder))
    assert ingested.returncode == 0, ingested.stderr
    would = mailer(config, "digest", "send", "--dry-run")
    assert would.returncode == 0 and "Would send to 1 recipient (dry run" in would.stdout
    # No terminal to answer "Send the digest now?": say --yes is needed, send nothing.
    unasked = mailer(config, "digest", "send", stdin="")
    assert unasked.returncode == 2, unasked.stderr
    assert "pass --yes" in unasked.stderr and "Aborted" not in unasked.stderr
    assert smtp_server.messages == []
    sent = mailer(config, "digest", "send", "--yes", "--workers", "1")
    assert sent.returncode == 0, sent.stderr
    assert "sent 1 of 1" in sent.stdout

    assert len(smtp_server.messages) == 1
    received = smtp_server.messages[0]
    assert received.rcpt_tos == ["ona@example.net"]
    message = received.message
    assert message["To"].addresses[0].display_name == "Ona Šimonytė"
    assert message["To"].addresses[0].addr_spec == "ona@example.net"
    assert message["From"].addresses[0].display_name == "Spaudos tarnyba"
    assert "2 new press releases" in message["Subject"]
    assert "Vyriausybės spaudos tarnyba" in message["Subject"]
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    for part in (text, html):
        assert "Šimonytė meets Baltic counterparts" in part
        assert "Budget 2026 presented to the Seimas" in part
        assert "https://news.example.org/unsubscribe/" in part
    assert "Gedimino pr. 11, Vilnius" in text
    # Sending again sends nothing: no release goes to the same reader twice.
    again = mailer(config, "digest", "send", "--yes")
    assert again.returncode == 0 and "already received" in again.stdout
    assert len(smtp_server.messages) == 1


def test_embedded_catcher_files_the_mail(tmp_path: Path, sqlite_url: str) -> None:
    config = write_config(tmp_path, sqlite_url, {"embedded": True})
    assert mailer(config, "subscribers", "add", "reader@example.net", "--confirmed").returncode == 0
    assert mailer(config, "ingest", str(releases_folder(tmp_path))).returncode == 0
    sent = mailer(config, "digest", "send", "--yes")
    assert sent.returncode == 0, sent.stderr
    files = list((tmp_path / "data" / "mail").glob("*.eml"))
    assert len(files) == 1
    caught = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert caught["Delivered-To"] == "reader@example.net"
    assert "Šimonytė" in caught.get_body(("plain",)).get_content()


def test_bad_address_and_unreachable_server_exit_codes(tmp_path: Path, sqlite_url: str) -> None:
    closed_port = free_port()
    config = write_config(
        tmp_path, sqlite_url, {"embedded": False, "host": "127.0.0.1", "port": closed_port}
    )
    bad = mailer(config, "subscribers", "add", "not an address")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.strip()
    header_injection = mailer(config, "subscribers", "add", "a@example.net\r\nBcc: x@example.net")
    assert header_injection.returncode == 2

    assert mailer(config, "subscribers", "add", "reader@example.net", "--confirmed").returncode == 0
    assert mailer(config, "ingest", str(releases_folder(tmp_path))).returncode == 0
    down = mailer(config, "digest", "send", "--yes", "--workers", "1")
    assert down.returncode == 1, down.stdout + down.stderr
    error_lines = [line for line in down.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and "unreachable" in error_lines[0]
    # Nothing was lost: the message waits, deferred, for the server.
    status = mailer(config, "digest", "status")
    assert status.returncode == 0 and "deferred" in status.stdout
