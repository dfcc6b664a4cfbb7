"""The topics and sources in config.yaml reach the database when a command starts,
and a command that only reads writes nothing (mailer.catalog)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from mailer import db as mailer_db
from mailer.catalog import sync_catalog
from mailer.cli import main
from mailer.context import AppContext
from tests.conftest import make_settings

ENERGY = {"name": "Energy", "keywords": ["energy"]}
PORTS = {"name": "Ports", "slug": "ports", "keywords": ["harbour"]}


def write_config(path: Path, database_url: str, topics: list[dict[str, object]]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(path.parent / "data"),
                "database": {"url": database_url},
                "secret_key": "test-secret-key-0123456789abcdef",
                "topics": topics,
            }
        )
    )
    return path


def mailer(config: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.stdout


def release_topics(config: Path) -> dict[str, list[str]]:
    rows = [json.loads(line) for line in mailer(config, "releases", "--json").splitlines()]
    return {row["title"]: row["topics"] for row in rows}


def test_a_topic_added_to_the_configuration_tags_the_next_release(
    tmp_path: Path, database_url: str
) -> None:
    config = write_config(tmp_path / "config.yaml", database_url, [ENERGY])
    first = tmp_path / "first.md"
    first.write_text("# New harbour cranes for the energy terminal\n\nThe harbour gets cranes.\n")
    mailer(config, "ingest", str(first))
    assert release_topics(config) == {"New harbour cranes for the energy terminal": ["energy"]}

    write_config(config, database_url, [ENERGY, PORTS])
    second = tmp_path / "second.md"
    second.write_text("# Harbour dredging starts\n\nDredging of the harbour starts in May.\n")
    mailer(config, "ingest", str(second))

    assert release_topics(config)["Harbour dredging starts"] == ["ports"]


def test_db_upgrade_says_what_the_configuration_changed(tmp_path: Path, database_url: str) -> None:
    config = write_config(tmp_path / "config.yaml", database_url, [ENERGY])
    mailer(config, "db", "upgrade")
    write_config(config, database_url, [PORTS])

    out = mailer(config, "db", "upgrade")

    assert "Configuration: topic ports added." in out
    assert "Configuration: topic energy retired (not in the configuration)." in out
    assert "Configuration:" not in mailer(config, "db", "upgrade")


def test_a_read_only_command_answers_while_another_process_writes(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite only: there a writer locks the whole database, so a command that
    # wrote anything (even an unchanged catalog) would fail with "database is locked".
    config = write_config(tmp_path / "config.yaml", sqlite_url, [ENERGY, PORTS])
    mailer(config, "db", "upgrade")
    # Fail within a fraction of a second instead of after the 30 s production wait.
    monkeypatch.setattr(mailer_db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    connection = sqlite3.connect(make_url(sqlite_url).database or "", isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        assert mailer(config, "releases", "--json") == ""
        assert "Sources" in mailer(config, "sources")
    finally:
        connection.execute("ROLLBACK")
        connection.close()


async def test_an_unchanged_configuration_changes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, topics=[ENERGY, PORTS])
    context = AppContext(settings=settings)
    async with context.database() as database:
        assert await sync_catalog(database, settings) == []
        changed = make_settings(tmp_path, database_url, topics=[PORTS])
        assert await sync_catalog(database, changed) == [
            "topic energy retired (not in the configuration)"
        ]
        assert await sync_catalog(database, changed) == []
