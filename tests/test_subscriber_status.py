"""Suppressed and bounced readers are shown as such by the CLI (the admin's pages:
tests/admin/test_suppression_pages.py), and special-use domains are accepted only
where the configuration allows them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from mailer import subscribers as store
from mailer.config import load_settings
from mailer.context import AppContext
from mailer.suppression import suppress
from tests.test_subscribers_cli import mailer


def _config(tmp_path: Path, database_url: str, **signup: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": "data",
                "database": {"url": database_url},
                "secret_key": "cli-test-secret-key-0123456789",
                "smtp": {"embedded": True},
                "signup": signup,
            }
        )
    )
    return path


async def _readers(config: Path) -> None:
    """ona: confirmed; jonas: bounced (5.1.1); rita: complained; petras: unsubscribed."""
    settings = load_settings(config)
    async with AppContext(settings=settings).database() as database:
        for name in ("ona", "jonas", "rita", "petras"):
            await store.add(database, settings, f"{name}@example.org", confirmed=True)
        async with database.transaction() as session:
            await suppress(session, settings, "jonas@example.org", "hard-bounce", "5.1.1")
            await suppress(session, settings, "rita@example.org", "complaint")
        petras = await store.find_subscriber(database, "petras@example.org")
        assert petras is not None
        await store.unsubscribe(database, settings, petras.id)


def test_list_export_and_json_show_suppression(tmp_path: Path, database_url: str) -> None:
    config = _config(tmp_path, database_url)
    asyncio.run(_readers(config))

    def listed(*args: str) -> list[str]:
        code, out, _ = mailer(config, "subscribers", "list", "--json", *args)
        assert code == 0
        return [row["email"].split("@")[0] for row in json.loads(out)]

    assert listed("--status", "suppressed") == ["jonas", "rita"]
    assert listed("--status", "bounced") == ["jonas"]
    assert listed("--status", "confirmed") == ["ona"]
    assert listed("--status", "unsubscribed") == ["petras"]

    code, out, _ = mailer(config, "subscribers", "list", "--json")
    rows = {row["email"]: row for row in json.loads(out)}
    jonas = rows["jonas@example.org"]
    assert (jonas["status"], jonas["subscription"], jonas["suppression"]) == (
        "bounced",
        "confirmed",
        "hard-bounce",
    )
    assert jonas["suppression_details"] == "5.1.1"
    assert (rows["rita@example.org"]["status"], rows["rita@example.org"]["suppression"]) == (
        "suppressed",
        "complaint",
    )
    assert rows["ona@example.org"]["suppression"] is None

    code, out, _ = mailer(config, "subscribers", "list")
    line = next(line for line in out.splitlines() if line.startswith("jonas@"))
    assert " bounced " in line and line.endswith("hard-bounce: 5.1.1")

    code, out, _ = mailer(config, "subscribers", "export")
    exported = {row["email"]: row for row in csv.DictReader(io.StringIO(out))}
    assert exported["jonas@example.org"]["status"] == "bounced"
    assert exported["jonas@example.org"]["suppression"] == "hard-bounce: 5.1.1"
    assert exported["rita@example.org"]["status"] == "suppressed"
    assert exported["ona@example.org"]["suppression"] == ""

    code, _, err = mailer(config, "subscribers", "list", "--status", "gone")
    assert code == 2 and "suppressed" in err and "bounced" in err


@pytest.mark.parametrize("address", ["ona@news.test", "ona@mail.localhost", "ona@x.invalid"])
def test_special_use_domains_only_when_allowed(
    tmp_path: Path, sqlite_url: str, address: str
) -> None:
    refused = _config(tmp_path, sqlite_url)
    code, _, err = mailer(refused, "subscribers", "add", address, "--confirmed")
    assert code == 2 and "signup.allow_special_use_domains" in err
    allowed = _config(tmp_path, sqlite_url, allow_special_use_domains=True)
    code, out, _ = mailer(allowed, "subscribers", "add", address.upper(), "--confirmed")
    assert code == 0, out
    assert f"Added ONA@{address.split('@')[1]} (confirmed)" in out
