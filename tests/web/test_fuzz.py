"""Property-based tests: no request to the public handlers, however malformed,
gets a 500 or a traceback."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mailer.context import AppContext
from mailer.web.app import create_app
from tests.conftest import make_settings
from tests.support.smtp import SmtpServer
from tests.web.conftest import BASE_URL, TOPICS

# Any Unicode text a client can actually send (lone surrogates cannot be encoded).
any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
field_names = st.sampled_from(
    ["email", "name", "topics", "frequency", "consent", "website", "csrf_token",
     "List-Unsubscribe", "via", "x"]
)  # fmt: skip
form_fields = st.lists(st.tuples(field_names, any_text), max_size=12)
paths = st.sampled_from(
    ["/", "/subscribe", "/confirm/{t}", "/preferences/{t}", "/preferences/{t}/erase",
     "/unsubscribe/{t}"]
)  # fmt: skip
tokens = st.one_of(st.just("VALID"), st.text("abcdefXYZ0123456789-_.", max_size=120))
content_types = st.sampled_from(
    ["application/x-www-form-urlencoded", "multipart/form-data",
     "multipart/form-data; boundary=----x", "text/plain", "application/json", ""]
)  # fmt: skip


class Harness:
    """One app and one event loop for all examples (a loop per example would reopen
    the database hundreds of times)."""

    def __init__(self, tmp_path: Path, sqlite_url: str, smtp_port: int):
        self.runner = asyncio.Runner()
        settings = make_settings(
            tmp_path,
            sqlite_url,
            topics=TOPICS,
            site={"base_url": BASE_URL},
            smtp={"embedded": False, "host": "127.0.0.1", "port": smtp_port},
            # The handlers, not the limiter, are under test here.
            signup={"rate_limit_per_ip": 1_000_000, "rate_limit_per_address": 1_000_000},
        )
        self.app = create_app(AppContext(settings=settings), run_background=False)
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.runner.run(self.lifespan.__aenter__())
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=BASE_URL
        )
        page = self.runner.run(self.client.get("/"))
        self.csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        from mailer import subscribers as store
        from mailer.tokens import Purpose, make_token

        added = self.runner.run(
            store.add(self.app.state.web.db, settings, "member@example.org", confirmed=True)
        )
        self.valid = {
            purpose: make_token(settings, purpose, added.subscriber.id, added.subscriber.link_key)
            for purpose in (Purpose.MANAGE, Purpose.UNSUBSCRIBE)
        }

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.run(self.lifespan.__aexit__(None, None, None))
        self.runner.close()


@pytest.fixture
def harness(tmp_path: Path, sqlite_url: str, smtp_server: SmtpServer) -> Iterator[Harness]:
    h = Harness(tmp_path, sqlite_url, smtp_server.port)
    yield h
    h.close()


def _path(template: str, token: str, harness: Harness) -> str:
    from mailer.tokens import Purpose

    if token == "VALID":
        purpose = Purpose.UNSUBSCRIBE if template.startswith("/unsubscribe") else Purpose.MANAGE
        token = harness.valid[purpose]
    return template.replace("{t}", token or "x")


fuzz = hypothesis_settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@fuzz
@given(path=paths, token=tokens, fields=form_fields, with_csrf=st.booleans())
def test_form_posts_never_fail(
    harness: Harness, path: str, token: str, fields: list, with_csrf: bool
) -> None:
    data = list(fields) + ([("csrf_token", harness.csrf)] if with_csrf else [])
    # Erasing the shared member would turn later examples into 404s; keep it.
    target = _path(path, token, harness)
    if target.endswith("/erase") and token == "VALID":
        data = [(k, v) for k, v in data if k != "csrf_token"]
    form: dict[str, list[str]] = {}
    for key, value in data:
        form.setdefault(key, []).append(value)
    response = harness.runner.run(harness.client.post(target, data=form))
    assert response.status_code < 500, (target, data, response.text[:500])
    assert "Traceback" not in response.text


@fuzz
@given(path=paths, token=tokens, content_type=content_types, body=st.binary(max_size=2000))
def test_raw_bodies_never_fail(
    harness: Harness, path: str, token: str, content_type: str, body: bytes
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    target = _path(path, token, harness)
    response = harness.runner.run(harness.client.post(target, content=body, headers=headers))
    assert response.status_code < 500, (target, content_type, body[:200], response.text[:500])


@fuzz
@given(raw_path=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_path_never_fails(harness: Harness, raw_path: str) -> None:
    from urllib.parse import quote

    # Percent-encode what cannot travel raw, but keep '%' so that broken escapes
    # such as %ff or a lone % reach the app as sent.
    encoded = "/" + quote(raw_path, safe="/%?&=;:@!$'()*+,")
    url = httpx.URL(BASE_URL).copy_with(raw_path=encoded.encode("ascii"))
    response = harness.runner.run(harness.client.get(url))
    assert response.status_code < 500, (raw_path, response.text[:300])
