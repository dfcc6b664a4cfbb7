"""The admin, the JSON API and the CLI are three shells over one subscriber domain:
asked the same question, they give the same answer, also when the mail server is
down or refuses the confirmation mail."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from mailer import accounts, audit
from mailer import subscribers as store
from mailer.cli import main
from mailer.config import Settings
from mailer.models import SubscriberStatus
from tests.admin.conftest import AdminSite, post_form, site_settings
from tests.support.faulty_smtp import FaultPlan, FaultySmtpServer

QUEUED = "confirmation queued, will retry: "


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MailServer:
    """The SMTP server the site talks to, in one of the states a press office meets."""

    state: str
    port: int
    server: FaultySmtpServer | None = None

    def recover(self) -> FaultySmtpServer:
        """The server works again (started on the same port when it was down)."""
        if self.server is None:
            self.server = FaultySmtpServer(port=self.port).start()
        plan = self.server.handler.plan
        plan.refuse_connections = 0
        plan.reject_rcpt.clear()
        return self.server


@pytest.fixture(params=["down", "busy", "refusing"])
def mail_server(request: pytest.FixtureRequest) -> Iterator[MailServer]:
    """down: nothing listens on the port; busy: every connection is greeted with 421;
    refusing: RCPT is answered 550 for the readers the tests add."""
    if request.param == "down":
        served = MailServer("down", _closed_port())
    else:
        plan = FaultPlan()
        if request.param == "busy":
            plan.refuse_connections = 10**6
        else:
            plan.reject_rcpt = {f"{shell}@example.org" for shell in ("admin", "api", "cli")}
        server = FaultySmtpServer(plan).start()
        served = MailServer(request.param, server.port, server)
    yield served
    if served.server is not None:
        served.server.stop()


@pytest.fixture
def admin_settings(tmp_path: Path, sqlite_url: str, mail_server: MailServer) -> Settings:
    return site_settings(
        tmp_path,
        sqlite_url,
        smtp={"embedded": False, "host": "127.0.0.1", "port": mail_server.port, "timeout": 5},
    )


def _cli_config(site: AdminSite, tmp_path: Path) -> Path:
    """The CLI on the site's database, secret key and mail server."""
    settings = site.settings
    path = tmp_path / "cli-config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "cli-data"),
                "database": {"url": settings.database.url},
                "secret_key": settings.get_secret_key(),
                "site": {"base_url": settings.site.base_url},
                "topics": [{"name": t.name} for t in settings.topics],
                "smtp": {
                    "embedded": settings.smtp.embedded,
                    "host": settings.smtp.host,
                    "port": settings.smtp.port,
                    "timeout": 5,
                },
            }
        )
    )
    return path


async def _cli(config: Path, *args: str) -> tuple[int, str, str]:
    # The CLI runs its own event loop, so it gets a thread of its own.
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


