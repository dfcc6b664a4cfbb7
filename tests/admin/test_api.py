"""The JSON API: what a program sees for each operation, and its error answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from mailer import accounts, audit
from mailer import subscribers as store
from mailer.releases import add_release
from tests.admin.conftest import AdminSite
from tests.admin.test_access import walk


@pytest.fixture
async def api(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = await accounts.create_token(site.db, "cms", "admin")
    async with site.client() as client:
        client.headers["authorization"] = f"Bearer {token}"
        yield client


@pytest.fixture
async def editor_api(site: AdminSite) -> AsyncIterator[httpx.AsyncClient]:
    token, _ = await accounts.create_token(site.db, "newsroom", "editor")
    async with site.client() as client:
        client.headers["authorization"] = f"Bearer {token}"
        yield client


async def _release(site: AdminSite, title: str, body: str) -> int:
    release_id, _ = await add_release(
        site.db,
        site.settings,
        title=title,
        body=body,
        published=site.clock.now(),
        added_by="test",
        now=site.clock.now(),
    )
    return release_id


async def test_openapi_describes_every_api_route(
    site: AdminSite, anonymous: httpx.AsyncClient
) -> None:
    response = await anonymous.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    described = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    served = {
        (path.replace(":int", ""), method)
        for path, method, _ in walk(list(site.app.routes))
        if path.startswith("/api") and path != "/api/openapi.json"
    }
    assert described == served
    create = document["paths"]["/api/subscribers"]["post"]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert body["required"] == ["email"]
    assert {"401", "403", "409", "422"} <= set(create["responses"])


async def test_subscriber_lifecycle(site: AdminSite, api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/api/subscribers",
        json={
            "email": "Ruta.Simonyte@Example.org",
            "name": "Rūta Šimonytė",
            "topics": ["economy"],
            "frequency": "weekly",
            "confirmed": True,
        },
    )
    assert created.status_code == 201, created.text
    subscriber = created.json()["subscriber"]
    assert subscriber["name"] == "Rūta Šimonytė"
    assert subscriber["status"] == "confirmed"
    assert subscriber["topics"] == ["economy"]
    assert subscriber["frequency"] == "weekly"

    again = await api.post("/api/subscribers", json={"email": "ruta.simonyte@example.org"})
    assert again.status_code == 200
    assert again.json()["created"] is False

    pending = await api.post("/api/subscribers", json={"email": "jonas@example.org"})
    assert pending.json()["subscriber"]["status"] == "pending"

    listed = await api.get("/api/subscribers", params={"status": "confirmed"})
    assert listed.status_code == 200
    assert [s["email"] for s in listed.json()["items"]] == ["Ruta.Simonyte@example.org"]
    searched = await api.get("/api/subscribers", params={"q": "JONAS"})
    assert searched.json()["total"] == 1

    subscriber_id = subscriber["id"]
    gone = await api.post(f"/api/subscribers/{subscriber_id}/unsubscribe")
    assert gone.status_code == 200
    assert gone.json()["changed"] is True
    assert gone.json()["subscriber"]["status"] == "unsubscribed"
    # The answer is the subscriber as it now stands, suppression included.
    assert gone.json()["subscriber"]["suppression"] == "unsubscribed"
    assert gone.json()["subscriber"]["unsubscribed_at"]
    twice = await api.post(f"/api/subscribers/{subscriber_id}/unsubscribe")
    assert twice.json()["changed"] is False
    assert twice.json()["subscriber"] == gone.json()["subscriber"]

    # The address is suppressed now: adding it again needs resubscribe.
    refused = await api.post("/api/subscribers", json={"email": "RUTA.simonyte@example.org"})
    assert refused.status_code == 409
    assert "suppression" in refused.json()["error"]

    entries, _ = await audit.query(site.db, actor="token:cms")
    assert {"subscriber.add", "subscriber.unsubscribe"} <= {e.action for e in entries}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"email": "not an address"}, 422, "valid email"),
        ({"email": "a@example.org", "topics": ["astrology"]}, 422, "astrology"),
        ({"email": "a@example.org", "frequency": "hourly"}, 422, "frequency"),
        ({"email": "a@example.org", "admin": True}, 422, "admin"),
        ({}, 422, "email"),
        ([], 422, ""),
    ],
)
async def test_invalid_subscriber_bodies(
    api: httpx.AsyncClient, body: object, status: int, fragment: str
) -> None:
    response = await api.post("/api/subscribers", json=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]


async def test_unreadable_and_oversized_bodies(api: httpx.AsyncClient) -> None:
    broken = await api.post(
        "/api/subscribers", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"] == "The body is not valid JSON."
    huge = await api.post(
        "/api/subscribers", content=json.dumps({"email": "x" * (2 * 1024 * 1024)}).encode()
    )
    assert huge.status_code == 413
    missing = await api.post("/api/subscribers/999/unsubscribe")
    assert missing.status_code == 404
    assert missing.json()["error"]


async def test_releases_are_listed_and_searched(
    site: AdminSite, editor_api: httpx.AsyncClient
) -> None:
    await _release(
        site, "Budget for 2026 adopted", "The parliament adopted the budget and tax plan."
    )
    site.clock.advance(timedelta(hours=1))
    await _release(site, "New hospital wing opens", "The hospital in Kaunas opens a new wing.")
    everything = await editor_api.get("/api/releases")
    assert everything.status_code == 200
    titles = [r["title"] for r in everything.json()["items"]]
    assert titles == ["New hospital wing opens", "Budget for 2026 adopted"]
    economy = await editor_api.get("/api/releases", params={"topic": "economy"})
    assert [r["title"] for r in economy.json()["items"]] == ["Budget for 2026 adopted"]
    assert economy.json()["items"][0]["topics"] == ["economy"]
    words = await editor_api.get("/api/releases", params={"q": "WING"})
    assert words.json()["total"] == 1
    bad = await editor_api.get("/api/releases", params={"since": "yesterday"})
    assert bad.status_code == 422


async def test_digest_create_preview_send_status(
    site: AdminSite, api: httpx.AsyncClient, editor_api: httpx.AsyncClient
) -> None:
    await store.add(
        site.db, site.settings, "reader@example.org", confirmed=True, now=site.clock.now()
    )
    site.clock.advance(timedelta(minutes=5))
    await _release(site, "Budget for 2026 adopted", "The parliament adopted the budget.")

    sample = await editor_api.get("/api/digests/preview")
    assert sample.status_code == 200
    assert sample.json()["would_send"] is True
    assert "Budget for 2026 adopted" in sample.json()["html"]
    assert "Budget for 2026 adopted" in sample.json()["text"]
    personal = await editor_api.get(
        "/api/digests/preview", params={"subscriber": "reader@example.org"}
    )
    assert personal.status_code == 403
    personal = await api.get("/api/digests/preview", params={"subscriber": "reader@example.org"})
    assert personal.json()["recipient"] == "reader@example.org"
    unknown = await api.get("/api/digests/preview", params={"subscriber": "nobody@example.org"})
    assert unknown.status_code == 422

    created = await editor_api.post("/api/digests", json={"frequency": "all"})
    assert created.status_code == 201
    digest = created.json()
    assert digest["status"] == "queued" and digest["scheduled_for"] is None
    sent = await editor_api.post(f"/api/digests/{digest['id']}/send")
    assert sent.status_code == 200
    assert sent.json()["status"] == "sending"
    assert sent.json()["recipients"] == 1
    assert sent.json()["pending"] == 1
    again = await editor_api.post(f"/api/digests/{digest['id']}/send")
    assert again.status_code == 409
    paused = await editor_api.post(f"/api/digests/{digest['id']}/pause")
    assert paused.json()["status"] == "paused"
    cancelled = await editor_api.post(f"/api/digests/{digest['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled"] == 1
    status = await editor_api.get(f"/api/digests/{digest['id']}")
    assert status.json()["status"] == "cancelled"
    assert (await editor_api.get("/api/digests/424242")).status_code == 404


async def test_scheduled_digest_must_be_in_the_future(
    site: AdminSite, editor_api: httpx.AsyncClient
) -> None:
    past = (site.clock.now() - timedelta(hours=1)).isoformat()
    response = await editor_api.post("/api/digests", json={"scheduled_for": past})
    assert response.status_code == 422
    naive = await editor_api.post("/api/digests", json={"scheduled_for": "2030-01-01T07:00:00"})
    assert naive.status_code == 422
    future = (site.clock.now() + timedelta(days=1)).isoformat()
    created = await editor_api.post(
        "/api/digests", json={"scheduled_for": future, "frequency": "weekly"}
    )
    assert created.status_code == 201
    assert created.json()["frequency"] == "weekly"
    assert created.json()["scheduled_for"].startswith(future[:16])
