"""What an editor means is what readers get (issue 13), tried as a new editor would
from the command line: releases added by hand go out whatever their date, every
"nothing to send" says why with numbers, a dry run matches like the real run, and
every way a release arrives notifies "as soon as published" readers the same way."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from mailer.cli import main
from mailer.config import load_settings
from mailer.db import Database
from mailer.models import Digest, Release, utcnow
from tests.support.smtp import SmtpServer

T = TypeVar("T")

# A ministry's release from 2023 and one from 2025, both far older than max_age (14d).
RELEASE_2023 = """\
Republic of Lithuania - Ministry of Foreign Affairs

Foreign Minister Landsbergis opens the Vilnius summit media centre

2023-07-10

Foreign Minister Gabrielius Landsbergis opened the media centre of the NATO summit
in Vilnius on Monday, where 2,000 journalists are accredited.

Photo by Žygimantas Gedvila / ELTA.
"""

RELEASE_2025 = """\
Prime Minister Šimonytė meets Baltic counterparts on energy security

2025-10-23

Prime Minister Ingrida Šimonytė met her Latvian and Estonian counterparts in Vilnius
on Thursday to agree on the next steps of the Baltic electricity synchronisation.
"""

ARCHIVE_RELEASE = """\
Ministry publishes the 2024 consular statistics

2024-02-01

