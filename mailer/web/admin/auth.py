"""Signing in and out, the session cookie, and the access check on every admin route.

The session cookie holds a random session id, signed with the site's secret key;
the server keeps the id's hash in ``admin_sessions`` (see mailer.accounts). Every
request looks it up, so signing out, "sign out everywhere", switching an account
off, a role change and a new password end the session even for a copied cookie.
A session ends ``admin.session_lifetime`` after sign-in or ``admin.session_idle``
after the last request, whichever comes first.

:func:`requires` guards every admin endpoint: anonymous visitors are sent to the
sign-in page, a role that may not use the page gets 403, and every POST must carry
the CSRF token (checked here, so a new form cannot forget it).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailer import accounts
from mailer.accounts import Identity, LoginFailure, Role
from mailer.web import csrf
from mailer.web.admin.common import PREFIX, page, read_form, redirect, text
from mailer.web.ratelimit import client_key
from mailer.web.state import WebState, web_state

SESSION_COOKIE = csrf.SESSION_COOKIE
Endpoint = Callable[[Request], Awaitable[Response]]
SAFE_METHODS = ("GET", "HEAD")


def _serializer(state: WebState) -> URLSafeSerializer:
    return URLSafeSerializer(state.settings.get_secret_key(), salt="mailer.admin.session")


def _session_id(request: Request) -> str | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or len(raw) > 500:
        return None
    try:
        value = _serializer(web_state(request)).loads(raw)
    except BadSignature:
        return None
    return value if isinstance(value, str) and 20 <= len(value) <= 100 else None


async def current_identity(request: Request) -> Identity | None:
    """The signed-in user of this request, or None (no, bad, ended or expired session)."""
    session_id = _session_id(request)
    if session_id is None:
        return None
    state = web_state(request)
    return await accounts.session_identity(state.db, state.settings, session_id, now=state.now())


def _login_location(request: Request) -> str:
    wanted = request.url.path
    if request.url.query:
        wanted += "?" + request.url.query
    return f"{PREFIX}/login?next={quote(wanted, safe='')}"


def requires(role: Role, *, upload_bytes: int | None = None) -> Callable[[Endpoint], Endpoint]:
    """Guard an admin endpoint: signed in, role at least ``role``, CSRF on POST."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            who = await current_identity(request)
            if who is None:
                return RedirectResponse(_login_location(request), status_code=303)
            request.state.identity = who
            if not who.may(role):
                raise HTTPException(403, "Your role does not allow this page.")
            if request.method not in SAFE_METHODS:
                data = await read_form(request, upload_bytes=upload_bytes)
                csrf.verify(request, data, web_state(request).settings)
                request.state.form = data
            return await endpoint(request)

        guarded.required_role = role  # type: ignore[attr-defined]
        return guarded

    return decorate


# --- sign in and out --------------------------------------------------------------------


def _safe_next(raw: str) -> str:
    """Only a path inside the admin: never an open redirect to another site."""
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith(PREFIX + "/"):
        return PREFIX + "/"
    if parts.path.startswith(f"{PREFIX}/login") or parts.path.startswith(f"{PREFIX}/logout"):
        return PREFIX + "/"
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _login_page(
    request: Request,
    *,
    error: str | None = None,
    username: str = "",
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    return page(
        request,
        "login.html",
        {
            "error": error,
            "username": username,
            "next": _safe_next(request.query_params.get("next", "")),
        },
        status_code=status_code,
        headers=headers,
    )


async def login_form(request: Request) -> Response:
    if await current_identity(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next", "")), 303)
    return _login_page(request)


async def login_submit(request: Request) -> Response:
    state = web_state(request)
    data = await read_form(request)
    csrf.verify(request, data, state.settings)
    username = text(data, "username", limit=200)
    password = text(data, "password", limit=accounts.MAX_PASSWORD_LENGTH)
    address = client_key(request.client.host if request.client else None)
    retry_after = state.login_limiter.hit(address)
    if retry_after is not None:
        minutes = max(1, round(retry_after / 60))
        return _login_page(
            request,
            error=f"Too many sign-in attempts from your network. Try again in about {minutes} "
            f"minute{'s' if minutes != 1 else ''}.",
            username=username,
            status_code=429,
            headers={"retry-after": str(retry_after)},
        )
    now = state.now()
    result = await accounts.sign_in(
        state.db,
        state.settings,
        username,
        password,
        ip=address,
        user_agent=request.headers.get("user-agent"),
        now=now,
    )
    if result.user is None:
        if result.failure is LoginFailure.LOCKED:
            # Only for the right password (see mailer.accounts): no enumeration.
            until = result.locked_until
            minutes = max(1, round((until - now).total_seconds() / 60)) if until else 15
            message = (
                "This account is locked after too many wrong passwords. Try again in about "
                f"{minutes} minute{'s' if minutes != 1 else ''}, or ask an admin to unlock it."
            )
        else:
            config = state.settings.admin
            minutes = max(1, round(config.lockout_duration.total_seconds() / 60))
            # The same words for an unknown name, a wrong password and a locked
            # account, so the answer tells nobody which names exist.
            message = (
                "The user name or password is wrong. After "
                f"{config.lockout_threshold} wrong passwords an account is locked for "
                f"{minutes} minutes."
            )
        return _login_page(request, error=message, username=username, status_code=401)
    target = _safe_next(text(data, "next", limit=2000))
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        str(_serializer(state).dumps(result.session_id)),
        max_age=int(state.settings.admin.session_lifetime.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=state.settings.site.base_url.startswith("https://"),
        path=PREFIX,
    )
    return response


@requires(Role.EDITOR)
async def logout(request: Request) -> Response:
    state = web_state(request)
    who: Identity = request.state.identity
    await accounts.end_session(state.db, _session_id(request), who=who)
    response = redirect(request, f"{PREFIX}/login", "You are signed out.")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@requires(Role.EDITOR)
async def logout_everywhere(request: Request) -> Response:
    """End every session of the signed-in user: other browsers, a lost laptop."""
    state = web_state(request)
    who: Identity = request.state.identity
    ended = await accounts.end_all_sessions(state.db, who)
    response = redirect(
        request,
        f"{PREFIX}/login",
        f"You are signed out everywhere ({ended} session{'s' if ended != 1 else ''} ended).",
    )
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response
