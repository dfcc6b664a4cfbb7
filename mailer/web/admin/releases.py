"""Release pages: list and search, view, edit title/summary/topics, exclude from
digests, and add one by hand (stored through the collector's own matching, so a
hand-added copy of a collected release is merged, not duplicated)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer import archive, releases
from mailer.accounts import Role
from mailer.releases import NoSuchRelease, ReleaseFilter, ReleaseInputError
from mailer.web.admin.auth import requires
from mailer.web.admin.common import (
    MAX_PAGE,
    PAGE_SIZE,
    form,
    identity,
    page,
    paging,
    path_id,
    query_int,
    query_text,
    redirect,
    text,
    texts,
)
from mailer.web.admin.digests import parse_local_time
from mailer.web.state import web_state

TITLE_LIMIT = releases.TITLE_LIMIT
SUMMARY_LIMIT = releases.SUMMARY_LIMIT
TEXT_LIMIT = 200_000


# --- pages ------------------------------------------------------------------------------


@requires(Role.EDITOR)
async def releases_index(request: Request) -> Response:
    state = web_state(request)
    wanted = ReleaseFilter(
        search=query_text(request, "q"),
        topic=query_text(request, "topic"),
        show=query_text(request, "show"),
    )
    params = {"q": wanted.search, "topic": wanted.topic, "show": wanted.show}
    found = await releases.release_listing(
        state.db, wanted, page=query_int(request, "page", 1, 1, MAX_PAGE), size=PAGE_SIZE
    )
    return page(
        request,
        "releases.html",
        {
            "releases": found.items,
            "paging": paging(request, found.total, params, page=found.page),
            "search": wanted.search,
            "topic": wanted.topic,
            "show": wanted.show,
            "topics": found.topics,
        },
    )


async def _release_page(
    request: Request, release_id: int, errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    state = web_state(request)
    try:
        detail = await releases.release_detail(state.db, release_id)
    except NoSuchRelease as exc:
        raise HTTPException(404, str(exc)) from None
    release = detail.release
    return page(
        request,
        "release.html",
        {
            "release": release,
            "links": detail.links,
            "merged": detail.merged,
            "topics": detail.topics,
            "chosen": {t.slug for t in release.topics},
            "deliveries": detail.recipients,
            "errors": errors or {},
            "public_path": archive.release_path(release.id, release.title),
            "archive_public": state.settings.archive.public,
            "embargo_value": _local_input(release.embargo_until, state.settings.digest.timezone),
            "embargoed": release.embargo_until is not None and release.embargo_until > state.now(),
        },
        status_code=status,
    )


def _local_input(value: datetime | None, timezone: str) -> str:
    """A time as a datetime-local form value in the site's timezone."""
    if value is None:
        return ""
    return value.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%dT%H:%M")


@requires(Role.EDITOR)
async def release_view(request: Request) -> Response:
    return await _release_page(request, path_id(request))


@requires(Role.EDITOR)
async def release_save(request: Request) -> Response:
    state = web_state(request)
    release_id = path_id(request)
    data = await form(request)
    try:
        changed = await releases.edit_release(
            state.db,
            state.settings,
            release_id,
            actor=identity(request).actor,
            title=text(data, "title", limit=TITLE_LIMIT * 2),
            summary=text(data, "summary", limit=SUMMARY_LIMIT * 2),
            topics=texts(data, "topics"),
            excluded=bool(text(data, "excluded")),
        )
    except NoSuchRelease as exc:
        raise HTTPException(404, str(exc)) from None
    except ReleaseInputError as exc:
        return await _release_page(request, release_id, {"form": str(exc)}, 422)
    return redirect(
        request,
        f"/admin/releases/{release_id}",
        "Saved." if changed else "Nothing changed.",
    )


@requires(Role.EDITOR)
async def release_exclude(request: Request) -> Response:
    state = web_state(request)
    release_id = path_id(request)
    data = await form(request)
    excluded = text(data, "excluded") == "1"
    try:
        await releases.set_excluded(
            state.db, state.settings, release_id, excluded, actor=identity(request).actor
        )
    except NoSuchRelease as exc:
        raise HTTPException(404, str(exc)) from None
    back = text(data, "back", limit=500)
    target = back if back.startswith("/admin/releases") else f"/admin/releases/{release_id}"
    notice = "Excluded from digests." if excluded else "Included in digests again."
    return redirect(request, target, notice)


