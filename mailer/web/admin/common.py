"""What every admin page shares: rendering with the navigation, forms, redirects with
a one-time notice, dates in the site's timezone, paging."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from mailer.accounts import Identity, Role
from mailer.templating import local_time, publication_date
from mailer.web.state import render, web_state

log = logging.getLogger(__name__)

PREFIX = "/admin"
FLASH_COOKIE = "mailer_admin_flash"
MAX_FIELD_CHARS = 100_000
MAX_FORM_BYTES = 1024 * 1024
PAGE_SIZE = 50
# The highest ?page= taken as asked; the domain shows the last page past the end.
MAX_PAGE = 10**6

# (path, label, role needed): the navigation shows what the role may open.
NAVIGATION = (
    ("/admin/", "Dashboard", Role.EDITOR),
    ("/admin/digests", "Digests", Role.EDITOR),
    ("/admin/engagement", "Engagement", Role.EDITOR),
    ("/admin/releases", "Releases", Role.EDITOR),
    ("/admin/subscribers", "Subscribers", Role.ADMIN),
    ("/admin/sources", "Sources", Role.ADMIN),
    ("/admin/audit", "Audit log", Role.ADMIN),
    ("/admin/users", "Users", Role.ADMIN),
    ("/admin/settings", "Settings", Role.ADMIN),
)


def identity(request: Request) -> Identity:
    """The signed-in user; set by :func:`mailer.web.admin.auth.requires`."""
    return request.state.identity  # type: ignore[no-any-return]


def _flash_serializer(request: Request) -> URLSafeSerializer:
    return URLSafeSerializer(web_state(request).settings.get_secret_key(), salt="mailer.flash")


def _take_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        value = _flash_serializer(request).loads(raw)
    except BadSignature:
        return None
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return {"text": value["text"], "kind": str(value.get("kind", "ok"))}
    return None


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``templates/web/admin/<template>`` inside the admin layout."""
    state = web_state(request)
    who: Identity | None = getattr(request.state, "identity", None)
    flash = _take_flash(request)
    navigation = [
        {"path": path, "label": label, "current": _is_current(request.url.path, path)}
        for path, label, role in NAVIGATION
        if who is not None and who.may(role)
    ]
    response = render(
        request,
        f"admin/{template}",
        {
            "who": who,
            "navigation": navigation,
            "flash": flash,
            "when": lambda value: when(value, state.settings.digest.timezone),
            # A release's publication: a date stays a date (see mailer.collect.dates).
            "published": lambda release: publication_date(
                release.published_at,
                state.settings.digest.timezone,
                date_only=release.published_date_only,
            ),
            "timezone": state.settings.digest.timezone,
            "request_path": request.url.path
            + (f"?{request.url.query}" if request.url.query else ""),
            **(context or {}),
        },
        status_code=status_code,
        headers=headers,
    )
    response.headers["x-robots-tag"] = "noindex"
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path=PREFIX)
    return response


def _is_current(path: str, nav_path: str) -> bool:
    if nav_path == "/admin/":
        return path in ("/admin", "/admin/")
    return path == nav_path or path.startswith(nav_path + "/")


def redirect(
    request: Request, path: str, notice: str | None = None, *, kind: str = "ok"
) -> Response:
    """303 to ``path`` (always inside the admin), with a notice shown once there."""
    if not path.startswith(PREFIX):
        raise ValueError("admin redirects stay inside the admin")
    response = RedirectResponse(path, status_code=303)
    if notice:
        response.set_cookie(
            FLASH_COOKIE,
            _flash_serializer(request).dumps({"text": notice[:500], "kind": kind}),
            httponly=True,
            samesite="lax",
            secure=web_state(request).settings.site.base_url.startswith("https://"),
            path=PREFIX,
        )
    return response


def when(value: datetime | None, timezone: str = "UTC") -> str:
    """A moment in the site's timezone, labelled with the zone (``… 15:10 EEST``)."""
    return local_time(value, timezone)


async def read_form(request: Request, *, upload_bytes: int | None = None) -> FormData:
    """The posted form; 400 when unreadable, 413 when too big. Files only where allowed."""
    limit = max(upload_bytes or 0, MAX_FORM_BYTES)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(413, "The upload is too large.")
    try:
        return await request.form(
            max_files=1 if upload_bytes else 0,
            max_fields=200,
            max_part_size=max(upload_bytes or 0, MAX_FIELD_CHARS * 4),
        )
    except HTTPException:
        raise
    except Exception as exc:
        # python-multipart raises several unrelated types for broken bodies.
        log.info("unreadable admin form on %s: %s", request.url.path, exc)
        raise HTTPException(400, "The form data could not be read.") from None


async def form(request: Request) -> FormData:
    """The form already read (and CSRF-checked) by the access check."""
    cached = getattr(request.state, "form", None)
    if cached is None:
        cached = await read_form(request)
    return cached  # type: ignore[no-any-return]


def text(data: FormData | Mapping[str, Any], name: str, *, limit: int = 4096) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HTTPException(400, f"The field {name!r} must be text.")
    if len(value) > limit:
        raise HTTPException(413, f"The field {name!r} is too long (at most {limit} characters).")
    return value.strip()


def texts(data: FormData, name: str) -> list[str]:
    values = data.getlist(name)
    if len(values) > 200:
        raise HTTPException(413, f"Too many values for {name!r}.")
    out = []
    for value in values:
        if not isinstance(value, str) or len(value) > 4096:
            raise HTTPException(400, f"The field {name!r} must be short text.")
        if value.strip():
            out.append(value.strip())
    return out


def upload(data: FormData, name: str) -> UploadFile | None:
    value = data.get(name)
    return value if isinstance(value, UploadFile) else None


def path_id(request: Request, name: str = "id") -> int:
    raw = request.path_params.get(name)
    value = raw if isinstance(raw, int) else None
    if value is None or not 0 < value < 2**31:  # INTEGER ids on PostgreSQL
        raise HTTPException(404, "There is no such item.")
    return value


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        return default
    return min(max(value, low), high)


def query_text(request: Request, name: str, limit: int = 200) -> str:
    return request.query_params.get(name, "").strip()[:limit]


@dataclass(frozen=True)
class Paging:
    page: int
    size: int
    total: int
    base: str
    params: dict[str, str]

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    def link(self, number: int) -> str:
        return f"{self.base}?{urlencode({**self.params, 'page': number})}"


def paging(
    request: Request,
    total: int,
    params: Mapping[str, str],
    size: int = PAGE_SIZE,
    *,
    page: int | None = None,
) -> Paging:
    """The page asked for (?page=, kept within the pages there are), or ``page`` where
    the domain function already chose it."""
    pages = max(1, math.ceil(total / size))
    number = page if page is not None else query_int(request, "page", 1, 1, pages)
    kept = {k: v for k, v in params.items() if v}
    return Paging(number, size, total, request.url.path, kept)
