"""Guarantee: unsubscribing (or being erased) withdraws the reader's queued mail at once.

Whatever way a reader leaves (the button on the preferences page or the one on the
unsubscribe page, a mail client's RFC 8058 one-click POST, an administrator in the
admin pages or through the API, the operator's ``mailer subscribers remove``, or
the reader erasing their data), their pending and deferred deliveries are cancelled
in the same transaction. No worker runs in these tests: the worker would withdraw
the rows too, but until it runs the send's progress and completion would be wrong,
and a send whose last open row was the reader's would never finish.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update
from starlette.applications import Starlette

from mailer import accounts
from mailer import subscribers as store
from mailer.cli import main
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.models import Delivery, DeliveryStatus, Digest, DigestStatus, Subscriber
from mailer.send import digest_progress, start_digest
from mailer.tokens import Purpose
from mailer.web.app import create_app
from tests.admin.conftest import login, post_form, quick_password_hashing  # noqa: F401 - autouse here too
from tests.conftest import make_settings
from tests.send.conftest import seed
from tests.support.clock import Clock
from tests.web.conftest import _NoCookies

BASE = "http://127.0.0.1:8000"
ADMIN_PASSWORD = "correct horse battery"
SECRET_KEY = "test-secret-key-0123456789abcdef"


@dataclass
class Office:
    """The running app over one database, with a send planned for three readers."""

    app: Starlette
    settings: Settings
    config_path: Path
    readers: list[str]

    @property
    def db(self) -> Database:
        return self.app.state.web.db

    def client(self, *, cookies: bool = True) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("203.0.113.7", 5000)),
            base_url=BASE,
            follow_redirects=False,
        )
        if not cookies:
            client.cookies = _NoCookies()
        return client

    async def subscriber_id(self, address: str) -> int:
        async with self.db.session() as session:
            found = await session.scalar(select(Subscriber.id).where(Subscriber.email == address))
        assert found is not None
        return found


@pytest.fixture
async def office(tmp_path: Path, database_url: str) -> AsyncIterator[Office]:
    raw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "database": {"url": database_url},
        "secret_key": SECRET_KEY,
        "site": {
            "name": "Test Press Office",
            "postal_address": "1 Test Street, Vilnius",
            "base_url": BASE,
        },
        "sender": {"from": "Press Office <press@example.org>", "list_id": "press.example.org"},
        "smtp": {"embedded": True},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    settings = make_settings(tmp_path, database_url, **{k: v for k, v in raw.items()})
    clock = Clock()
    app = create_app(
        AppContext(settings=settings),
        run_background=False,
        now=clock.now,
        monotonic=clock.monotonic,
    )
    async with app.router.lifespan_context(app):
        database = app.state.web.db
        readers = await seed(database, 3)
        yield Office(app, settings, config_path, readers)


# --- the ways out --------------------------------------------------------------------------

Leave = Callable[[Office, int], Awaitable[None]]
_FORM = re.compile(r'<form[^>]*action="([^"]*)"[^>]*>(.*?)</form>', re.S)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


async def _submit_form_on(client: httpx.AsyncClient, page_path: str, action_part: str) -> None:
    """Press the button of the form on ``page_path`` whose action contains ``action_part``."""
    page = await client.get(page_path)
    assert page.status_code == 200, (page_path, page.status_code)
    forms = [(action, body) for action, body in _FORM.findall(page.text) if action_part in action]
    assert forms, f"{page_path} has no form posting to …{action_part}…"
    action, body = forms[0]
    response = await client.post(action, data=dict(_HIDDEN.findall(body)))
    assert response.status_code in (200, 303), (action, response.status_code, response.text)


async def make_token(settings: Settings, purpose: Purpose, subscriber_id: int) -> str:
    """The subscriber's link as mailed: signed with their link key."""
    from mailer.db import Database as _Database
    from mailer.subscribers import get_subscriber, link_for

    database = _Database(settings.database.url)
    try:
        view = await get_subscriber(database, subscriber_id)
    finally:
        await database.dispose()
    assert view is not None
    return link_for(settings, purpose, view)


async def via_preferences_page(office: Office, subscriber_id: int) -> None:
    manage = await make_token(office.settings, Purpose.MANAGE, subscriber_id)
    async with office.client() as client:
        await _submit_form_on(client, f"/preferences/{manage}", "/unsubscribe/")


async def via_unsubscribe_page(office: Office, subscriber_id: int) -> None:
    token = await make_token(office.settings, Purpose.UNSUBSCRIBE, subscriber_id)
    async with office.client() as client:
        await _submit_form_on(client, f"/unsubscribe/{token}", f"/unsubscribe/{token}")


async def via_one_click(office: Office, subscriber_id: int) -> None:
    token = await make_token(office.settings, Purpose.UNSUBSCRIBE, subscriber_id)
    async with office.client(cookies=False) as client:
        response = await client.post(
            f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}
        )
    assert response.status_code == 200, response.text


@asynccontextmanager
async def _admin_client(office: Office) -> AsyncIterator[httpx.AsyncClient]:
    await accounts.create_user(office.db, "alice", ADMIN_PASSWORD, "admin")
    async with office.client() as client:
        assert (await login(client, "alice", ADMIN_PASSWORD)).status_code == 303
        yield client


async def via_admin_page(office: Office, subscriber_id: int) -> None:
    async with _admin_client(office) as client:
        page = f"/admin/subscribers/{subscriber_id}"
        response = await post_form(client, page, f"{page}/unsubscribe")
    assert response.status_code == 303, response.text