@requires(Role.EDITOR)
async def release_withdraw(request: Request) -> Response:
    state = web_state(request)
    release_id = path_id(request)
    data = await form(request)
    note = text(data, "note", limit=1000) or None
    try:
        pulled = await releases.withdraw(
            state.db, release_id, note=note, actor=identity(request).actor, now=state.now()
        )
    except NoSuchRelease as exc:
        raise HTTPException(404, str(exc)) from None
    notice = (
        "Withdrawn: hidden from the archive and never mailed again. Taken out of "
        f"{pulled.deliveries_changed + pulled.deliveries_cancelled} unsent message(s)"
        f" ({pulled.deliveries_cancelled} left empty and cancelled)."
    )
    return redirect(request, f"/admin/releases/{release_id}", notice)


@requires(Role.EDITOR)
async def release_restore(request: Request) -> Response:
    state = web_state(request)
    release_id = path_id(request)
    await form(request)
    try:
        restored = await releases.restore(
            state.db, release_id, actor=identity(request).actor, now=state.now()
        )
    except NoSuchRelease as exc:
        raise HTTPException(404, str(exc)) from None
    if not restored:
        return redirect(request, f"/admin/releases/{release_id}", "It was not withdrawn.")
    return redirect(
        request,
        f"/admin/releases/{release_id}",
        "Restored: back in the archive; digests planned from now on can carry it.",
    )


@requires(Role.EDITOR)
async def release_embargo(request: Request) -> Response:
    state = web_state(request)
    release_id = path_id(request)
    data = await form(request)
    raw = text(data, "embargo_until", limit=40)
    until = parse_local_time(raw, state.settings.digest.timezone) if raw else None
    try:
        pulled = await releases.embargo(
            state.db, release_id, until, actor=identity(request).actor, now=state.now()
        )
    except NoSuchRelease as exc:
        raise HTTPException(404, str(exc)) from None
    if until is None or until <= state.now():
        notice = "No embargo: the release is public."
    else:
        notice = (
            f"Embargoed until {until:%Y-%m-%d %H:%M %Z}: neither shown nor mailed before then"
            f" (taken out of {pulled.deliveries_changed + pulled.deliveries_cancelled}"
            " unsent message(s))."
        )
    return redirect(request, f"/admin/releases/{release_id}", notice)


@requires(Role.EDITOR)
async def release_new_form(request: Request) -> Response:
    topics = await releases.active_topics(web_state(request).db)
    return page(request, "release_new.html", {"topics": topics, "values": {}, "errors": {}})


@requires(Role.EDITOR)
async def release_new_submit(request: Request) -> Response:
    state = web_state(request)
    data = await form(request)
    values = {
        "title": text(data, "title", limit=TITLE_LIMIT * 2),
        "url": text(data, "url", limit=2000),
        "published": text(data, "published", limit=40),
        "body": text(data, "body", limit=TEXT_LIMIT),
        "topics": texts(data, "topics"),
        "no_send": bool(text(data, "no_send")),
        "embargo_until": text(data, "embargo_until", limit=40),
    }
    timezone = state.settings.digest.timezone
    try:
        embargo_until = (
            parse_local_time(values["embargo_until"], timezone) if values["embargo_until"] else None
        )
        release_id, outcome = await releases.add_release(
            state.db,
            state.settings,
            title=values["title"],
            body=values["body"],
            url=values["url"] or None,
            published=values["published"],
            topics=values["topics"] or None,
            added_by=identity(request).actor,
            send=not values["no_send"],
            now=state.now(),
            embargo_until=embargo_until,
            audit_details={"embargo_until": values["embargo_until"]},
        )
    except (ReleaseInputError, HTTPException) as exc:
        message = exc.detail if isinstance(exc, HTTPException) else str(exc)
        topics = await releases.active_topics(state.db)
        return page(
            request,
            "release_new.html",
            {"topics": topics, "values": values, "errors": {"form": message}},
            status_code=422,
        )
    notice = {
        "new": "Release added.",
        "merged": "This release was already stored; your copy was linked to it.",
    }.get(outcome, f"Release stored ({outcome}).")
    return redirect(request, f"/admin/releases/{release_id}", notice)
