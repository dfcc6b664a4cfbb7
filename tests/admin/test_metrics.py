"""GET /metrics: figures from the database and the process, optional token."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailer import subscribers as store
from mailer.context import AppContext
from mailer.releases import add_release
from mailer.schedule import collect_and_notify
from mailer.send import start_digest
from mailer.web.app import create_app
from tests.admin.conftest import BASE, AdminSite, site_settings
from tests.support.clock import Clock


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_report_the_outbox_and_subscribers(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    now = site.clock.now()
    for address in ("a@example.org", "b@example.org"):
        await store.add(site.db, site.settings, address, confirmed=True, now=now)
    await store.add(site.db, site.settings, "c@example.org", now=now)
    await add_release(
        site.db,
        site.settings,
        title="Budget adopted",
        body="The budget.",
        published=now,
        added_by="test",
        now=now,
    )
    await start_digest(site.db, site.settings, now=now)
    response = await anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    assert values[("mailer_deliveries", (("status", "pending"),))] == 2
    assert values[("mailer_deliveries", (("status", "sent"),))] == 0
    assert values[("mailer_queue_depth", ())] == 2
    assert values[("mailer_subscribers", (("status", "confirmed"),))] == 2
    assert values[("mailer_subscribers", (("status", "pending"),))] == 1
    assert values[("mailer_active_sends", (("status", "sending"),))] == 1
    assert ("mailer_signups_total", ()) in values
    assert values[("mailer_send_rate_per_second", ())] == 0


async def test_collection_runs_are_counted(tmp_path: Path, sqlite_url: str, clock: Clock) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "budget.txt").write_text(
        "Budget for 2026 adopted\n\nThe parliament adopted the budget today.\n", encoding="utf-8"
    )
    name = f"Drop {uuid.uuid4().hex[:6]}"
    settings = site_settings(
        tmp_path, sqlite_url, sources=[{"name": name, "kind": "folder", "path": str(folder)}]
    )
    app = create_app(AppContext(settings=settings), run_background=False, now=clock.now)
    async with app.router.lifespan_context(app):
        await collect_and_notify(app.state.web.db, settings, name)
        await collect_and_notify(app.state.web.db, settings, "no such source")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            text = (await client.get("/metrics")).text
    values = samples(text)
    assert values[("mailer_collection_runs_total", (("outcome", "ok"), ("source", name)))] == 1
    assert (
        values[
            ("mailer_collection_runs_total", (("outcome", "skipped"), ("source", "no such source")))
        ]
        >= 1
    )
    assert values[("mailer_source_releases_total", (("source", name),))] == 1
    assert values[("mailer_source_consecutive_failures", (("source", name), ("status", "ok")))] == 0


@pytest.fixture
async def guarded(
    tmp_path: Path, sqlite_url: str, clock: Clock
) -> AsyncIterator[httpx.AsyncClient]:
    settings = site_settings(tmp_path, sqlite_url, admin={"metrics_token": "m" * 32})
    app = create_app(AppContext(settings=settings), run_background=False, now=clock.now)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client


async def test_metrics_token_is_required_when_set(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/metrics")).status_code == 401
    wrong = await guarded.get("/metrics", headers={"authorization": "Bearer " + "x" * 32})
    assert wrong.status_code == 401
    right = await guarded.get("/metrics", headers={"authorization": "Bearer " + "m" * 32})
    assert right.status_code == 200
    assert re.search(r"^mailer_queue_depth 0\.0$", right.text, re.M)
