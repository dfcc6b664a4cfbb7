"""The admin web UI under /admin: server-rendered pages for the press office.

Each area is a module with a ``routes()`` list; every endpoint is wrapped in
:func:`mailer.web.admin.auth.requires`, which checks the session, the role and the
CSRF token (tests/admin/test_access.py walks the routes to prove it).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from mailer.web.admin import (
    auth,
    dashboard,
    digests,
    engagement,
    manage,
    releases,
    sources,
    subscribers,
)


async def _to_dashboard(request: Request) -> Response:
    return RedirectResponse("/admin/", status_code=308)


def routes() -> list[BaseRoute]:
    admin_routes: list[BaseRoute] = [
        Route("/login", auth.login_form, methods=["GET"]),
        Route("/login", auth.login_submit, methods=["POST"]),
        Route("/logout", auth.logout, methods=["POST"]),
        Route("/logout-everywhere", auth.logout_everywhere, methods=["POST"]),
        *dashboard.routes(),
        *digests.routes(),
        *engagement.routes(),
        *releases.routes(),
        *subscribers.routes(),
        *sources.routes(),
        *manage.routes(),
    ]
    return [Route("/admin", _to_dashboard, methods=["GET"]), Mount("/admin", routes=admin_routes)]
