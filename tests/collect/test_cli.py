"""The commands as a user runs them: ingest, collect, sources, releases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailer.cli import main
from tests.collect.conftest import TEST_COLLECTOR, TOPICS
from tests.collect.server import FIXTURES, LocalServer

EXAMPLES = Path(__file__).parents[2] / "examples" / "releases"


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "database": {"url": sqlite_url},
                "secret_key": "test-secret-key-0123456789abcdef",
                "topics": TOPICS,
                "sources": [],
                "collector": {
                    **TEST_COLLECTOR,
                    "folder_roots": [*TEST_COLLECTOR["folder_roots"], str(tmp_path)],
                },
            }
        )
    )
    return path


def with_sources(config: Path, sources: list[dict[str, object]]) -> Path:
    raw = yaml.safe_load(config.read_text())
    raw["sources"] = sources
    config.write_text(yaml.safe_dump(raw))
    return config


def mailer(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_ingest_dry_run_prints_one_json_object_per_release_and_stores_nothing(
    config: Path,
) -> None:
    code, out, _ = mailer(config, "ingest", "--dry-run", "--json", str(EXAMPLES))
    assert code == 0
    rows = json_lines(out)
    assert len(rows) == 4
    for row in rows:
        assert {"title", "published", "source", "url", "text"} <= row.keys()
        assert row["source"] == "Manual ingest"
    by_title = {row["title"]: row for row in rows}
    embassy = by_title["Lithuanian embassy in Kyiv resumes consular services"]
    assert embassy["published"] == "2024-06-18T08:15:00+00:00"
    assert embassy["url"] is None
    vaccination = by_title["Spring vaccination campaign opens in 60 municipalities"]
    assert vaccination["url"] == "https://sam.example.lt/news/spring-vaccination-campaign"
    code, out, _ = mailer(config, "releases", "--json")
    assert code == 0 and out.strip() == ""


def test_ingest_stores_good_files_and_reports_bad_ones_with_exit_2(
    config: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.txt"
    good.write_text(
        "Budget approved\n\nDate\n2025 10 23\n\nThe government approved the 2026 budget.",
        encoding="utf-8",
    )
    empty = tmp_path / "empty.md"
    empty.write_text("   \n")
    unsupported = tmp_path / "scan.pdf"
    unsupported.write_bytes(b"%PDF-1.4")
    code, out, err = mailer(
        config, "ingest", str(good), str(empty), str(unsupported), str(tmp_path / "missing.txt")
    )
    assert code == 2
    assert "1 release read: 1 new" in out
    assert f"{empty}: the file is empty" in err
    assert f"{unsupported}: unsupported file type .pdf" in err
    assert f"{tmp_path / 'missing.txt'}: no such file or folder" in err
    rows = json_lines(mailer(config, "releases", "--json")[1])
    assert [row["title"] for row in rows] == ["Budget approved"]
    assert rows[0]["published"] == "2025-10-23"  # a date stays a date
    assert rows[0]["topics"] == ["economy"]
    assert rows[0]["sources"] == [{"name": "Manual ingest", "url": None}]
    # Ingesting the same file again changes nothing.
    code, out, _ = mailer(config, "ingest", str(good))
    assert code == 0 and "1 unchanged" in out


def test_ingest_of_only_a_missing_path_is_bad_input(config: Path, tmp_path: Path) -> None:
    code, _, err = mailer(config, "ingest", str(tmp_path / "nope"))
    assert code == 2 and "no such file or folder" in err


def test_collect_shows_a_table_and_fails_when_a_source_fails(
    config: Path, server: LocalServer, tmp_path: Path
) -> None:
    server.serve_fixture("/ministry", "ministry.xml", "application/rss+xml")
    server.serve_fixture("/aggregator", "aggregator.xml", "application/atom+xml")
    server.serve_fixture("/broken", "not-a-feed.html", "text/html")
    folder = tmp_path / "drop"
    shutil.copytree(EXAMPLES, folder)
    with_sources(
        config,
        [
            {"name": "Ministry", "kind": "feed", "url": server.url("/ministry"), "retries": 0},
            {"name": "NewsWire", "kind": "feed", "url": server.url("/aggregator"), "retries": 0},
            {"name": "Broken", "kind": "feed", "url": server.url("/broken"), "retries": 0},
            {"name": "Drop folder", "kind": "folder", "path": str(folder)},
        ],
    )
    code, out, err = mailer(config, "collect")
    assert code == 1 and "1 of 4 sources failed" in err
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "│" in line}
    assert "expected a feed but got an HTML page" in out
    assert [cell.strip() for cell in lines["Drop folder"].split("│")[2:6]] == ["4", "0", "0", "0"]

    code, out, _ = mailer(config, "collect", "--source", "Ministry", "--json")
    assert code == 0
    [row] = json_lines(out)
    assert row["source"] == "Ministry" and row["not_modified"] is False and row["unchanged"] == 2

    code, _, err = mailer(config, "collect", "--source", "Nope")
    assert code == 2 and "no enabled source named 'Nope'" in err

    code, out, _ = mailer(config, "sources", "--json")
    health = {row["name"]: row for row in json_lines(out)}
    assert health["Broken"]["status"] == "failing"
    assert "expected a feed" in health["Broken"]["last_error"]
    assert health["Ministry"]["status"] == "ok" and health["Ministry"]["last_error"] is None
    code, out, _ = mailer(config, "sources")
    assert code == 0 and "failing" in out and "Broken" in out


def test_releases_json_lists_newest_first_with_every_field(
    config: Path, server: LocalServer
) -> None:
    server.serve_fixture("/ministry", "ministry.xml", "application/rss+xml")
    server.serve_fixture("/aggregator", "aggregator.xml", "application/atom+xml")
    with_sources(
        config,
        [
            {"name": "Ministry", "kind": "feed", "url": server.url("/ministry")},
            {"name": "NewsWire", "kind": "feed", "url": server.url("/aggregator")},
        ],
    )
    # The ministry's copy first: a release keeps the title and address of the copy
    # stored first, and a plain `collect` reads both sources side by side.
    assert mailer(config, "collect", "--source", "Ministry")[0] == 0
    assert mailer(config, "collect")[0] == 0
    code, out, _ = mailer(config, "releases", "--json")
    rows = json_lines(out)
    assert code == 0 and len(rows) == 3
    published = [row["published"] for row in rows]
    assert published == sorted(published, reverse=True)
    summit = next(r for r in rows if "NATO" in str(r["title"]))
    assert {
        "id", "title", "published", "sources", "url", "summary", "text", "html", "topics"
    } <= summit.keys()  # fmt: skip
    assert sorted(s["name"] for s in summit["sources"]) == ["Ministry", "NewsWire"]
    assert summit["url"] == "https://urm.example.lt/news/vilnius-summit"
    assert "foreign-affairs" in summit["topics"]
    assert "<script" not in summit["html"]
    code, out, _ = mailer(config, "releases", "--topic", "economy", "--json")
    assert [r["title"] for r in json_lines(out)] == [
        "Estonian central bank keeps its inflation forecast",
        summit["title"],
    ]
    code, out, _ = mailer(config, "releases", "--limit", "1")
    assert code == 0 and "Estonian central bank" in out and "NATO" not in out
    assert (FIXTURES / "ministry.xml").exists()