async def _flash(client: httpx.AsyncClient, response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"])
    found = re.search(r'class="flash[^"]*"[^>]*>(.*?)</', page.text, re.S)
    assert found, "the page shows no notice"
    return html.unescape(found.group(1)).strip()


def _mail_words(text: str) -> str:
    """The words about the confirmation mail in a shell's answer."""
    found = re.search(r"confirmation (?:queued, will retry: .*|sent)", text, re.I | re.S)
    assert found, text
    return found.group(0).strip().rstrip(".").lower()


async def test_a_confirmation_the_server_does_not_take_is_queued_by_every_shell(
    site: AdminSite,
    admin_client: httpx.AsyncClient,
    mail_server: MailServer,
    tmp_path: Path,
) -> None:
    answers: dict[str, str] = {}
    added = await post_form(
        admin_client,
        "/admin/subscribers/new",
        "/admin/subscribers/new",
        {"email": "admin@example.org"},
    )
    answers["admin"] = _mail_words(await _flash(admin_client, added))

    token, _ = await accounts.create_token(site.db, "cms", "admin")
    async with site.client() as api:
        created = await api.post(
            "/api/subscribers",
            json={"email": "api@example.org"},
            headers={"authorization": f"Bearer {token}"},
        )
    assert created.status_code == 201, created.text
    assert created.json()["confirmation_sent"] is False
    answers["api"] = _mail_words(created.json()["confirmation"])

    code, out, err = await _cli(
        _cli_config(site, tmp_path), "subscribers", "add", "cli@example.org"
    )
    assert code == 0, err
    answers["cli"] = _mail_words(out)

    # The same words from each, naming the server and what went wrong.
    assert answers["admin"].startswith(QUEUED), answers
    assert f"127.0.0.1:{mail_server.port}" in answers["admin"]
    assert answers["admin"] == answers["api"] == answers["cli"], answers
    # Each saved its subscriber, pending, and wrote who added it to the audit log.
    actors = {"admin": "user:alice", "api": "token:cms", "cli": "cli"}
    entries, _ = await audit.query(site.db, action="subscriber.add")
    logged = {e.actor: e for e in entries}
    for shell, actor in actors.items():
        view = await store.find_subscriber(site.db, f"{shell}@example.org")
        assert view is not None and view.status is SubscriberStatus.PENDING, shell
        assert logged[actor].target_id == str(view.id), shell
        assert logged[actor].details["outcome"] == "added"

    # The queued confirmations go out once the server takes mail again.
    server = mail_server.recover()
    # (The site's clock: the CLI's request, stamped by the wall clock, is newer.)
    now = site.clock.now()
    assert await store.retry_queued_mail(site.db, site.settings, now=now) == 3
    assert sorted(server.handler.delivered()) == [
        "admin@example.org",
        "api@example.org",
        "cli@example.org",
    ]
    assert await store.retry_queued_mail(site.db, site.settings, now=now) == 0


class TestSameQuestionSameAnswer:
    """Add one, show one, export: the admin, the API and the CLI agree."""

    @pytest.fixture
    def mail_server(self) -> Iterator[MailServer]:
        server = FaultySmtpServer().start()
        yield MailServer("working", server.port, server)
        server.stop()

    async def test_add_show_and_export(
        self,
        site: AdminSite,
        admin_client: httpx.AsyncClient,
        mail_server: MailServer,
        tmp_path: Path,
    ) -> None:
        token, _ = await accounts.create_token(site.db, "cms", "admin")
        bearer = {"authorization": f"Bearer {token}"}
        config = _cli_config(site, tmp_path)

        # Add one: the same reader (name, topic, frequency) through each shell.
        added = await post_form(
            admin_client,
            "/admin/subscribers/new",
            "/admin/subscribers/new",
            {
                "email": "admin@example.org",
                "name": "Ona",
                "topics": ["health"],
                "frequency": "weekly",
            },
        )
        admin_answer = await _flash(admin_client, added)
        async with site.client() as api:
            created = await api.post(
                "/api/subscribers",
                json={
                    "email": "api@example.org",
                    "name": "Ona",
                    "topics": ["health"],
                    "frequency": "weekly",
                },
                headers=bearer,
            )
        assert created.status_code == 201, created.text
        code, cli_answer, err = await _cli(
            config,
            *("subscribers", "add", "cli@example.org", "--name", "Ona"),
            *("--topic", "health", "--frequency", "weekly"),
        )
        assert code == 0, err
        assert "added" in admin_answer and created.json()["outcome"] == "added"
        assert cli_answer.startswith("Added cli@example.org (pending).")
        mails = {_mail_words(admin_answer), _mail_words(created.json()["confirmation"])}
        assert mails == {_mail_words(cli_answer)} == {"confirmation sent"}
        assert sorted(mail_server.server.handler.delivered()) == [  # type: ignore[union-attr]
            "admin@example.org",
            "api@example.org",
            "cli@example.org",
        ]

        def kept(view: dict[str, object]) -> dict[str, object]:
            return {k: v for k, v in view.items() if k not in ("id", "email", "created_at")}

        stored = {}
        for shell in ("admin", "api", "cli"):
            view = await store.find_subscriber(site.db, f"{shell}@example.org", site.settings)
            assert view is not None
            stored[shell] = kept(view.as_dict())
        assert stored["admin"] == stored["api"] == stored["cli"]
        assert stored["admin"]["topics"] == ["health"] and stored["admin"]["frequency"] == "weekly"

        # Show one.
        reader = await store.find_subscriber(site.db, "api@example.org", site.settings)
        assert reader is not None
        async with site.client() as api:
            shown = await api.get(f"/api/subscribers/{reader.id}", headers=bearer)
        assert shown.status_code == 200, shown.text
        code, cli_shown, err = await _cli(config, "subscribers", "show", "API@example.org")
        assert code == 0, err
        assert shown.json() == json.loads(cli_shown) == reader.as_dict()
        page = await admin_client.get(f"/admin/subscribers/{reader.id}")
        assert page.status_code == 200
        for value in ("api@example.org", "Ona", "weekly", "Health", "pending"):
            assert value in page.text, value

        # Export: the admin's CSV is the CLI's CSV, the API's JSON the CLI's JSON.
        admin_file = (await admin_client.get("/admin/subscribers/export.csv")).content
        code, _, err = await _cli(config, "subscribers", "export", "-o", str(tmp_path / "x.csv"))
        assert code == 0, err
        assert admin_file == (tmp_path / "x.csv").read_bytes()
        admin_csv = admin_file.decode()
        assert [r["email"] for r in csv.DictReader(io.StringIO(admin_csv))] == [
            "admin@example.org",
            "api@example.org",
            "cli@example.org",
        ]
        async with site.client() as api:
            api_export = await api.get("/api/subscribers/export", headers=bearer)
        code, cli_json, err = await _cli(config, "subscribers", "export", "--format", "json")
        assert code == 0, err
        assert api_export.json() == json.loads(cli_json)
        assert [r["email"] for r in api_export.json()] == [
            "admin@example.org",
            "api@example.org",
            "cli@example.org",
        ]
        # Taking the data out is logged whoever does it.
        entries, _ = await audit.query(site.db, action="subscriber.export")
        assert sorted(e.actor for e in entries) == ["cli", "cli", "token:cms", "user:alice"]
