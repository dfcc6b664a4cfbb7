"""CSRF protection for the forms: a signed double-submit cookie, bound to the visitor.

The browser gets a random value in a cookie; every form carries that value signed
with the site's secret key, together with a digest of the admin session cookie
when there is one. A post is accepted only when the signature is good, names the
cookie's value, and (in the admin) names the session the form was served to.

Why both: a page on another site can neither read the cookie nor forge the
signature. A sibling subdomain can plant cookies, though, and with a plain cookie
it could plant a value together with a signed field it fetched for that value.
Against that, over https the cookie is named ``__Host-…``, which browsers accept
only from this very host (no Domain, Secure, Path=/); and an admin form is bound
to the admin's own session id, which a planted cookie cannot know. The admin
reuses this module.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from itsdangerous import BadSignature, URLSafeSerializer
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer.config import Settings

COOKIE = "mailer_csrf"
# Over https: a cookie name browsers accept only from this exact host.
HOST_COOKIE = "__Host-mailer_csrf"
FIELD = "csrf_token"
# The admin session cookie (mailer.web.admin.auth); sent only to /admin pages.
SESSION_COOKIE = "mailer_admin_session"
_NEW_VALUE = "mailer_csrf_new"


def _serializer(settings: Settings) -> URLSafeSerializer:
    return URLSafeSerializer(settings.get_secret_key(), salt="mailer.csrf")


def _secure(settings: Settings) -> bool:
    return settings.site.base_url.startswith("https://")


def cookie_name(settings: Settings) -> str:
    return HOST_COOKIE if _secure(settings) else COOKIE


def _cookie_value(request: Request, settings: Settings) -> str | None:
    value = request.cookies.get(cookie_name(settings))
    if value and 20 <= len(value) <= 100 and value.isascii():
        return value
    return None


def _session_binding(request: Request) -> str:
    """A digest of the admin session cookie of this request ("" without one)."""
    session = request.cookies.get(SESSION_COOKIE)
    if not session:
        return ""
    return hashlib.sha256(session.encode("utf-8", "replace")).hexdigest()[:32]


def token_for(request: Request, settings: Settings) -> str:
    """The hidden-field value for a form on this page (issues a cookie if needed)."""
    value = _cookie_value(request, settings) or request.scope.get(_NEW_VALUE)
    if value is None:
        value = secrets.token_urlsafe(32)
        request.scope[_NEW_VALUE] = value
    return str(_serializer(settings).dumps([value, _session_binding(request)]))


def set_cookie(request: Request, response: Response, settings: Settings) -> None:
    """Attach the cookie that token_for created, if it created one."""
    value = request.scope.get(_NEW_VALUE)
    if value is None:
        return
    response.set_cookie(
        cookie_name(settings),
        value,
        httponly=True,
        samesite="lax",
        secure=_secure(settings),
        path="/",
    )


def verify(request: Request, form: FormData, settings: Settings) -> None:
    """Raise 403 unless the form's token matches this browser's cookie."""
    cookie = _cookie_value(request, settings)
    submitted = form.get(FIELD)
    if cookie is None or not isinstance(submitted, str) or len(submitted) > 300:
        raise HTTPException(403, "This form has expired or cookies are blocked. Reload and retry.")
    try:
        signed_value = _serializer(settings).loads(submitted)
    except BadSignature:
        raise HTTPException(403, "This form has expired. Reload the page and try again.") from None
    if (
        not isinstance(signed_value, list)
        or len(signed_value) != 2
        or not all(isinstance(part, str) for part in signed_value)
        or not hmac.compare_digest(signed_value[0], cookie)
        or not hmac.compare_digest(signed_value[1], _session_binding(request))
    ):
        raise HTTPException(403, "This form has expired. Reload the page and try again.")
