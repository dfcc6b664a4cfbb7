"""Property tests: every API operation in /api/openapi.json, driven with inputs
generated from the document itself (hypothesis-jsonschema) mixed with arbitrary
junk, never answers 5xx, and always answers JSON errors with a message."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from starlette.testclient import TestClient

from mailer import accounts
from mailer import subscribers as store
from mailer.context import AppContext
from mailer.web.app import create_app
from mailer.web.routes import API_OPERATIONS
from tests.admin.conftest import BASE, site_settings
from tests.conftest import _truncate_all

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The app on both backends: PostgreSQL refuses some text SQLite stores (NUL)."""
    folder = tmp_path_factory.mktemp("api-properties")
    if request.param == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), folder / "mailer.db")
        url = f"sqlite:///{folder / 'mailer.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        _truncate_all(url)
    settings = site_settings(folder, url)
    app = create_app(AppContext(settings=settings), run_background=False)
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as client:
        database = app.state.web.db
        admin_token, _ = client.portal.call(accounts.create_token, database, "prop-admin", "admin")
        editor_token, _ = client.portal.call(
            accounts.create_token, database, "prop-editor", "editor"
        )
        client.portal.call(
            lambda: store.add(database, settings, "reader@example.org", confirmed=True)
        )
        document = client.get("/api/openapi.json").json()
        yield {
            "client": client,
            "document": document,
            "tokens": [admin_token, admin_token, editor_token],
        }


def _operations() -> list[tuple[str, str]]:
    return [(op.method, "/api" + op.path.replace(":int", "")) for op in API_OPERATIONS]


def _as_query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _with_components(schema: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "components": document["components"]}


@pytest.mark.parametrize(("method", "path"), _operations())
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_input_makes_the_api_fail(
    served: dict[str, Any], method: str, path: str, data: st.DataObject
) -> None:
    client: TestClient = served["client"]
    document = served["document"]
    operation = document["paths"][path][method.lower()]
    url = path.replace(
        "{id}", str(data.draw(st.integers(min_value=0, max_value=2**70) | st.integers(1, 5)))
    )
    params: dict[str, str] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "query" or not data.draw(st.booleans()):
            continue
        schema = _with_components(parameter["schema"], document)
        value = data.draw(from_schema(schema) | st.text(max_size=40))
        params[parameter["name"]] = _as_query_value(value)
    kwargs: dict[str, Any] = {"params": params}
    if "requestBody" in operation:
        schema = _with_components(
            operation["requestBody"]["content"]["application/json"]["schema"], document
        )
        kwargs["json"] = data.draw(from_schema(schema) | JSON_VALUES)
    token = data.draw(st.sampled_from(served["tokens"]))
    response = client.request(method, url, headers={"authorization": f"Bearer {token}"}, **kwargs)
    assert response.status_code < 500, (method, url, kwargs, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("error"), str) and body["error"]
    else:
        documented = operation["responses"]
        assert str(response.status_code) in documented or response.status_code == 200


def test_every_operation_is_exercised() -> None:
    assert len(_operations()) == len(API_OPERATIONS) >= 10
