"""The JSON API under /api, for programs (a CMS, a script, CI).

Authentication is ``Authorization: Bearer <token>`` with tokens from ``mailer admin
create-token`` (or the admin's Users page); a token has a role like a user. Every
operation is declared once in ``OPERATIONS`` with its pydantic models: the same
declaration builds the routes, validates the input and writes the OpenAPI document
at /api/openapi.json, so the description cannot drift from the behaviour.
Errors are ``{"error": message}`` (plus ``details`` for validation) with the
fitting status: 400 unreadable, 401 no or bad token, 403 role, 404, 409 conflict,
413 too big, 422 invalid.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
)
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mailer import accounts, releases
from mailer import subscribers as store
from mailer.accounts import Identity, Role
from mailer.collect.extract import published_text
from mailer.collect.ingest import API_SOURCE
from mailer.datewindow import DateOutOfRange, check_date
from mailer.digest import PreviewError, explain_digest
from mailer.message import MessageError
from mailer.models import Audience, DigestKind, Frequency, Release, SubscriberStatus
from mailer.preview import preview_now
from mailer.releases import ReleaseInputError
from mailer.send import (
    NoSuchSend,
    Requester,
    SendError,
    SendTimeRefused,
    schedule_digest,
    send_progress,
    set_digest_state,
    start_queued_digest,
)
from mailer.web.jsonbody import BadJSON, parse_json
from mailer.web.openapi import Handler, Operation, build_document
from mailer.web.state import web_state

MAX_BODY_BYTES = 1024 * 1024
# Ids are 32-bit INTEGER columns on PostgreSQL; anything larger cannot exist.
MAX_ID = 2**31


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refusing it here keeps that a 422, not a 5xx.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- models -------------------------------------------------------------------------------


class SubscriberQuery(Strict):
    status: SubscriberStatus | None = None
    q: Text | None = Field(
        None,
        max_length=200,
        description="The start of the address, or the start of words of the name (case "
        "and accents do not matter: simonyte finds Šimonytė).",
    )
    limit: int = Field(100, ge=1, le=500)
    after: int | None = Field(
        None, ge=1, lt=MAX_ID, description="next_after of the previous page: the next page."
    )
    offset: int = Field(
        0, ge=0, le=10**9, description="Rows to skip (slow deep in a large list: use after)."
    )


class SubscriberOut(BaseModel):
    id: int
    email: str
    name: str | None
    status: store.ShownStatus = Field(
        description="The subscription's status; bounced or suppressed when the address "
        "is on the suppression list (no mail goes to it)."
    )
    subscription: SubscriberStatus | None = Field(None, description="The subscription's status.")
    suppression: str | None = Field(
        None, description="Why the address is suppressed: hard-bounce, complaint, ..."
    )
    suppression_details: str | None = None
    frequency: str
    topics: list[str] = Field(description="Topic slugs; empty means every topic.")
    created_at: str
    confirmed_at: str | None
    unsubscribed_at: str | None


class SubscriberList(BaseModel):
    items: list[SubscriberOut]
    total: int
    total_precision: str = Field(
        description="exact; about (the database's estimate, on large lists); or more "
        "than (a search stops counting at 1,000)."
    )
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null on the last page."
    )


class SubscriberCreate(Strict):
    email: Text = Field(max_length=320)
    name: Text | None = Field(None, max_length=200)
    topics: list[Annotated[Text, Field(max_length=100)]] = Field(
        default_factory=list, max_length=50, description="Slugs or names; empty: every topic."
    )
    frequency: Frequency | None = None
    confirmed: bool = Field(
        False, description="True records consent obtained elsewhere; false mails a link."
    )
    resubscribe: bool = Field(
        False, description="Allow an address on the suppression list (they asked to return)."
    )


class SubscriberCreated(BaseModel):
    subscriber: SubscriberOut
    created: bool
    outcome: str
    confirmation_sent: bool
    confirmation: str | None = Field(
        None,
        description='What became of the confirmation mail: "confirmation sent", or '
        '"confirmation queued, will retry: <reason>"; null when none was due.',
    )


class SubscriberExportQuery(Strict):
    status: store.ShownStatus | None = None


class SubscriberExport(RootModel[list[SubscriberOut]]):
    """Every subscriber (of one status), oldest first: what `mailer subscribers export
    --format json` writes."""


class SubscriberChanged(BaseModel):
    subscriber: SubscriberOut
    changed: bool


class ReleaseQuery(Strict):
    q: Text | None = Field(None, max_length=200, description="Words in the title or summary.")
    topic: Text | None = Field(None, max_length=64, description="A topic slug.")
    since: AwareDatetime | None = Field(None, description="Published at or after.")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


class ReleaseOut(BaseModel):
    id: int
    title: str
    summary: str
    published_at: str
    published_estimated: bool
    published_date_only: bool = Field(
        description="The source gave a date without a time: published_at is that day "
        "(YYYY-MM-DD), not a moment."
    )
    publisher: str | None
    url: str | None
    topics: list[str]
    sources: list[str]
    excluded: bool


class ReleaseList(BaseModel):
    items: list[ReleaseOut]
    total: int


class ReleaseCreate(Strict):
    title: Text = Field(min_length=1, max_length=1000)
    text: Text = Field(max_length=200_000, description="Paragraphs separated by a blank line.")
    url: Text | None = Field(None, max_length=2000, description="Where it is published.")
    published: Text | None = Field(
        None,
        max_length=40,
        description="YYYY-MM-DD (a date, shown as such) or an ISO 8601 time; a time "
        "without an offset is read in digest.timezone. Empty: now.",
    )
    topics: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=50, description="Topic slugs; without them: by keywords."
    )
    send: bool = Field(
        True,
        description="Send it to readers whatever its publication date (false: store it "
        "excluded from digests).",
    )


class ReleaseAdded(BaseModel):
    outcome: str = Field(description="new, or merged (the release was already stored).")
    release: ReleaseOut


class DryRunQuery(Strict):
    frequency: Audience = Field(Audience.ALL, description="Everyone, or one group.")


class DryRunOut(BaseModel):
    recipients: int
    readers: int = Field(description="Confirmed readers this send is for.")
    reasons: list[str] = Field(description="Why it reaches no more of them, with numbers.")


class DigestCreate(Strict):
    frequency: Audience = Field(Audience.ALL, description="Who gets it: everyone or one group.")
    scheduled_for: AwareDatetime | None = Field(
        None,
        description="Start automatically at this time; without it the send waits for "
        "POST /api/digests/{id}/send.",
    )


class DigestStatusOut(BaseModel):
    id: int
    kind: DigestKind
    frequency: Audience
    status: str
    scheduled_for: str | None
    recipients: int
    sent: int
    failed: int
    deferred: int
    pending: int
    cancelled: int
    bounced: int
    pause_reason: str | None
    started_at: str | None
    finished_at: str | None


class PreviewQuery(Strict):
    subscriber: Text | None = Field(
        None, max_length=320, description="An address (admin tokens only); empty: a sample."
    )


class PreviewOut(BaseModel):
    would_send: bool
    reasons: list[str] = Field(
        default_factory=list,
        description="Why nothing (or less than everything) would be sent, with numbers.",
    )
    recipient: str | None = None
    subject: str | None = None
    release_count: int = 0
    html: str | None = None
    text: str | None = None


# --- plumbing -------------------------------------------------------------------------------


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def _validation_error(exc: ValidationError) -> JSONResponse:
    details = [
        {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()
    ]
    first = details[0]
    message = f"{first['where']}: {first['problem']}" if first["where"] else first["problem"]
    return JSONResponse({"error": message, "details": details}, status_code=422)


async def _identity(request: Request) -> Identity | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return await accounts.token_identity(web_state(request).db, token.strip())


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    try:
        data = parse_json(raw or b"{}")
    except BadJSON as exc:
        raise HTTPException(400, str(exc)) from None
    return model.model_validate(data)


def _query(request: Request, model: type[BaseModel]) -> BaseModel:
    params = request.query_params
    data: dict[str, Any] = {}
    for key in params:
        values = params.getlist(key)
        data[key] = values if len(values) > 1 else values[0]
    return model.model_validate(data)


def _wrap(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(operation.handler)
    async def endpoint(request: Request) -> Response:
        who = await _identity(request)
        if who is None:
            return error(
                401,
                "Send a valid API token: Authorization: Bearer <token>.",
                **{"www-authenticate": 'Bearer realm="mailer"'},
            )
        if not who.may(operation.role):
            return error(403, f"This token's role ({who.role.value}) may not do this.")
        kwargs: dict[str, Any] = {}
        for name in operation.path_params:
            value = request.path_params[name]
            if not isinstance(value, int) or not 0 < value < MAX_ID:
                return error(404, "Not found.")
            kwargs[name] = value
        try:
            if operation.query is not None:
                kwargs["query"] = _query(request, operation.query)
            if operation.body is not None:
                kwargs["body"] = await _body(request, operation.body)
        except ValidationError as exc:
            return _validation_error(exc)
        return await operation.handler(request, who, **kwargs)

    endpoint.required_role = operation.role  # type: ignore[attr-defined]
    return endpoint


def ok(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- subscribers ----------------------------------------------------------------------------


def _subscriber_out(view: store.SubscriberView) -> SubscriberOut:
    return SubscriberOut.model_validate(view.as_dict())


async def list_subscribers(request: Request, who: Identity, query: SubscriberQuery) -> Response:
    state = web_state(request)
    found = await store.search_subscribers(
        state.db,
        state.settings,
        search=query.q or "",
        status=query.status.value if query.status else None,
        after=query.after,
        offset=query.offset,
        limit=query.limit,
        newest_first=False,
    )
    return ok(
        SubscriberList(
            items=[_subscriber_out(v) for v in found.items],
            total=found.total.value,
            total_precision=found.total.precision,
            next_after=found.next_after,
        )
    )


def _origin(request: Request, who: Identity) -> store.Origin:
    return store.Origin(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        actor=who.actor,
    )


async def show_subscriber(request: Request, who: Identity, id: int) -> Response:
    state = web_state(request)
    view = await store.get_subscriber(state.db, id, state.settings)
    if view is None:
        return error(404, "There is no such subscriber (erased subscribers are gone).")
    return ok(_subscriber_out(view))


async def create_subscriber(request: Request, who: Identity, body: SubscriberCreate) -> Response:
    state = web_state(request)
    try:
        result = await store.add(
            state.db,
            state.settings,
            body.email,
            name=body.name,
            topics=body.topics,
            frequency=body.frequency.value if body.frequency else None,
            confirmed=body.confirmed,
            resubscribe=body.resubscribe,
            origin=_origin(request, who),
            now=state.now(),
        )
    except store.SuppressedAddress as exc:
        return error(409, str(exc))
    except store.SubscriberError as exc:
        return error(422, str(exc))
    return ok(
        SubscriberCreated(
            subscriber=_subscriber_out(result.subscriber),
            created=result.created,
            outcome=result.outcome,
            confirmation_sent=bool(result.mail and result.mail.sent),
            confirmation=result.mail.describe() if result.mail else None,
        ),
        201 if result.created else 200,
    )


async def unsubscribe_subscriber(request: Request, who: Identity, id: int) -> Response:
    state = web_state(request)
    try:
        done = await store.unsubscribe_and_get(
            state.db,
            state.settings,
            id,
            origin=_origin(request, who),
            method="api",
            now=state.now(),
        )
    except store.NotFound:
        return error(404, "There is no such subscriber.")
    return ok(SubscriberChanged(subscriber=_subscriber_out(done.subscriber), changed=done.changed))


async def export_subscribers(
    request: Request, who: Identity, query: SubscriberExportQuery
) -> Response:
    state = web_state(request)
    out = io.StringIO()
    await store.export_subscribers(
        state.db,
        state.settings,
        out,
        status=query.status.value if query.status else None,
        fmt="json",
        origin=_origin(request, who),
        now=state.now(),
    )
    return Response(out.getvalue(), media_type="application/json")


# --- releases -------------------------------------------------------------------------------


async def list_releases(request: Request, who: Identity, query: ReleaseQuery) -> Response:
    state = web_state(request)
    if query.since is not None:
        try:
            check_date(query.since, state.now(), field="since")
        except DateOutOfRange as exc:
            return error(422, str(exc))
    wanted = releases.ReleaseFilter(
        search=query.q or "", topic=query.topic or "", since=query.since
    )
    found = await releases.list_releases(state.db, wanted, limit=query.limit, offset=query.offset)
    return ok(ReleaseList(items=[_release_out(r) for r in found.items], total=found.total))


def _release_out(release: Release) -> ReleaseOut:
    return ReleaseOut(
        id=release.id,
        title=release.title,
        summary=release.summary,
        published_at=published_text(release.published_at, date_only=release.published_date_only)
        or "",
        published_estimated=release.published_estimated,
        published_date_only=release.published_date_only,
        publisher=release.publisher,
        url=release.canonical_url,
        topics=[t.slug for t in release.topics],
        sources=list(dict.fromkeys(link.source_name for link in release.links)),
        excluded=release.excluded,
    )


async def create_release(request: Request, who: Identity, body: ReleaseCreate) -> Response:
    state = web_state(request)
    try:
        added = await releases.add_and_get_release(
            state.db,
            state.settings,
            title=body.title,
            body=body.text,
            url=body.url or None,
            published=body.published or "",
            topics=body.topics,
            added_by=who.actor,
            send=body.send,
            source_name=API_SOURCE,
            origin="api",
            now=state.now(),
            audit_details={"via": "api"},
        )
    except ReleaseInputError as exc:
        return error(422, str(exc))
    out = _release_out(added.release)
    return ok(
        ReleaseAdded(outcome=added.outcome, release=out), 201 if added.outcome == "new" else 200
    )


async def dry_run(request: Request, who: Identity, query: DryRunQuery) -> Response:
    state = web_state(request)
    report = await explain_digest(state.db, state.settings, query.frequency, now=state.now())
    return ok(
        DryRunOut(recipients=report.recipients, readers=report.readers, reasons=report.reasons())
    )


# --- digests --------------------------------------------------------------------------------


async def _progress_of(request: Request, digest_id: int) -> Response:
    try:
        progress = await send_progress(web_state(request).db, digest_id)
    except NoSuchSend:
        return error(404, "There is no such digest.")
    return ok(DigestStatusOut.model_validate(progress.as_json()))


async def create_digest(request: Request, who: Identity, body: DigestCreate) -> Response:
    state = web_state(request)
    try:
        digest = await schedule_digest(
            state.db,
            scheduled_for=body.scheduled_for,
            frequency=body.frequency,
            created_by=who.actor,
            now=state.now(),
            requester=Requester(who.actor, via="api"),
        )
    except SendTimeRefused as exc:
        return error(422, exc.labelled("scheduled_for"))
    response = await _progress_of(request, digest.id)
    response.status_code = 201
    return response


async def digest_status(request: Request, who: Identity, id: int) -> Response:
    return await _progress_of(request, id)


async def send_digest(request: Request, who: Identity, id: int) -> Response:
    state = web_state(request)
    try:
        await start_queued_digest(
            state.db, state.settings, id, now=state.now(), requester=Requester(who.actor, "api")
        )
    except SendError as exc:
        return _send_error(exc)
    return await _progress_of(request, id)


def _send_error(exc: SendError) -> Response:
    if isinstance(exc, NoSuchSend):
        return error(404, "There is no such digest.")
    return error(409, str(exc))


def _state_change(action: str) -> Handler:
    async def handler(request: Request, who: Identity, id: int) -> Response:
        state = web_state(request)
        try:
            await set_digest_state(state.db, id, action, requester=Requester(who.actor, "api"))
        except SendError as exc:
            return _send_error(exc)
        return await _progress_of(request, id)

    handler.__name__ = f"{action}_digest"
    return handler


async def preview(request: Request, who: Identity, query: PreviewQuery) -> Response:
    state = web_state(request)
    if query.subscriber and not who.is_admin:
        return error(403, "Only an admin token can preview a particular subscriber's digest.")
    try:
        result = await preview_now(
            state.db, state.settings, query.subscriber or None, now=state.now()
        )
    except (PreviewError, MessageError) as exc:
        return error(422, str(exc))
    digest = result.digest
    if digest is None:
        return ok(PreviewOut(would_send=False, reasons=result.reasons()))
    return ok(
        PreviewOut(
            would_send=True,
            reasons=result.reasons(),
            recipient=digest.recipient,
            subject=digest.subject,
            release_count=digest.release_count,
            html=digest.html,
            text=result.text,
        )
    )


OPERATIONS: list[Operation] = [
    Operation(
        "GET",
        "/subscribers",
        Role.ADMIN,
        "List and search subscribers",
        list_subscribers,
        SubscriberList,
        query=SubscriberQuery,
        tag="subscribers",
    ),
    Operation(
        "POST",
        "/subscribers",
        Role.ADMIN,
        "Add a subscriber (pending with a confirmation mail, or confirmed)",
        create_subscriber,
        SubscriberCreated,
        status=201,
        body=SubscriberCreate,
        errors=(409,),
        tag="subscribers",
    ),
    Operation(
        "GET",
        "/subscribers/export",
        Role.ADMIN,
        "Export subscribers (every field, oldest first)",
        export_subscribers,
        SubscriberExport,
        query=SubscriberExportQuery,
        tag="subscribers",
    ),
    Operation(
        "GET",
        "/subscribers/{id:int}",
        Role.ADMIN,
        "One subscriber",
        show_subscriber,
        SubscriberOut,
        path_params=("id",),
        errors=(404,),
        tag="subscribers",
    ),
    Operation(
        "POST",
        "/subscribers/{id:int}/unsubscribe",
        Role.ADMIN,
        "Unsubscribe a subscriber (the address is suppressed)",
        unsubscribe_subscriber,
        SubscriberChanged,
        path_params=("id",),
        errors=(404,),
        tag="subscribers",
    ),
    Operation(
        "GET",
        "/releases",
        Role.EDITOR,
        "List and search releases, newest first",
        list_releases,
        ReleaseList,
        query=ReleaseQuery,
        tag="releases",
    ),
    Operation(
        "POST",
        "/releases",
        Role.EDITOR,
        "Add a release by hand (sent whatever its date unless send is false)",
        create_release,
        ReleaseAdded,
        status=201,
        body=ReleaseCreate,
        errors=(422,),
        tag="releases",
    ),
    Operation(
        "GET",
        "/digests/dry-run",
        Role.EDITOR,
        "How many readers a send now would reach, and why not more",
        dry_run,
        DryRunOut,
        query=DryRunQuery,
        tag="digests",
    ),
    Operation(
        "POST",
        "/digests",
        Role.EDITOR,
        "Create a send: scheduled, or waiting for POST /digests/{id}/send",
        create_digest,
        DigestStatusOut,
        status=201,
        body=DigestCreate,
        tag="digests",
    ),
    Operation(
        "GET",
        "/digests/preview",
        Role.EDITOR,
        "The digest a subscriber (or a sample reader) would get now",
        preview,
        PreviewOut,
        query=PreviewQuery,
        tag="digests",
    ),
    Operation(
        "GET",
        "/digests/{id:int}",
        Role.EDITOR,
        "Status and counts of a send",
        digest_status,
        DigestStatusOut,
        path_params=("id",),
        errors=(404,),
        tag="digests",
    ),
    Operation(
        "POST",
        "/digests/{id:int}/send",
        Role.EDITOR,
        "Start a created send now",
        send_digest,
        DigestStatusOut,
        path_params=("id",),
        errors=(404, 409),
        tag="digests",
    ),
    *(
        Operation(
            "POST",
            f"/digests/{{id:int}}/{action}",
            Role.EDITOR,
            f"{action.title()} a send",
            _state_change(action),
            DigestStatusOut,
            path_params=("id",),
            errors=(404, 409),
            tag="digests",
        )
        for action in ("pause", "resume", "cancel")
    ),
]


def routes(operations: list[Operation]) -> list[BaseRoute]:
    """The API's routes, relative to /api: one per operation, and the OpenAPI
    document describing them (mailer.web.routes.API_OPERATIONS lists them all)."""

    async def openapi_document(request: Request) -> Response:
        return JSONResponse(build_document(operations, web_state(request).settings))

    api_routes: list[BaseRoute] = [
        Route(op.path, _wrap(op), methods=[op.method]) for op in operations
    ]
    api_routes.append(Route("/openapi.json", openapi_document, methods=["GET"]))
    return api_routes
