"""`mailer subscribers ...` through click, against a configuration file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailer.cli import main


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": "data",
                "database": {"url": sqlite_url},
                "secret_key": "cli-test-secret-key-0123456789",
                "topics": [{"name": "Economy"}, {"name": "Health"}],
                "smtp": {"embedded": True},
            }
        )
    )
    return path


def mailer(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_add_confirmed_and_list(config: Path) -> None:
    code, out, _ = mailer(config, "subscribers", "add", "Ona@Example.org", "--name", "Ona",
                          "--topic", "health", "--confirmed")  # fmt: skip
    assert code == 0 and "Added Ona@example.org (confirmed)" in out
    code, out, _ = mailer(config, "subscribers", "list", "--json")
    [row] = json.loads(out)
    assert (row["email"], row["status"], row["topics"], row["name"]) == (
        "Ona@example.org", "confirmed", ["health"], "Ona",
    )  # fmt: skip
    code, out, _ = mailer(config, "subscribers", "list", "--status", "pending")
    assert code == 0 and "No subscribers with status pending." in out


def test_add_pending_mails_a_confirmation_link(config: Path, tmp_path: Path) -> None:
    code, out, _ = mailer(config, "subscribers", "add", "ona@example.org")
    assert code == 0 and "pending" in out and "Confirmation sent." in out
    [mail] = list((tmp_path / "data" / "mail").glob("*.eml"))
    assert b"/confirm/" in mail.read_bytes().replace(b"=\n", b"")


@pytest.mark.parametrize("address", ["not-an-address", "a@b", "x\n@example.org"])
def test_add_invalid_address_exits_2(config: Path, address: str) -> None:
    code, _, err = mailer(config, "subscribers", "add", address)
    assert code == 2 and "not" in err.lower()


def test_removed_address_needs_resubscribe(config: Path) -> None:
    mailer(config, "subscribers", "add", "ona@example.org", "--confirmed")
    code, out, _ = mailer(config, "subscribers", "remove", "ONA@example.org")
    assert code == 0 and "erased" in out
    code, _, err = mailer(config, "subscribers", "remove", "ona@example.org")
    assert code == 2 and "no subscriber" in err
    code, _, err = mailer(config, "subscribers", "add", "ona@example.org", "--confirmed")
    assert code == 2 and "suppression list" in err and "--resubscribe" in err
    code, out, _ = mailer(config, "subscribers", "add", "ona@example.org", "--confirmed",
                          "--resubscribe")  # fmt: skip
    assert code == 0 and "confirmed" in out


def test_import_reports_lines_and_exports_round_trip(config: Path, tmp_path: Path) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        "email,name,topics\n"
        "ona@example.org,Ona Šimonytė,economy\n"
        "broken,,\n"
        "petras@example.lt,,\n"
        "ONA@example.org,,Health\n",
        encoding="utf-8",
    )
    code, out, err = mailer(config, "subscribers", "import", str(source), "--status", "confirmed")
    assert code == 2
    assert f"{source}:3:" in err
    assert "Imported 2 new" in out and "merged 1 duplicate" in out and "rejected 1" in out

    code, out, _ = mailer(config, "subscribers", "export")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["email"], r["name"], r["topics"], r["status"]) for r in rows] == [
        ("ona@example.org", "Ona Šimonytė", "economy;health", "confirmed"),
        ("petras@example.lt", "", "", "confirmed"),
    ]
    target = tmp_path / "out.json"
    code, _, _ = mailer(config, "subscribers", "export", "--format", "json", "-o", str(target))
    assert code == 0
    assert [r["email"] for r in json.loads(target.read_text())] == [
        "ona@example.org",
        "petras@example.lt",
    ]
    clean = tmp_path / "clean.csv"
    clean.write_text("email\nnew@example.org\n")
    code, out, _ = mailer(config, "subscribers", "import", str(clean))
    assert code == 0 and "Imported 1 new" in out


def test_import_of_unreadable_file_exits_2(config: Path, tmp_path: Path) -> None:
    code, _, err = mailer(config, "subscribers", "import", str(tmp_path / "missing.csv"))
    assert code == 2 and "no such file" in err
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("address\na@example.org\n")
    code, _, err = mailer(config, "subscribers", "import", str(wrong))
    assert code == 2 and "no 'email' column" in err