async def via_admin_erase(office: Office, subscriber_id: int) -> None:
    async with _admin_client(office) as client:
        page = f"/admin/subscribers/{subscriber_id}"
        response = await post_form(client, page, f"{page}/erase", {"confirm": "erase"})
    assert response.headers["location"] == "/admin/subscribers", response.headers


async def via_api(office: Office, subscriber_id: int) -> None:
    token, _ = await accounts.create_token(office.db, "crm-sync", "admin")
    async with office.client() as client:
        response = await client.post(
            f"/api/subscribers/{subscriber_id}/unsubscribe",
            headers={"authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text


async def via_cli_remove(office: Office, subscriber_id: int) -> None:
    async with office.db.session() as session:
        address = await session.scalar(
            select(Subscriber.email).where(Subscriber.id == subscriber_id)
        )
    # The command runs its own event loop, as it does from a shell.
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["--config", str(office.config_path), "subscribers", "remove", str(address)],
    )
    assert result.exit_code == 0, (result.output, result.exception)


async def via_erase_page(office: Office, subscriber_id: int) -> None:
    manage = await make_token(office.settings, Purpose.MANAGE, subscriber_id)
    async with office.client() as client:
        page = await client.get(f"/preferences/{manage}/erase")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        response = await client.post(
            f"/preferences/{manage}/erase", data={"csrf_token": token.group(1)}
        )
    assert response.status_code == 200, response.text


WAYS_OUT = [
    pytest.param(via_preferences_page, id="preferences-page"),
    pytest.param(via_unsubscribe_page, id="unsubscribe-page"),
    pytest.param(via_one_click, id="one-click"),
    pytest.param(via_admin_page, id="admin-page"),
    pytest.param(via_admin_erase, id="admin-erase"),
    pytest.param(via_api, id="api"),
    pytest.param(via_cli_remove, id="cli-remove"),
    pytest.param(via_erase_page, id="erase-page"),
]


# --- the guarantee -------------------------------------------------------------------------


async def _rows(database: Database, digest_id: int) -> dict[int, DeliveryStatus]:
    async with database.session() as session:
        rows = await session.execute(
            select(Delivery.id, Delivery.status).where(Delivery.digest_id == digest_id)
        )
        return dict(rows.all())


async def _delivery_id(database: Database, digest_id: int, subscriber_id: int) -> int:
    async with database.session() as session:
        found = await session.scalar(
            select(Delivery.id).where(
                Delivery.digest_id == digest_id, Delivery.subscriber_id == subscriber_id
            )
        )
    assert found is not None
    return found


@pytest.mark.parametrize("leave", WAYS_OUT)
async def test_leaving_cancels_the_readers_queued_deliveries_before_any_worker_runs(
    office: Office, leave: Leave
) -> None:
    database = office.db
    leaving = await office.subscriber_id(office.readers[1])
    # A send under way: the reader's message was deferred by their server (451) ...
    first = await start_digest(database, office.settings)
    deferred = await _delivery_id(database, first.id, leaving)
    async with database.transaction() as session:
        await session.execute(
            update(Delivery)
            .where(Delivery.id == deferred)
            .values(status=DeliveryStatus.DEFERRED, attempts=1, last_error="451 4.3.0 busy")
        )
    # ... and a second send with newer releases is queued behind it.
    await seed(database, 0, releases=1)
    second = await start_digest(database, office.settings)
    pending = await _delivery_id(database, second.id, leaving)
    before = {**await _rows(database, first.id), **await _rows(database, second.id)}

    await leave(office, leaving)

    after = {**await _rows(database, first.id), **await _rows(database, second.id)}
    assert after[deferred] is DeliveryStatus.CANCELLED
    assert after[pending] is DeliveryStatus.CANCELLED
    untouched = {i: s for i, s in after.items() if i not in (deferred, pending)}
    assert untouched == {i: before[i] for i in untouched}
    assert set(untouched.values()) == {DeliveryStatus.PENDING}
    async with database.session() as session:
        progress = await digest_progress(session, first.id)
    # The dashboard counts the withdrawn message as done at once.
    assert progress.counts == {"pending": 2, "cancelled": 1}
    assert progress.done == 1


# One way through unsubscribe() and one through erasure: the shells share those two.
@pytest.mark.parametrize(
    "leave",
    [
        pytest.param(via_one_click, id="one-click"),
        pytest.param(via_cli_remove, id="cli-remove"),
    ],
)
async def test_a_send_whose_last_open_message_is_withdrawn_is_finished(
    office: Office, leave: Leave
) -> None:
    database = office.db
    digest = await start_digest(database, office.settings)
    leaving = await office.subscriber_id(office.readers[0])
    async with database.transaction() as session:
        # Everyone else's message has gone out already.
        await session.execute(
            update(Delivery)
            .where(Delivery.digest_id == digest.id, Delivery.subscriber_id != leaving)
            .values(status=DeliveryStatus.SENT)
        )

    await leave(office, leaving)

    async with database.session() as session:
        progress = await digest_progress(session, digest.id)
        finished = await session.get(Digest, digest.id)
    assert progress.counts == {"sent": 2, "cancelled": 1}
    assert progress.status == DigestStatus.DONE.value
    assert finished is not None and finished.finished_at is not None


async def test_unsubscribing_twice_changes_nothing_more(office: Office) -> None:
    database = office.db
    digest = await start_digest(database, office.settings)
    leaving = await office.subscriber_id(office.readers[2])
    assert await store.unsubscribe(database, office.settings, leaving) is True
    assert await store.unsubscribe(database, office.settings, leaving) is False
    statuses = Counter((await _rows(database, digest.id)).values())
    assert statuses == Counter({DeliveryStatus.PENDING: 2, DeliveryStatus.CANCELLED: 1})
