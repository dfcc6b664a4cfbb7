"""CSRF protection for the forms: a signed double-submit cookie.

The browser gets a random value in a cookie; every form carries the same value
signed with the site's secret key. A post is accepted only when the signature is
good and names the cookie's value. A page on another site can neither read the
cookie nor forge the signature, and a sibling subdomain that can plant a cookie
still cannot produce a matching signed field. The admin reuses this module.
"""

from __future__ import annotations

import hmac
import secrets

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer.config import Settings

COOKIE = "mailer_csrf"
FIELD = "csrf_token"
_NEW_VALUE = "mailer_csrf_new"


def _serializer(settings: Settings) -> URLSafeSerializer:
    return URLSafeSerializer(settings.get_secret_key(), salt="mailer.csrf")


def _cookie_value(request: Request) -> str | None:
    value = request.cookies.get(COOKIE)
    if value and 20 <= len(value) <= 100 and value.isascii():
        return value
    return None


def token_for(request: Request, settings: Settings) -> str:
    """The hidden-field value for a form on this page (issues a cookie if needed)."""
    value = _cookie_value(request) or request.scope.get(_NEW_VALUE)
    if value is None:
        value = secrets.token_urlsafe(32)
        request.scope[_NEW_VALUE] = value
    return str(_serializer(settings).dumps(value))


def set_cookie(request: Request, response: Response, settings: Settings) -> None:
    """Attach the cookie that token_for created, if it created one."""
    value = request.scope.get(_NEW_VALUE)
    if value is None:
        return
    response.set_cookie(
        COOKIE,
        value,
        httponly=True,
        samesite="lax",
        secure=settings.site.base_url.startswith("https://"),
        path="/",
    )


def verify(request: Request, form: FormData, settings: Settings) -> None:
    """Raise 403 unless the form's token matches this browser's cookie."""
    cookie = _cookie_value(request)
    submitted = form.get(FIELD)
    if cookie is None or not isinstance(submitted, str) or len(submitted) > 300:
        raise HTTPException(403, "This form has expired or cookies are blocked. Reload and retry.")
    try:
        signed_value = _serializer(settings).loads(submitted)
    except BadSignature:
        raise HTTPException(403, "This form has expired. Reload the page and try again.") from None
    if not isinstance(signed_value, str) or not hmac.compare_digest(signed_value, cookie):
        raise HTTPException(403, "This form has expired. Reload the page and try again.")
