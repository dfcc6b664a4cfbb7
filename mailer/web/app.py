"""The web application: one Starlette app for the public pages, the admin and the API.

``create_app`` collects routes from every module listed in ``ROUTE_MODULES`` that
exists: each exposes ``routes() -> list[BaseRoute]`` (the admin returns a Mount
under /admin, the API one under /api). Shared pieces live here: the lifespan that
opens the database and starts the scheduler and delivery worker, security headers
on every response, and error pages that never show a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.models import utcnow
from mailer.templating import template_environment
from mailer.web import csrf
from mailer.web.proxies import TrustedProxyMiddleware
from mailer.web.ratelimit import RateLimiter

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ROUTE_MODULES = (
    "mailer.web.public",
    "mailer.web.archive",
    "mailer.web.admin",
    "mailer.web.api",
    "mailer.web.webhooks",
    "mailer.web.metrics",
    "mailer.web.tracking",
)

SECURITY_HEADERS = {
    # Everything is served from this origin; no inline script or style is used.
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # Links carry signed tokens in their path; never hand them to another site.
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


@dataclass
class WebState:
    """What request handlers need, reachable as ``request.app.state.web``."""

    context: AppContext
    settings: Settings
    templates: Environment
    # Wall-clock time for the domain (consent records, intervals).
    now: Callable[[], datetime]
    ip_limiter: RateLimiter
    address_limiter: RateLimiter
    database: Database | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        if self.database is None:
            raise RuntimeError("the database is opened by the app's lifespan")
        return self.database


def web_state(request: Request) -> WebState:
    return request.app.state.web  # type: ignore[no-any-return]


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``templates/web/<template>`` with the site, CSRF token and signup texts."""
    state = web_state(request)
    settings = state.settings
    # The application's own prefix (behind a proxy), not a Mount's: admin pages
    # rendered under /admin must still find /static and /privacy.
    root = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    page = state.templates.get_template(f"web/{template}").render(
        {
            "site": settings.site,
            "signup": settings.signup,
            "consent_text": settings.signup.consent_text.replace("{site}", settings.site.name),
            "privacy_url": settings.signup.privacy_url or f"{root}/privacy",
            "static_url": f"{root}/static",
            "root": root,
            "csrf_field": csrf.FIELD,
            "csrf_token": csrf.token_for(request, settings),
            "status_code": status_code,
            **(context or {}),
        }
    )
    response = HTMLResponse(page, status_code=status_code, headers=dict(headers or {}))
    response.headers["cache-control"] = "no-store"
    csrf.set_cookie(request, response, settings)
    return response


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    titles = {
        400: "Bad request",
        403: "Not allowed",
        404: "Page not found",
        405: "Not allowed",
        410: "Link expired",
        413: "Too much data",
        422: "Please check the form",
        429: "Too many attempts",
        503: "Temporarily unavailable",
    }
    title = titles.get(exc.status_code, "Something went wrong")
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = "There is no page at this address."
    if exc.status_code == 405 and detail == "Method Not Allowed":
        detail = "This page cannot be used that way."
    if _wants_json(request):
        return JSONResponse({"error": detail}, status_code=exc.status_code, headers=headers)
    return _error_page(request, exc.status_code, title, detail, headers)


def _error_page(
    request: Request, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    try:
        return render(
            request,
            "message.html",
            {"title": title, "message": detail, "home_link": True},
            status_code=status,
            headers=headers,
        )
    except Exception:
        # A broken site template must not turn an error page into a traceback.
        log.exception("rendering the error page failed")
        return PlainTextResponse(f"{title}: {detail}", status_code=status, headers=headers)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    message = "The service is busy. Please try again in a minute."
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=503, headers={"retry-after": "60"})
    return _error_page(request, 503, "Temporarily unavailable", message, {"retry-after": "60"})


async def server_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback; the visitor sees a plain apology.
    message = "Something went wrong on our side. Please try again later."
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=500)
    return _error_page(request, 500, "Something went wrong", message)


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every response that did not set them itself."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _collect_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    for name in ROUTE_MODULES:
        # A module (or package) not written yet is skipped; one that fails to import
        # is a bug and must stop the start-up, so only "does it exist" is checked.
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        provide = getattr(module, "routes", None)
        if provide is None:
            log.debug("%s has no routes() yet; not mounted", name)
            continue
        routes.extend(provide())
    routes.append(Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"))
    return routes


def create_app(
    app_context: AppContext,
    *,
    run_background: bool = True,
    now: Callable[[], datetime] = utcnow,
    monotonic: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The ASGI app. ``run_background`` starts the scheduler and the delivery worker
    in the lifespan (``mailer serve``); tests pass False and inject the clocks."""
    settings = app_context.settings
    signup = settings.signup
    state = WebState(
        context=app_context,
        settings=settings,
        templates=template_environment(settings),
        now=now,
        ip_limiter=RateLimiter(signup.rate_limit_per_ip, signup.rate_limit_window, monotonic),
        address_limiter=RateLimiter(
            signup.rate_limit_per_address, signup.rate_limit_window, monotonic
        ),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with app_context.database() as database:
            state.database = database
            background = None
            if run_background:
                from mailer.schedule import start_background

                background = await start_background(app_context, database)
            try:
                yield
            finally:
                if background is not None:
                    await background.stop()
                state.database = None

    app = Starlette(
        routes=_collect_routes(),
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            SQLAlchemyError: database_unavailable,
            Exception: server_error,
        },
    )
    app.state.web = state
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: the client address is settled before anything reads it.
    app.add_middleware(TrustedProxyMiddleware, trusted=app_context.settings.site.trusted_proxies)
    return app
