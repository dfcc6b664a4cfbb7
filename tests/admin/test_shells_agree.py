"""The admin, the JSON API and the CLI asked the same question give the same answer:
they are three shells over one domain function each (mailer.releases, mailer.send)."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update

from mailer import accounts, audit
from mailer import subscribers as store
from mailer.cli import main
from mailer.models import Delivery, DeliveryStatus
from mailer.releases import add_release
from mailer.send import recent_sends, start_digest
from tests.admin.conftest import BASE, AdminSite, post_form

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def api(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = await accounts.create_token(site.db, "agree", "editor")
    async with site.client() as client:
        client.headers["authorization"] = f"Bearer {token}"
        yield client


@pytest.fixture
def cli_config(site: AdminSite, tmp_path: Path) -> Path:
    """A configuration file for the same database the admin and the API use."""
    settings = site.settings
    path = tmp_path / "cli-config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(settings.data_path),
                "database": {"url": settings.database.url},
                "secret_key": "test-secret-key-0123456789abcdef",
                "site": {
                    "base_url": BASE,
                    "name": settings.site.name,
                    "postal_address": settings.site.postal_address,
                },
                "sender": {"from": "Press Office <press@example.org>"},
                "topics": [
                    {"name": "Economy", "keywords": ["budget", "tax"]},
                    {"name": "Health", "keywords": ["hospital", "vaccine"]},
                ],
            }
        )
    )
    return path


async def _cli(config: Path, *args: str) -> list[dict[str, Any]]:
    # The CLI runs its own event loop; a thread keeps it off the test's.
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def _admin_release_ids(client: httpx.AsyncClient, **params: str) -> list[int]:
    page = await client.get("/admin/releases", params=params)
    assert page.status_code == 200
    return [int(i) for i in re.findall(r'href="/admin/releases/(\d+)"', page.text)]


async def _releases(site: AdminSite) -> dict[str, int]:
    ids = {}
    for title, body, topics in [
        ("Budget for 2026 adopted", "The parliament adopted the budget.", ["economy"]),
        ("New hospital opens", "A hospital opened in Kaunas.", ["health"]),
        ("Tax forms simplified", "Tax forms are shorter now.", ["economy"]),
        ("Vaccine campaign", "Vaccines for everyone this winter.", ["health"]),
    ]:
        site.clock.advance(timedelta(minutes=1))
        ids[title], _ = await add_release(
            site.db,
            site.settings,
            title=title,
            body=body,
            topics=topics,
            published=site.clock.now(),
            added_by="test",
            now=site.clock.now(),
        )
    return ids


async def test_release_listing_with_a_topic_filter_is_the_same_everywhere(
    site: AdminSite, editor_client: httpx.AsyncClient, api: httpx.AsyncClient, cli_config: Path
) -> None:
    ids = await _releases(site)
    economy = [ids["Tax forms simplified"], ids["Budget for 2026 adopted"]]  # newest first

    admin = await _admin_release_ids(editor_client, topic="economy")
    answer = (await api.get("/api/releases", params={"topic": "economy"})).json()
    cli = await _cli(cli_config, "releases", "--json", "--topic", "economy")

    assert admin == economy
    assert [r["id"] for r in answer["items"]] == economy and answer["total"] == 2
    assert [r["id"] for r in cli] == economy
    assert {tuple(r["topics"]) for r in answer["items"]} == {("economy",)}
    assert {tuple(r["topics"]) for r in cli} == {("economy",)}


async def test_a_search_finds_the_same_releases_in_the_admin_and_the_api(
    site: AdminSite, editor_client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    await _releases(site)
    site.clock.advance(timedelta(minutes=1))
    named, _ = await add_release(
        site.db,
        site.settings,
        title="Minister Šimonytė opens a bridge",
        body="The bridge over the Neris opened today.",
        published=site.clock.now(),
        added_by="test",
        now=site.clock.now(),
    )
    # SQLite folds case for ASCII only: a plain lower() misses "Š".
    for search in ("šimonytė", "ŠIMONYTĖ", "Šimonytė"):
        admin = await _admin_release_ids(editor_client, q=search)
        answer = (await api.get("/api/releases", params={"q": search})).json()
        assert admin == [named], search
        assert [r["id"] for r in answer["items"]] == [named] and answer["total"] == 1, search


async def test_a_sends_progress_is_the_same_everywhere(
    site: AdminSite, editor_client: httpx.AsyncClient, api: httpx.AsyncClient, cli_config: Path
) -> None:
    for number in range(5):
        await store.add(
            site.db,
            site.settings,
            f"reader{number}@example.org",
            confirmed=True,
            now=site.clock.now(),
        )
    await _releases(site)
    digest = await start_digest(site.db, site.settings, now=site.clock.now())
    assert digest.recipient_count == 5
    # Two delivered (one of them bounced later), one failed, one deferred, one waiting.
    async with site.db.transaction() as session:
        rows = list(
            await session.scalars(
                select(Delivery.id).where(Delivery.digest_id == digest.id).order_by(Delivery.id)
            )
        )
        outcomes = [
            {"status": DeliveryStatus.SENT, "sent_at": site.clock.now()},
            {"status": DeliveryStatus.SENT, "sent_at": site.clock.now(), "bounced": True},
            {"status": DeliveryStatus.FAILED, "last_error": "550 no such user"},
            {"status": DeliveryStatus.DEFERRED, "last_error": "451 try later"},
        ]
        for delivery_id, values in zip(rows, outcomes, strict=False):
            await session.execute(
                update(Delivery).where(Delivery.id == delivery_id).values(**values)
            )

    admin = (await editor_client.get(f"/admin/digests/{digest.id}/progress")).json()
    answer = (await api.get(f"/api/digests/{digest.id}")).json()
    [cli] = await _cli(cli_config, "digest", "status", "--json", str(digest.id))

    expected = {
        "id": digest.id,
        "status": "sending",
        "recipients": 5,
        "sent": 2,
        "failed": 1,
        "deferred": 1,
        "pending": 1,
        "cancelled": 0,
        "bounced": 1,
    }
    for shell, shown in (("admin", admin), ("api", answer), ("cli", cli)):
        assert {key: shown[key] for key in expected} == expected, shell
    assert admin["started_at"] == answer["started_at"] == cli["started_at"]

    # The admin's send page shows the same numbers as its live progress.
    page = (await editor_client.get(f"/admin/digests/{digest.id}")).text
    assert "550 no such user" in page and "451 try later" in page


async def _cli_lines(config: Path, *args: str) -> list[str]:
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def _admin_reasons(page: str) -> list[str]:
    box = page.split('id="selection-reasons"', 1)[1].split("</div>", 1)[0]
    return [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", box)]


async def test_a_preview_is_the_same_everywhere(
    site: AdminSite,
    editor_client: httpx.AsyncClient,
    api: httpx.AsyncClient,
    cli_config: Path,
    tmp_path: Path,
) -> None:
    # Nothing to send yet: each shell says so, with the same reasons.
    admin = (await editor_client.get("/admin/digests/preview")).text
    answer = (await api.get("/api/digests/preview")).json()
    cli = await _cli_lines(cli_config, "digest", "preview", "--out", str(tmp_path))
    assert "No digest would be sent now" in admin
    assert answer["would_send"] is False and answer["reasons"]
    assert cli[0] == "No digest would be sent to the sample reader now:"
    assert _admin_reasons(admin) == answer["reasons"] == [line.strip() for line in cli[1:]]

    await store.add(site.db, site.settings, "reader@example.org", confirmed=True)
    await _releases(site)
    admin = (await editor_client.get("/admin/digests/preview")).text
    answer = (await api.get("/api/digests/preview")).json()
    cli = await _cli_lines(cli_config, "digest", "preview", "--out", str(tmp_path))
    assert answer["would_send"] is True and answer["release_count"] == 4
    subject = html.unescape(admin.split('id="preview-subject">', 1)[1].split("<", 1)[0])
    assert subject == answer["subject"]
    assert f"Subject:  {answer['subject']}" in cli and "Releases: 4" in cli
    plain = html.unescape(admin.split('id="preview-text"', 1)[1].split(">", 1)[1])
    # Each preview is planned afresh: its "view in browser" link has a new id.
    plain, text = (re.sub(r"/digests/[\w-]+", "/digests/ID", t) for t in (plain, answer["text"]))
    assert plain.split("</pre>", 1)[0] == text
    assert "Budget for 2026 adopted" in answer["text"]


async def test_a_refused_send_time_is_the_same_refusal_in_the_admin_and_the_api(
    site: AdminSite, editor_client: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    past = site.clock.now() - timedelta(hours=1)
    too_far = site.clock.now() + timedelta(days=400)
    for at, reason in ((past, "must be in the future"), (too_far, "at most a year ahead")):
        admin = await post_form(
            editor_client,
            "/admin/digests",
            "/admin/digests/schedule",
            {"frequency": "all", "at": at.strftime("%Y-%m-%dT%H:%M")},
        )
        shown = html.unescape((await editor_client.get(admin.headers["location"])).text)
        answer = await api.post("/api/digests", json={"scheduled_for": at.isoformat()})
        assert f"Send time: {reason}" in shown
        assert answer.status_code == 422
        assert answer.json()["error"].startswith(f"scheduled_for: {reason}")
    # Nothing was scheduled and nothing audited by either shell.
    assert await recent_sends(site.db) == []
    assert (await audit.log_page(site.db, action="digest.schedule")).total == 0