The Ministry of Foreign Affairs published the consular statistics of 2024, with the
number of passports issued by embassies abroad.
"""


def write_config(tmp_path: Path, database_url: str, smtp_port: int, drop: Path) -> Path:
    config = {
        "data_dir": "data",
        "database": {"url": database_url},
        "secret_key": "test-secret-key-0123456789abcdef",
        "site": {"name": "Spaudos tarnyba", "base_url": "https://news.example.org"},
        "sender": {"from": "Spaudos tarnyba <press@example.org>", "list_id": "press.example.org"},
        "smtp": {"embedded": False, "host": "127.0.0.1", "port": smtp_port},
        "topics": [{"name": "Energy", "keywords": ["electricity"]}],
        "digest": {"timezone": "Europe/Vilnius"},
        "sources": [{"name": "Drop folder", "kind": "folder", "path": str(drop)}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def mailer(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def rows(config: Path, model: type[T]) -> list[T]:
    """Every row of ``model`` as the command line left the database, in id order."""

    async def read() -> list[T]:
        database = Database(load_settings(config).database.url)
        try:
            async with database.session() as session:
                query = select(model).order_by(model.id)  # type: ignore[attr-defined]
                return list((await session.scalars(query)).all())
        finally:
            await database.dispose()

    return asyncio.run(read())


def releases(config: Path) -> list[Release]:
    return rows(config, Release)


def digests(config: Path) -> list[Digest]:
    return rows(config, Digest)


@pytest.fixture
def setup(tmp_path: Path, database_url: str, smtp_server: SmtpServer) -> tuple[Path, Path]:
    drop = tmp_path / "drop"
    drop.mkdir()
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text(RELEASE_2023, encoding="utf-8")
    (files / "b.txt").write_text(RELEASE_2025, encoding="utf-8")
    return write_config(tmp_path, database_url, smtp_server.port, drop), files


def test_old_releases_added_by_hand_are_sent_and_every_nothing_says_why(
    setup: tuple[Path, Path], smtp_server: SmtpServer
) -> None:
    config, files = setup
    code, out = mailer(config, "digest", "send", "--dry-run")
    assert code == 0
    assert "Would send to 0 recipients" in out
    assert "No releases are stored yet" in out
    assert "There is no confirmed reader" in out

    code, _ = mailer(config, "subscribers", "add", "ona@example.net", "--confirmed")
    assert code == 0
    code, out = mailer(config, "ingest", str(files / "a.txt"), str(files / "b.txt"))
    assert code == 0, out
    assert "2 releases read: 2 new" in out
    stored = releases(config)
    assert all(r.exempt_from_max_age for r in stored)

    code, out = mailer(config, "digest", "send", "--dry-run")
    assert "Would send to 1 recipient " in out
    code, out = mailer(config, "digest", "send", "--yes", "--workers", "1")
    assert code == 0, out
    assert "sent 1 of 1" in out
    assert len(smtp_server.messages) == 1
    text = smtp_server.messages[0].message.get_body(("plain",)).get_content()
    assert "Foreign Minister Landsbergis opens the Vilnius summit media centre" in text
    assert "Prime Minister Šimonytė meets Baltic counterparts" in text
    # Dates as published: a bare date is that day, not the evening before in UTC.
    assert "10 July 2023" in text and "23 October 2025" in text
    assert "Republic of Lithuania - Ministry of Foreign Affairs" in text  # the publisher
    assert "Photo by Žygimantas Gedvila / ELTA." not in text.split("Republic")[0]
    # Internal source names are the admin's business.
    assert "Manual ingest" not in text and "Source:" not in text

    code, out = mailer(config, "digest", "send", "--yes")
    assert code == 0
    assert "Nothing to send" in out
    assert "1 reader has already received every release that could go out" in out

    code, out = mailer(config, "digest", "preview", "--subscriber", "ona@example.net")
    assert "No digest would be sent to ona@example.net now" in out
    assert "The reader has already received every release that could go out" in out


def test_no_send_and_collected_archives_are_explained(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, files = setup
    mailer(config, "subscribers", "add", "ona@example.net", "--confirmed")
    (files / "c.txt").write_text(ARCHIVE_RELEASE, encoding="utf-8")
    code, out = mailer(config, "ingest", "--no-send", str(files / "c.txt"))
    assert code == 0 and "excluded from digests (--no-send)" in out
    # A collected source's archive stays out of inboxes: that is what max_age is for.
    (tmp_path / "drop" / "old.txt").write_text(RELEASE_2023, encoding="utf-8")
    (tmp_path / "drop" / "archive.md").write_text(
        "# Embassy in Kyiv resumes consular services\n\nDate: 2024-06-18\n\n"
        "The Lithuanian embassy in Kyiv resumed consular services for citizens on Tuesday.\n",
        encoding="utf-8",
    )
    code, out = mailer(config, "collect")
    assert code == 0, out
    code, out = mailer(config, "digest", "send", "--dry-run")
    assert "Would send to 0 recipients" in out
    assert "2 releases are older than digest.max_age (14d) and not sent" in out
    assert "1 release is excluded from digests by an editor" in out
    code, out = mailer(config, "digest", "preview")
    assert "A send now would reach 0 recipients of 1 confirmed reader" in out


def test_topics_and_confirmation_order_are_explained(setup: tuple[Path, Path]) -> None:
    config, files = setup
    mailer(config, "ingest", str(files / "a.txt"))
    # Confirmed after the release arrived: readers get what arrives after confirming.
    mailer(config, "subscribers", "add", "late@example.net", "--confirmed")
    mailer(config, "subscribers", "add", "energy@example.net", "--confirmed", "--topic", "energy")
    _, out = mailer(config, "digest", "send", "--dry-run")
    assert "Would send to 0 recipients" in out
    assert "2 readers confirmed after these releases arrived" in out
    mailer(config, "ingest", str(files / "b.txt"))
    (files / "d.txt").write_text(ARCHIVE_RELEASE, encoding="utf-8")
    mailer(config, "ingest", str(files / "d.txt"))
    _, out = mailer(config, "digest", "send", "--dry-run")
    assert "Would send to 2 recipients" in out
    mailer(config, "subscribers", "add", "health@example.net", "--confirmed", "--topic", "energy")
    _, out = mailer(config, "digest", "send", "--yes", "--no-wait")
    assert "queued for 2 recipients" in out
    assert "1 reader confirmed after these releases arrived" in out
    (files / "e.txt").write_text(
        "Embassy in Canberra opens\n\n2025-10-24\n\nThe embassy of Lithuania in Canberra "
        "opened on Friday with a consular section.\n",
        encoding="utf-8",
    )
    mailer(config, "ingest", str(files / "e.txt"))
    _, out = mailer(config, "digest", "send", "--dry-run")
    assert "Would send to 1 recipient " in out
    assert "2 readers chose topics that match none of the releases not yet sent to them" in out


def test_ingest_dry_run_runs_the_same_dedupe_and_every_arrival_notifies(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, files = setup
    mailer(
        config, "subscribers", "add", "now@example.net", "--confirmed", "--frequency", "immediately"
    )
    code, out = mailer(config, "ingest", str(files / "b.txt"))
    assert code == 0
    assert "“as soon as published” reader" in out
    first = digests(config)
    assert [(d.frequency, d.recipient_count) for d in first] == [("immediately", 1)]

    # The same release again, as the ministry's Atom feed carries it with a time.
    copy = files / "b-copy.md"
    copy.write_text(
        "---\ntitle: Prime Minister Šimonytė meets Baltic counterparts on energy security\n"
        "date: 2025-10-23T15:10:00+03:00\n---\n" + RELEASE_2025.split("2025-10-23\n", 1)[1],
        encoding="utf-8",
    )
    code, out = mailer(config, "ingest", "--dry-run", str(copy))
    assert code == 0
    assert "would merge into #1 “Prime Minister Šimonytė meets Baltic" in out
    assert "nothing stored (--dry-run)" in out
    assert len(releases(config)) == 1 and len(releases(config)[0].links) == 1
    code, out = mailer(config, "ingest", str(copy))
    assert "merged into #1" in out
    (release,) = releases(config)
    # The merge keeps the most precise date: 15:10+03:00, not the bare day.
    assert not release.published_date_only
    assert release.published_at == utcnow().replace(
        year=2025, month=10, day=23, hour=12, minute=10, second=0, microsecond=0
    )
    code, out = mailer(config, "releases")
    assert "2025-10-23 15:10 EEST" in out and "Europe/Vilnius" in out
    code, out = mailer(config, "sources")
    assert "Manual ingest" in out

    # A collection from the command line notifies exactly like a scheduled one.
    (tmp_path / "drop" / "new.md").write_text(
        "# Government approves the digital services plan\n\n"
        f"Date: {(utcnow() - timedelta(hours=2)).date().isoformat()}\n\n"
        "The Government approved the plan for digital public services on Wednesday.\n",
        encoding="utf-8",
    )
    code, out = mailer(config, "collect")
    assert code == 0, out
    assert "“as soon as published” reader" in out
    assert [d.frequency for d in digests(config)] == ["immediately", "immediately"]


def test_two_copies_in_one_dry_run_say_which_file_they_merge_with(
    setup: tuple[Path, Path],
) -> None:
    config, files = setup
    copy = files / "b-copy.txt"
    copy.write_text(RELEASE_2025.replace("Thursday", "Thursday,"), encoding="utf-8")
    code, out = mailer(config, "ingest", "--dry-run", str(files / "b.txt"), str(copy))
    assert code == 0, out
    assert "would store" in out
    assert (
        "would merge into “Prime Minister Šimonytė meets Baltic counterparts on energy security”"
        f" (new from {files / 'b.txt'})" in out
    )
    assert "would be 1 new, 0 updated, 0 unchanged, 1 merged" in out
    assert releases(config) == []
    code, out = mailer(config, "ingest", str(files / "b.txt"), str(copy))
    assert "2 releases read: 1 new, 0 updated, 0 unchanged, 1 merged." in out
