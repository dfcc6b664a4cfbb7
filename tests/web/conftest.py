"""Fixtures for the web tests: the real app over ASGI with injected clocks, a real
SMTP server catching the mail, and helpers to read forms and links."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.web.app import create_app
from tests.conftest import make_settings
from tests.support.clock import Clock
from tests.support.smtp import SmtpServer

TOPICS = [{"name": "Economy"}, {"name": "Health"}, {"name": "Foreign affairs"}]
BASE_URL = "http://testserver"
CLIENT_IP = "203.0.113.7"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Site:
    app: Starlette
    settings: Settings
    smtp: SmtpServer
    clock: Clock
    client: httpx.AsyncClient
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def database(self) -> Database:
        return self.app.state.web.db

    def new_client(self, ip: str = CLIENT_IP, cookies: bool = True) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 40_000)),
            base_url=BASE_URL,
            follow_redirects=False,
        )
        if not cookies:
            client.cookies = _NoCookies()
        self.clients.append(client)
        return client

    async def token(self, client: httpx.AsyncClient | None = None, path: str = "/") -> str:
        page = await (client or self.client).get(path)
        match = _CSRF.search(page.text)
        assert match, page.text
        return match.group(1)

    async def subscribe(
        self, email: str, client: httpx.AsyncClient | None = None, **fields: Any
    ) -> httpx.Response:
        client = client or self.client
        data: dict[str, Any] = {"email": email, "consent": "yes", **fields}
        data.setdefault("csrf_token", await self.token(client))
        return await client.post("/subscribe", data=data)

    def mails(self, to: str | None = None) -> list[EmailMessage]:
        return [m.message for m in self.smtp.messages if to is None or to in m.rcpt_tos]

    def link(self, message: EmailMessage, kind: str) -> str:
        """The path of the first link of ``kind`` (confirm, preferences, unsubscribe)."""
        text = message.get_body(("plain",)).get_content()
        match = re.search(rf"{re.escape(BASE_URL)}(/{kind}/[^\s<>\"]+)", text)
        assert match, text
        return match.group(1)


class _NoCookies(httpx.Cookies):
    """A cookie jar that never keeps anything (a mail provider's one-click POST)."""

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


SiteFactory = Callable[..., Any]


@pytest.fixture
async def make_site(
    tmp_path: Path, sqlite_url: str, smtp_server: SmtpServer
) -> AsyncIterator[SiteFactory]:
    """Start the app (lifespan included) with settings overrides; closed at teardown."""
    opened: list[tuple[Any, Site]] = []

    async def factory(
        database_url: str | None = None, smtp_port: int | None = None, **sections: Any
    ) -> Site:
        sections.setdefault("topics", TOPICS)
        sections["site"] = {"base_url": BASE_URL, **sections.get("site", {})}
        port = smtp_port or smtp_server.port
        sections["smtp"] = {"embedded": False, "host": "127.0.0.1", "port": port}
        settings = make_settings(tmp_path, database_url or sqlite_url, **sections)
        clock = Clock()
        app = create_app(
            AppContext(settings=settings),
            run_background=False,
            now=clock.now,
            monotonic=clock.monotonic,
        )
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        site = Site(app, settings, smtp_server, clock, client=None)  # type: ignore[arg-type]
        site.client = site.new_client()
        opened.append((lifespan, site))
        return site

    yield factory
    for lifespan, site in reversed(opened):
        for client in site.clients:
            await client.aclose()
        await lifespan.__aexit__(None, None, None)


def closed_port() -> int:
    """A loopback port nothing listens on (an SMTP server that is down)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def site(make_site: SiteFactory) -> Site:
    return await make_site()
