"""Configuration: which file, environment precedence, and one clear line per mistake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailer.cli import main
from mailer.config import ConfigError, load_settings, settings_from_mapping

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_is_valid_and_runs_on_embedded_defaults(monkeypatch) -> None:
    for variable in [v for v in os.environ if v.startswith("MAILER_")]:
        monkeypatch.delenv(variable)
    settings = load_settings(REPO / "config.yaml")
    assert settings.smtp.embedded is True
    assert settings.database.url.startswith("sqlite:///")
    assert settings.site.base_url == "http://127.0.0.1:8000"
    assert settings.data_path == REPO / "data"
    assert [t.key for t in settings.topics] == ["economy", "health", "foreign-affairs"]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "smtp: {host: file.example, port: 2525, embedded: true}\n")
    environ = {
        "MAILER_SMTP_HOST": "env.example",
        "MAILER_SMTP_PORT": "587",
        "MAILER_SMTP_EMBEDDED": "false",
        "MAILER_DATABASE_URL": "postgresql://db.example/mailer",
        "MAILER_BASE_URL": "https://news.example.org/",
        "MAILER_SECRET_KEY": "k" * 32,
    }
    settings = settings_from_mapping(
        {"smtp": {"host": "file.example", "port": 2525}}, config_path=path, environ=environ
    )
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.embedded) == (
        "env.example",
        587,
        False,
    )
    assert settings.database.url == "postgresql://db.example/mailer"
    assert settings.site.base_url == "https://news.example.org"
    assert settings.get_secret_key() == "k" * 32


def test_config_file_choice_flag_then_env_then_cwd(tmp_path: Path, monkeypatch) -> None:
    flag = write(tmp_path, "site: {name: From flag}\n", "flag.yaml")
    env = write(tmp_path, "site: {name: From env}\n", "env.yaml")
    write(tmp_path, "site: {name: From cwd}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILER_CONFIG", raising=False)
    assert load_settings().site.name == "From cwd"
    monkeypatch.setenv("MAILER_CONFIG", str(env))
    assert load_settings().site.name == "From env"
    assert load_settings(flag).site.name == "From flag"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("smtp: {prot: 25}\n", "config.yaml: smtp.prot: unknown key"),
        ("smtp: {port: twenty}\n", "config.yaml: smtp.port: Input should be a valid integer"),
        ("smtp: {security: ssl}\n", "config.yaml: smtp.security:"),
        ("site: [1, 2\n", "config.yaml: invalid YAML (line"),
        ("- just\n- a list\n", "config.yaml: the top level must be a mapping"),
        ("sender: {from: nobody}\n", "config.yaml: sender.from: 'nobody' is not an email address"),
        ('site: {name: "Evil\\r\\nBcc: x@y.z"}\n', "site.name: must not contain line breaks"),
        (
            "digest: {schedules: [{frequency: daily, cron: 'not cron'}]}\n",
            "digest.schedules.0.cron:",
        ),
        ("sources: [{name: a, kind: page, url: 'http://x'}]\n", "needs a link_selector"),
        ("digest: {timezone: Mars/Olympus}\n", "digest.timezone: unknown timezone 'Mars/Olympus'"),
    ],
)
def test_invalid_configuration_gives_one_line_exit_2(tmp_path: Path, text: str, expected: str):
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["--config", str(path), "db", "status"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_missing_and_unreadable_files_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["--config", str(tmp_path / "nope.yaml"), "db", "status"])
    assert missing.exit_code == 2
    assert "nope.yaml: configuration file not found" in missing.output
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    directory = runner.invoke(main, ["--config", str(folder), "db", "status"])
    assert directory.exit_code == 2
    assert "is a directory" in directory.output


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"smtp.port .*MAILER_SMTP_PORT"):
        settings_from_mapping({}, environ={"MAILER_SMTP_PORT": "lots"})


def test_generated_secret_key_is_kept(tmp_path: Path) -> None:
    settings = settings_from_mapping({"data_dir": str(tmp_path / "data")}, environ={})
    first = settings.get_secret_key()
    assert len(first) >= 32
    assert settings.get_secret_key() == first
    key_file = tmp_path / "data" / "secret_key"
    assert key_file.read_text() == first
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: var\ndatabase: {url: 'sqlite:///var/m.db'}\n")
    settings = load_settings(path)
    assert settings.data_path == tmp_path / "var"
