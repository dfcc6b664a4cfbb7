"""A site with tracking switched on, two readers, three releases and a digest that
went out through a recording SMTP server: the links are taken from the mail itself."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from mailer import accounts
from mailer import subscribers as store
from mailer.collect.ingest import add_release
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.send import start_digest
from mailer.web.app import create_app
from tests.admin.conftest import ADMIN_PASSWORD, BASE, login, site_settings
from tests.send.conftest import deliver_all
from tests.support.clock import Clock
from tests.support.smtp import SmtpServer

READERS = ("ona@example.org", "jonas@example.org")
RELEASES = {
    "Government adopts the 2026 budget": "https://gov.example.lt/news/budget",
    "New hospital opens in Kaunas": "https://gov.example.lt/news/hospital",
    "Tax forms move online": "https://gov.example.lt/news/tax-forms",
}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
_TRACKED = re.compile(r'href="(http://127\.0\.0\.1:8000/r/[^"]+)"')
_PIXEL = re.compile(r'src="(http://127\.0\.0\.1:8000/o/[^"]+)"')


@dataclass
class Sent:
    """One reader's caught digest: its tracked links by release title, its image."""

    address: str
    links: dict[str, str]
    image: str | None
    unsubscribe: str
    html: str
    text: str


@dataclass
class TrackedSite:
    app: Starlette
    settings: Settings
    clock: Clock
    digest_id: int = 0
    sent: dict[str, Sent] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.app.state.web.db

    def client(self, ip: str = "198.51.100.20") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(ip, 5000)),
            base_url=BASE,
            follow_redirects=False,
            headers={"user-agent": BROWSER},
        )


def read_mail(data: bytes) -> Sent:
    import email
    import email.policy

    message: Any = email.message_from_bytes(data, policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    links: dict[str, str] = {}
    for match in re.finditer(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', html):
        if "/r/" in match.group(1) and match.group(2) != "Read the full release":
            links.setdefault(match.group(2), match.group(1))
    pixel = _PIXEL.search(html)
    unsubscribe = re.search(r'href="http://127\.0\.0\.1:8000(/unsubscribe/[^"]+)"', html)
    assert unsubscribe, "the digest has no unsubscribe link"
    return Sent(
        str(message["To"].addresses[0].addr_spec),
        links,
        pixel and pixel.group(1),
        unsubscribe.group(1),
        html,
        text,
    )


async def send_to_readers(
    site: TrackedSite,
    smtp_server: SmtpServer,
    titles: tuple[str, ...] = tuple(RELEASES),
    *,
    wait: timedelta = timedelta(minutes=30),
) -> None:
    now = site.clock.now()
    for address in READERS:
        await store.add(site.db, site.settings, address, confirmed=True, now=now)
    for number, title in enumerate(titles):
        await add_release(
            site.db,
            site.settings,
            title=title,
            body=f"{title}. The press office announced it today.",
            url=RELEASES[title],
            published=now - timedelta(minutes=number),
            added_by="test",
            now=now,
        )
    digest = await start_digest(site.db, site.settings, now=now)
    site.digest_id = digest.id
    await deliver_all(site.db, site.settings)
    for received in smtp_server.messages:
        sent = read_mail(received.data)
        site.sent[sent.address] = sent
    # Readers click a while after delivery, not within the scanner window.
    site.clock.advance(wait)


def tracked_settings(tmp_path: Path, database_url: str, port: int, **tracking: Any) -> Settings:
    return site_settings(
        tmp_path,
        database_url,
        smtp={"embedded": False, "host": "127.0.0.1", "port": port},
        tracking={"clicks": True, "opens": True, **tracking},
    )


@pytest.fixture
def tracking_options() -> dict[str, Any]:
    return {}


@pytest.fixture
async def tracked(
    tmp_path: Path,
    database_url: str,
    smtp_server: SmtpServer,
    tracking_options: dict[str, Any],
) -> AsyncIterator[TrackedSite]:
    settings = tracked_settings(tmp_path, database_url, smtp_server.port, **tracking_options)
    clock = Clock(wall=datetime.now(UTC).replace(microsecond=0))
    app = create_app(
        AppContext(settings=settings),
        run_background=False,
        now=clock.now,
        monotonic=clock.monotonic,
    )
    async with app.router.lifespan_context(app):
        await accounts.create_user(app.state.web.db, "alice", ADMIN_PASSWORD, "admin")
        yield TrackedSite(app, settings, clock)


@pytest.fixture
async def admin(tracked: TrackedSite) -> AsyncIterator[httpx.AsyncClient]:
    async with tracked.client() as client:
        assert (await login(client, "alice", ADMIN_PASSWORD)).status_code == 303
        yield client


@pytest.fixture
def smtp(smtp_server: SmtpServer) -> Iterator[SmtpServer]:
    yield smtp_server
