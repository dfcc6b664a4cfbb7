"""Admin-only pages: the audit log, users and API tokens, and the settings in force."""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer import accounts, audit
from mailer.accounts import Role
from mailer.config import format_duration
from mailer.web.admin.auth import requires
from mailer.web.admin.common import (
    MAX_PAGE,
    PAGE_SIZE,
    form,
    identity,
    page,
    paging,
    path_id,
    query_int,
    query_text,
    redirect,
    text,
)
from mailer.web.state import web_state

# Keys whose values never appear on the settings page.
SECRET_KEYS = {"password", "secret_key", "webhook_secret", "metrics_token"}


@requires(Role.ADMIN)
async def audit_page(request: Request) -> Response:
    state = web_state(request)
    search, action = query_text(request, "q"), query_text(request, "action")
    log = await audit.log_page(
        state.db,
        search=search,
        action=action,
        page=query_int(request, "page", 1, 1, MAX_PAGE),
        size=PAGE_SIZE,
    )
    return page(
        request,
        "audit.html",
        {
            "entries": log.entries,
            "paging": paging(request, log.total, {"q": search, "action": action}, page=log.page),
            "search": search,
            "action": action,
            "actions": log.actions,
        },
    )


async def _users_page(
    request: Request, *, error: str | None = None, new_token: str | None = None, status: int = 200
) -> Response:
    state = web_state(request)
    users, tokens = await accounts.overview(state.db)
    return page(
        request,
        "users.html",
        {
            "users": users,
            "tokens": tokens,
            "roles": accounts.ROLES,
            "error": error,
            "new_token": new_token,
            "now": state.now(),
        },
        status_code=status,
    )


@requires(Role.ADMIN)
async def users_index(request: Request) -> Response:
    return await _users_page(request)


@requires(Role.ADMIN)
async def user_new(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    try:
        user = await accounts.create_user(
            state.db,
            text(data, "username", limit=200),
            text(data, "password", limit=accounts.MAX_PASSWORD_LENGTH + 1),
            text(data, "role"),
            actor=identity(request).actor,
        )
    except accounts.AccountError as exc:
        return await _users_page(request, error=str(exc), status=422)
    return redirect(request, "/admin/users", f"Created {user.role.value} {user.username}.")


@requires(Role.ADMIN)
async def user_update(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    change = text(data, "change")
    try:
        user = await accounts.change_user(
            state.db,
            path_id(request),
            change,
            who=identity(request),
            role=text(data, "role"),
            password=text(data, "password", limit=accounts.MAX_PASSWORD_LENGTH + 1),
        )
    except accounts.NoSuchAccount:
        raise HTTPException(404, "There is no such user.") from None
    except accounts.AccountError as exc:
        return redirect(request, "/admin/users", str(exc), kind="error")
    return redirect(request, "/admin/users", f"{user.username}: {change} done.")


@requires(Role.ADMIN)
async def token_new(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    try:
        token, _ = await accounts.create_token(
            state.db,
            text(data, "name", limit=200),
            text(data, "role") or Role.ADMIN.value,
            actor=identity(request).actor,
        )
    except accounts.AccountError as exc:
        return await _users_page(request, error=str(exc), status=422)
    return await _users_page(request, new_token=token)


@requires(Role.ADMIN)
async def token_revoke(request: Request) -> Response:
    state = web_state(request)
    try:
        view = await accounts.revoke_token(
            state.db, path_id(request), actor=identity(request).actor
        )
    except accounts.AccountError:
        raise HTTPException(404, "There is no such token.") from None
    return redirect(request, "/admin/users", f"Token {view.name} revoked.")


def _masked(value: Any, key: str = "") -> Any:
    if key in SECRET_KEYS and value:
        return "(set)"
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _rows(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for key, inner in value.items():
            rows += _rows(inner, f"{prefix}.{key}" if prefix else str(key))
        return rows
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rows = []
        for number, inner in enumerate(value):
            rows += _rows(inner, f"{prefix}[{number}]")
        return rows
    return [(prefix, _as_written(value))]


def _as_written(value: Any) -> str:
    """A setting as config.yaml spells it: 30s rather than PT30S, 0 rather than 0.0."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, list):
        return ", ".join(_as_written(v) for v in value) if value else "—"
    return str(value)


@requires(Role.ADMIN)
async def settings_page(request: Request) -> Response:
    state = web_state(request)
    dumped = state.settings.model_dump(by_alias=True, exclude={"config_path"})
    return page(
        request,
        "settings.html",
        {
            "rows": _rows(_masked(dumped)),
            "config_path": str(state.settings.config_path or "(built-in defaults)"),
        },
    )
