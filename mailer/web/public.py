"""The pages strangers use: subscribe, confirm, preferences, unsubscribe, privacy.

Rules that shape this module:

* A GET never changes anything (mail scanners prefetch every link in a message);
  each change is a POST, protected by the CSRF token except the RFC 8058 one-click
  unsubscribe, which mail providers send without cookies.
* The signup answer is the same page and status whether the address is new,
  pending or confirmed; mail goes out after the response, so timing tells nothing.
* Every refusal is a page with a status code (400/403/404/410/422/429), never a
  traceback.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer import subscribers as store
from mailer.models import Frequency, SubscriberStatus
from mailer.tokens import Purpose
from mailer.web import csrf
from mailer.web.ratelimit import client_key
from mailer.web.state import WebState, render, web_state

log = logging.getLogger(__name__)

# Form posts are small; anything bigger is refused before it is parsed.
MAX_FORM_BYTES = 64 * 1024
MAX_FIELD_CHARS = 4096
MAX_TOKEN_CHARS = 512
HONEYPOT_FIELD = "website"

FREQUENCY_LABELS = {
    Frequency.IMMEDIATELY: "As soon as a release is published",
    Frequency.DAILY: "Once a day",
    Frequency.WEEKLY: "Once a week",
}


@dataclass
class FormValues:
    email: str = ""
    name: str = ""
    topics: tuple[str, ...] = ()
    frequency: str = Frequency.DAILY.value
    consent: bool = False

    @classmethod
    def from_form(cls, form: FormData) -> FormValues:
        return cls(
            email=_text(form, "email"),
            name=_text(form, "name"),
            topics=tuple(_texts(form, "topics")),
            frequency=_text(form, "frequency") or Frequency.DAILY.value,
            consent=bool(_text(form, "consent")),
        )


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HTTPException(400, f"The field {name!r} must be text, not a file.")
    if len(value) > MAX_FIELD_CHARS:
        raise HTTPException(413, f"The field {name!r} is too long.")
    return value


def _texts(form: FormData, name: str) -> list[str]:
    values = form.getlist(name)
    if len(values) > 100:
        raise HTTPException(413, f"Too many values for {name!r}.")
    for value in values:
        if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
            raise HTTPException(400, f"The field {name!r} must be short text.")
    return [v for v in values if isinstance(v, str)]


async def read_form(request: Request) -> FormData:
    """The posted form (urlencoded or multipart, no files); 400 when it is unreadable."""
    try:
        return await request.form(max_files=0, max_fields=50, max_part_size=MAX_FIELD_CHARS * 4)
    except HTTPException:
        raise
    except Exception as exc:
        # python-multipart raises several unrelated types for broken bodies.
        log.info("unreadable form on %s: %s", request.url.path, exc)
        raise HTTPException(400, "The form data could not be read.") from None


def origin_of(request: Request, state: WebState) -> store.Origin:
    return store.Origin(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        form_url=f"{state.settings.site.base_url}{request.url.path}",
    )


def _check_ip_limit(request: Request, state: WebState) -> int | None:
    return state.ip_limiter.hit(client_key(request.client.host if request.client else None))


def _token(token: str) -> str:
    if len(token) > MAX_TOKEN_CHARS:
        raise HTTPException(400, "This link is not valid. Please check that it was copied whole.")
    return token


def _link_error(exc: store.SubscriberError) -> HTTPException:
    if isinstance(exc, store.ExpiredLink | store.StaleLink):
        return HTTPException(410, str(exc))
    if isinstance(exc, store.NotFound):
        return HTTPException(404, str(exc))
    return HTTPException(400, str(exc))


def _topic_choices(state: WebState) -> list[dict[str, str]]:
    return [{"slug": t.key, "name": t.name} for t in state.settings.topics]


def _frequency_choices() -> list[dict[str, str]]:
    return [{"value": f.value, "label": label} for f, label in FREQUENCY_LABELS.items()]


# --- subscribe ------------------------------------------------------------------------


def _subscribe_page(
    request: Request,
    values: FormValues,
    errors: Mapping[str, str] | None = None,
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    notice: str | None = None,
) -> Response:
    state = web_state(request)
    return render(
        request,
        "subscribe.html",
        {
            "values": values,
            "errors": dict(errors or {}),
            "notice": notice,
            "topics": _topic_choices(state),
            "frequencies": _frequency_choices(),
            "honeypot_field": HONEYPOT_FIELD,
            "action": request.url.path,
        },
        status_code=status_code,
        headers=headers,
    )


async def subscribe_form(request: Request) -> Response:
    return _subscribe_page(request, FormValues())


def _too_many(request: Request, values: FormValues, retry_after: int) -> Response:
    minutes = max(1, round(retry_after / 60))
    return _subscribe_page(
        request,
        values,
        status_code=429,
        headers={"retry-after": str(retry_after)},
        notice=f"Too many attempts. Please try again in about {minutes} minute"
        f"{'s' if minutes != 1 else ''}.",
    )


async def subscribe_submit(request: Request) -> Response:
    state = web_state(request)
    form = await read_form(request)
    csrf.verify(request, form, state.settings)
    values = FormValues.from_form(form)
    if _text(form, HONEYPOT_FIELD):
        # A bot filled the field people cannot see: answer as if it worked.
        log.info(
            "honeypot field filled from %s; signup ignored",
            client_key(request.client and request.client.host),
        )
        return render(request, "subscribe_sent.html")
    retry_after = _check_ip_limit(request, state)
    if retry_after is not None:
        return _too_many(request, values, retry_after)

    try:
        result = await store.signup(
            state.db,
            state.settings,
            values.email,
            name=values.name,
            topics=values.topics,
            frequency=values.frequency,
            origin=origin_of(request, state),
            now=state.now(),
            consent=values.consent,
            address_limit=state.address_limiter.hit,
        )
    except store.InvalidField as exc:
        return _subscribe_page(request, values, exc.errors, status_code=422)
    except store.TooManyAttempts as exc:
        return _too_many(request, values, exc.retry_after)
    response = render(request, "subscribe_sent.html", {"email": result.email})
    if result.confirmation_due:
        response.background = BackgroundTask(_send_confirmation, state, result.subscriber_id)
    return response


async def _send_confirmation(state: WebState, subscriber_id: int) -> None:
    """Runs after the response went out; a mail the server does not take stays queued
    for the retry job (the door logs why)."""
    try:
        await store.send_due_mail(state.db, state.settings, subscriber_id, now=state.now())
    except Exception:
        log.exception("confirmation for subscriber %d failed", subscriber_id)


async def privacy(request: Request) -> Response:
    state = web_state(request)
    paragraphs = [
        p.strip() for p in state.settings.signup.privacy_notice.split("\n\n") if p.strip()
    ]
    return render(
        request, "privacy.html", {"paragraphs": paragraphs, "tracking": state.settings.tracking}
    )


# --- confirm --------------------------------------------------------------------------


async def confirm_page(request: Request) -> Response:
    state = web_state(request)
    token = _token(request.path_params["token"])
    try:
        result = await store.pending_confirmation(state.db, state.settings, token)
    except store.SubscriberError as exc:
        raise _link_error(exc) from None
    if result.already_confirmed:
        return _confirmed_page(request, state, result.subscriber, already=True)
    return render(request, "confirm.html", {"subscriber": result.subscriber, "token": token})


async def confirm_submit(request: Request) -> Response:
    state = web_state(request)
    token = _token(request.path_params["token"])
    form = await read_form(request)
    csrf.verify(request, form, state.settings)
    retry_after = _check_ip_limit(request, state)
    if retry_after is not None:
        raise HTTPException(429, "Too many attempts.", headers={"retry-after": str(retry_after)})
    try:
        result = await store.confirm(
            state.db, state.settings, token, origin=origin_of(request, state), now=state.now()
        )
    except store.SubscriberError as exc:
        raise _link_error(exc) from None
    return _confirmed_page(request, state, result.subscriber, already=result.already_confirmed)


def _confirmed_page(
    request: Request, state: WebState, subscriber: store.SubscriberView, *, already: bool
) -> Response:
    manage = store.link_for(state.settings, Purpose.MANAGE, subscriber)
    return render(
        request,
        "confirmed.html",
        {
            "subscriber": subscriber,
            "already": already,
            "preferences_path": f"/preferences/{manage}",
        },
    )


# --- preferences, export, erase -------------------------------------------------------


async def _subscriber_for(request: Request, purpose: Purpose) -> tuple[str, store.SubscriberView]:
    state = web_state(request)
    token = _token(request.path_params["token"])
    try:
        return token, await store.subscriber_for_link(state.db, state.settings, purpose, token)
    except store.SubscriberError as exc:
        raise _link_error(exc) from None


def _preferences_page(
    request: Request,
    token: str,
    subscriber: store.SubscriberView,
    *,
    values: FormValues | None = None,
    errors: Mapping[str, str] | None = None,
    saved: bool = False,
    status_code: int = 200,
) -> Response:
    state = web_state(request)
    values = values or FormValues(
        email=subscriber.email,
        name=subscriber.name or "",
        topics=subscriber.topics,
        frequency=subscriber.frequency.value,
    )
    unsubscribe = store.link_for(state.settings, Purpose.UNSUBSCRIBE, subscriber)
    return render(
        request,
        "preferences.html",
        {
            "subscriber": subscriber,
            "values": values,
            "errors": dict(errors or {}),
            "saved": saved,
            "token": token,
            "topics": _topic_choices(state),
            "frequencies": _frequency_choices(),
            "unsubscribe_path": f"/unsubscribe/{unsubscribe}",
            "unsubscribed": subscriber.status is SubscriberStatus.UNSUBSCRIBED,
        },
        status_code=status_code,
    )


async def preferences_page(request: Request) -> Response:
    token, subscriber = await _subscriber_for(request, Purpose.MANAGE)
    return _preferences_page(request, token, subscriber)


async def preferences_submit(request: Request) -> Response:
    state = web_state(request)
    token, subscriber = await _subscriber_for(request, Purpose.MANAGE)
    form = await read_form(request)
    csrf.verify(request, form, state.settings)
    retry_after = _check_ip_limit(request, state)
    if retry_after is not None:
        raise HTTPException(429, "Too many attempts.", headers={"retry-after": str(retry_after)})
    values = FormValues.from_form(form)
    values.email = subscriber.email
    try:
        subscriber = await store.update_preferences(
            state.db,
            state.settings,
            subscriber.id,
            name=values.name,
            topics=values.topics,
            frequency=values.frequency,
            origin=origin_of(request, state),
            now=state.now(),
        )
    except store.InvalidField as exc:
        return _preferences_page(
            request, token, subscriber, values=values, errors=exc.errors, status_code=422
        )
    except store.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return _preferences_page(request, token, subscriber, saved=True)


async def export_download(request: Request) -> Response:
    state = web_state(request)
    _, subscriber = await _subscriber_for(request, Purpose.MANAGE)
    try:
        data = await store.export_data(state.db, state.settings, subscriber.id)
    except store.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    body = json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8")
    return Response(
        body,
        media_type="application/json; charset=utf-8",
        headers={
            "content-disposition": 'attachment; filename="my-subscription-data.json"',
            "cache-control": "no-store",
        },
    )


async def erase_page(request: Request) -> Response:
    token, subscriber = await _subscriber_for(request, Purpose.MANAGE)
    return render(request, "erase.html", {"subscriber": subscriber, "token": token})


async def erase_submit(request: Request) -> Response:
    state = web_state(request)
    _, subscriber = await _subscriber_for(request, Purpose.MANAGE)
    form = await read_form(request)
    csrf.verify(request, form, state.settings)
    try:
        await store.erase(
            state.db,
            state.settings,
            subscriber.id,
            origin=origin_of(request, state),
            now=state.now(),
        )
    except store.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return render(request, "erased.html")


# --- unsubscribe ----------------------------------------------------------------------


async def unsubscribe_page(request: Request) -> Response:
    token, subscriber = await _unsubscribe_target(request)
    if subscriber is None:
        return render(request, "unsubscribed.html", {"erased": True})
    return render(
        request,
        "unsubscribe.html",
        {"subscriber": subscriber, "token": token, "send": _from_send(request)},
    )


def _from_send(request: Request) -> int | None:
    """The send whose link this is (``?send=`` in digests' unsubscribe links)."""
    raw = request.query_params.get("send", "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 2**31 else None


async def _unsubscribe_target(request: Request) -> tuple[str, store.SubscriberView | None]:
    try:
        return await _subscriber_for(request, Purpose.UNSUBSCRIBE)
    except HTTPException as exc:
        if exc.status_code in (404, 410):
            # Erased or removed: nothing left to unsubscribe (the address is
            # suppressed), and never someone else's subscription.
            return request.path_params["token"], None
        raise


async def unsubscribe_submit(request: Request) -> Response:
    """RFC 8058 one-click: no cookie, no CSRF token, answered 200 without a redirect.

    The signed token in the URL is the authority; the body must say
    ``List-Unsubscribe=One-Click`` (our own button sends exactly that).
    """
    state = web_state(request)
    token, subscriber = await _unsubscribe_target(request)
    values = await _posted_pairs(request)
    if not any(v.strip() == "One-Click" for v in values.get("List-Unsubscribe", [])):
        raise HTTPException(400, "This request does not ask to unsubscribe (List-Unsubscribe).")
    # Our own button says where it came from; a mail client's one-click post does not.
    method = "page" if values.get("via") == ["page"] else "one-click"
    if subscriber is None:
        return render(request, "unsubscribed.html", {"erased": True})
    try:
        await store.unsubscribe(
            state.db,
            state.settings,
            subscriber.id,
            origin=origin_of(request, state),
            method=method,
            send=_from_send(request),
            now=state.now(),
        )
    except store.NotFound:
        return render(request, "unsubscribed.html", {"erased": True})
    manage = store.link_for(state.settings, Purpose.MANAGE, subscriber)
    return render(
        request,
        "unsubscribed.html",
        {"subscriber": subscriber, "preferences_path": f"/preferences/{manage}", "token": token},
    )


async def _posted_pairs(request: Request) -> dict[str, list[str]]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await read_form(request)
        pairs: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                pairs.setdefault(key, []).append(value)
        return pairs
    # Some senders' clients post the pair with no or a wrong content type.
    body = await request.body()
    return parse_qs(body.decode("utf-8", "replace"))
