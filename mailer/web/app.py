"""The web application: one Starlette app for the public pages, the admin and the API.

``create_app`` serves the route tables of mailer.web.routes and adds what every
response shares: the lifespan that opens the database and starts the scheduler and
delivery worker, security headers (mailer.web.headers), and error pages that never
show a traceback. What handlers use (WebState, render) is in mailer.web.state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mailer.context import AppContext
from mailer.db import DatabaseError
from mailer.engagement import Tracker
from mailer.models import utcnow
from mailer.schedule import start_background
from mailer.templating import template_environment
from mailer.web.headers import SecurityHeadersMiddleware
from mailer.web.proxies import TrustedProxyMiddleware
from mailer.web.ratelimit import RateLimiter
from mailer.web.routes import all_routes
from mailer.web.state import WebState, render

log = logging.getLogger(__name__)


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
        login_limiter=RateLimiter(
            settings.admin.login_rate_limit, settings.admin.login_rate_window, monotonic
        ),
        tracker=Tracker(settings),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with app_context.database() as database:
            state.database = database
            background = None
            if run_background:
                background = await start_background(app_context, database)
            try:
                yield
            finally:
                if background is not None:
                    await background.stop()
                state.database = None

    app = Starlette(
        routes=all_routes(),
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            DatabaseError: database_unavailable,
            Exception: server_error,
        },
    )
    app.state.web = state
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost: the client address is settled before anything reads it.
    app.add_middleware(TrustedProxyMiddleware, trusted=app_context.settings.site.trusted_proxies)
    return app
