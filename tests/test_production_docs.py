"""docs/production.md works when pasted: its main.cf is accepted by Postfix's own
parser, its systemd units pass systemd-analyze, its config and environment file
load. (tests/send/test_postfix_loop.py runs a real Postfix on its main.cf.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mailer.cli import main
from mailer.config import ENV_OVERRIDES, settings_from_mapping
from tests.conftest import IN_CI
from tests.support.postfix import documented_block, parse_main_cf

UNITS = ("/etc/systemd/system/mailer-serve.service", "/etc/systemd/system/mailer-worker@.service")
DOCUMENTED_MAILER = "/srv/mailer/.venv/bin/mailer"


def _needs(program: str) -> None:
    if shutil.which(program) is None:
        if IN_CI:
            pytest.fail(f"{program} is required under CI (.ci/run installs it)")
        pytest.skip(f"{program} is not installed")


def test_main_cf_is_accepted_by_postconf(tmp_path: Path) -> None:
    _needs("postconf")
    text = documented_block("/etc/postfix/main.cf")
    for line in text.splitlines():
        # Postfix has no end-of-line comments: "100   # note" is the value.
        assert "#" not in line or line.lstrip().startswith("#"), line
    (tmp_path / "main.cf").write_text(text)
    (tmp_path / "master.cf").write_text(Path("/etc/postfix/master.cf").read_text())
    shown = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-n"], capture_output=True, text=True, check=True
    )
    assert shown.stderr == "", shown.stderr  # no unknown or repeated parameters
    assert parse_main_cf(shown.stdout) == {
        "config_directory": str(tmp_path),
        **parse_main_cf(text),
    }
    delimiter = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-h", "recipient_delimiter", "default_process_limit"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert delimiter.stdout.split("\n")[:2] == ["+", "200"]


def test_main_cf_check_catches_end_of_line_comments(tmp_path: Path) -> None:
    _needs("postconf")
    (tmp_path / "main.cf").write_text("recipient_delimiter = +   # VERP\n")
    shown = subprocess.run(
        ["postconf", "-c", str(tmp_path), "-h", "recipient_delimiter"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() != "+", "the comment became part of the value"


@pytest.mark.parametrize("target", UNITS)
def test_systemd_units(tmp_path: Path, target: str) -> None:
    text = documented_block(target)
    for line in text.splitlines():
        # systemd has no end-of-line comments either.
        assert "#" not in line or line.startswith("#"), line
    keys = [line.split("=", 1)[0] for line in text.splitlines() if "=" in line]
    assert len(keys) == len(set(keys))
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert settings["Wants"] == settings["After"] == "network-online.target"
    assert settings["EnvironmentFile"] == "/etc/mailer/env"
    assert settings["User"] == "mailer" and settings["Restart"] == "always"

    command = settings["ExecStart"].split()
    assert command[0] == DOCUMENTED_MAILER
    # The command line is one mailer understands (with the documented config file).
    config = tmp_path / "config.yaml"
    config.write_text(documented_block("/etc/mailer/config.yaml"))
    arguments = [str(config) if a == "/etc/mailer/config.yaml" else a for a in command[1:]]
    result = CliRunner().invoke(main, [*arguments, "--help"])
    assert result.exit_code == 0, result.output

    _needs("systemd-analyze")
    mailer = Path(sys.prefix) / "bin" / "mailer"
    name = Path(target).name.replace("@.", "@1.")
    unit = tmp_path / name
    unit.write_text(text.replace(DOCUMENTED_MAILER, str(mailer)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True
    )
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr


def test_config_and_environment_file_load(tmp_path: Path) -> None:
    raw = yaml.safe_load(documented_block("/etc/mailer/config.yaml"))
    environment = {}
    for line in documented_block("/etc/mailer/env").splitlines():
        name, _, value = line.partition("=")
        assert name in ENV_OVERRIDES and value and "#" not in value and '"' not in value
        environment[name] = value.replace("THE-KEY-PRINTED-ABOVE", "k" * 64)
    settings = settings_from_mapping(raw, config_path=tmp_path / "config.yaml", environ=environment)
    assert settings.data_path == Path("/var/lib/mailer/data")
    assert settings.bounces.address == "bounces@news.example.org"
    assert settings.database.url.startswith("postgresql://mailer:")
    assert settings.secret_key == "k" * 64
