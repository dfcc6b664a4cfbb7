"""What every web handler reaches for: the app's state and page rendering.

Handlers import from here, and mailer.web.app imports the handlers (through
mailer.web.routes), so the dependency runs one way: app -> routes -> handlers -> state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse

from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.engagement import Tracker
from mailer.web import csrf
from mailer.web.ratelimit import RateLimiter


@dataclass
class WebState:
    """What request handlers need, reachable as ``request.app.state.web``."""

    context: AppContext
    settings: Settings
    templates: Environment
    # Wall-clock time for the domain (consent records, intervals).
    now: Callable[[], datetime]
    # Signups per client address and per email address (signup.rate_limit_*).
    ip_limiter: RateLimiter
    address_limiter: RateLimiter
    # Admin sign-in attempts per client address (admin.login_rate_*).
    login_limiter: RateLimiter
    # The signer of tracked links and the scanner memory that /r/ and /o/ share.
    tracker: Tracker
    database: Database | None = None

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
