"""Release pages: list and search, view, edit title/summary/topics, exclude from
digests, and add one by hand (stored through the collector's own matching, so a
hand-added copy of a collected release is merged, not duplicated)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailer import archive, audit
from mailer.accounts import Role
from mailer.collect.ingest import ReleaseInputError, add_release, editor_date
from mailer.config import Settings
from mailer.db import Database
from mailer.models import (
    Release,
    ReleaseLink,
    ReleaseTopic,
    SubscriberRelease,
    Topic,
    utcnow,
)
from mailer.web.admin.auth import requires
from mailer.web.admin.common import (
    form,
    identity,
    like_patterns,
    page,
    paging,
    path_id,
    query_text,
    redirect,
    text,
    texts,
)
from mailer.web.admin.digests import parse_local_time
from mailer.web.app import web_state

T = TypeVar("T")
TITLE_LIMIT = 1000
SUMMARY_LIMIT = 5000
TEXT_LIMIT = 200_000


def search_conditions(search: str, topic: str, show: str) -> list[Any]:
    conditions: list[Any] = [Release.merged_into_id.is_(None)]
    if search:
        patterns = like_patterns(search)
        conditions.append(
            or_(
                *(func.lower(Release.title).like(p) for p in patterns),
                *(Release.title.like(p) for p in patterns),
                *(func.lower(Release.summary).like(p) for p in patterns),
            )
        )
    if topic:
        conditions.append(
            Release.id.in_(
                select(ReleaseTopic.release_id)
                .join(Topic, Topic.id == ReleaseTopic.topic_id)
                .where(Topic.slug == topic)
            )
        )
    if show == "excluded":
        conditions.append(Release.excluded.is_(True))
    elif show == "included":
        conditions.append(Release.excluded.is_(False))
    return conditions


async def search_releases(
    session: AsyncSession,
    *,
    search: str = "",
    topic: str = "",
    show: str = "",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Release], int]:
    """Newest first (by publication date); merged duplicates are left out."""
    conditions = search_conditions(search, topic, show)
    total = await session.scalar(select(func.count(Release.id)).where(*conditions)) or 0
    rows = (
        await session.scalars(
            select(Release)
            .where(*conditions)
            .order_by(Release.published_at.desc(), Release.id.desc())
            .limit(limit)
            .offset(offset)
        )
    ).all()
    return list(rows), total


async def _topics(session: AsyncSession) -> list[Topic]:
    return list((await session.scalars(select(Topic).where(Topic.active).order_by(Topic.id))).all())


async def update_release(
    database: Database,
    settings: Settings,
    release_id: int,
    *,
    title: str | None = None,
    summary: str | None = None,
    topics: list[str] | None = None,
    excluded: bool | None = None,
) -> dict[str, Any]:
    """Apply an operator's edits; returns what changed (for the audit log)."""
    from mailer.collect.topics import retag_release

    changed: dict[str, Any] = {}
    async with database.transaction() as session:
        release = await session.get(Release, release_id, with_for_update=True)
        if release is None or release.merged_into_id is not None:
            raise LookupError("There is no such release.")
        if title is not None:
            title = " ".join(title.split())
            if not title:
                raise ReleaseInputError("A release needs a title.")
            if len(title) > TITLE_LIMIT:
                raise ReleaseInputError(f"A title has at most {TITLE_LIMIT} characters.")
            if title != release.title:
                changed["title"] = title
                release.title = title
        if summary is not None:
            summary = summary.strip()
            if len(summary) > SUMMARY_LIMIT:
                raise ReleaseInputError(f"A summary has at most {SUMMARY_LIMIT} characters.")
            if summary != release.summary:
                changed["summary"] = True
                release.summary = summary
        if excluded is not None and excluded != release.excluded:
            changed["excluded"] = excluded
            release.excluded = excluded
        if topics is not None:
            before = sorted(t.slug for t in release.topics)
            try:
                after = await retag_release(session, settings, release_id, topics)
            except ValueError as exc:
                raise ReleaseInputError(str(exc)) from None
            if sorted(after) != before:
                changed["topics"] = after
        if changed:
            release.updated_at = utcnow()
    return changed


# --- pages ------------------------------------------------------------------------------


@requires(Role.EDITOR)
async def releases_index(request: Request) -> Response:
    state = web_state(request)
    search, topic, show = (
        query_text(request, "q"),
        query_text(request, "topic"),
        query_text(request, "show"),
    )
    async with state.db.session() as session:
        total = await session.scalar(
            select(func.count(Release.id)).where(*search_conditions(search, topic, show))
        )
        pages = paging(request, total or 0, {"q": search, "topic": topic, "show": show})
        releases, _ = await search_releases(
            session, search=search, topic=topic, show=show, limit=pages.size, offset=pages.offset
        )
        topics = await _topics(session)
    return page(
        request,
        "releases.html",
        {
            "releases": releases,
            "paging": pages,
            "search": search,
            "topic": topic,
            "show": show,
            "topics": topics,
        },
    )


async def _release_page(
    request: Request, release_id: int, errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    state = web_state(request)
    async with state.db.session() as session:
        release = await session.get(Release, release_id)
        if release is None:
            raise HTTPException(404, "There is no such release.")
        links = (
            await session.scalars(
                select(ReleaseLink)
                .where(ReleaseLink.release_id == release_id)
                .order_by(ReleaseLink.id)
            )
        ).all()
        merged = (
            await session.execute(
                select(Release.id, Release.title).where(Release.merged_into_id == release_id)
            )
        ).all()
        topics = await _topics(session)
        deliveries = await session.scalar(
            select(func.count()).where(SubscriberRelease.release_id == release_id)
        )
    return page(
        request,
        "release.html",
        {
            "release": release,
            "links": links,
            "merged": merged,
            "topics": topics,
            "chosen": {t.slug for t in release.topics},
            "deliveries": deliveries,
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
        changed = await update_release(
            state.db,
            state.settings,
            release_id,
            title=text(data, "title", limit=TITLE_LIMIT * 2),
            summary=text(data, "summary", limit=SUMMARY_LIMIT * 2),
            topics=texts(data, "topics"),
            excluded=bool(text(data, "excluded")),
        )
    except LookupError:
        raise HTTPException(404, "There is no such release.") from None
    except ReleaseInputError as exc:
        return await _release_page(request, release_id, {"form": str(exc)}, 422)
    if changed:
        await audit.record(
            state.db, identity(request).actor, "release.edit", "release", release_id, changed
        )
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
        changed = await update_release(state.db, state.settings, release_id, excluded=excluded)
    except LookupError:
        raise HTTPException(404, "There is no such release.") from None
    if changed:
        await audit.record(
            state.db,
            identity(request).actor,
            "release.exclude" if excluded else "release.include",
            "release",
            release_id,
        )
    back = text(data, "back", limit=500)
    target = back if back.startswith("/admin/releases") else f"/admin/releases/{release_id}"
    notice = "Excluded from digests." if excluded else "Included in digests again."
    return redirect(request, target, notice)


async def _archive_change(request: Request, change: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run one of mailer.archive's editor actions in a write transaction; 404 for
    a release that does not exist (or was merged into another)."""
    try:
        async with web_state(request).db.transaction() as session:
            return await change(session)
    except archive.NotPublic:
        raise HTTPException(404, "There is no such release.") from None


@requires(Role.EDITOR)
async def release_withdraw(request: Request) -> Response:
    state = web_state(request)
    release_id = path_id(request)
    data = await form(request)
    note = text(data, "note", limit=1000) or None
    pulled = await _archive_change(
        request,
        lambda session: archive.withdraw_release(session, release_id, note=note, now=state.now()),
    )
    await audit.record(
        state.db,
        identity(request).actor,
        "release.withdraw",
        "release",
        release_id,
        {
            "note": note,
            "deliveries_changed": pulled.deliveries_changed,
            "deliveries_cancelled": pulled.deliveries_cancelled,
        },
    )
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
    restored = await _archive_change(
        request, lambda session: archive.restore_release(session, release_id, now=state.now())
    )
    if not restored:
        return redirect(request, f"/admin/releases/{release_id}", "It was not withdrawn.")
    await audit.record(state.db, identity(request).actor, "release.restore", "release", release_id)
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
    pulled = await _archive_change(
        request, lambda session: archive.set_embargo(session, release_id, until, now=state.now())
    )
    await audit.record(
        state.db,
        identity(request).actor,
        "release.embargo",
        "release",
        release_id,
        {"until": until.isoformat() if until else None},
    )
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
    state = web_state(request)
    async with state.db.session() as session:
        topics = await _topics(session)
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
        published = editor_date(values["published"], state.settings.digest.timezone)
        embargo_until = (
            parse_local_time(values["embargo_until"], timezone) if values["embargo_until"] else None
        )
        release_id, outcome = await add_release(
            state.db,
            state.settings,
            title=values["title"],
            body=values["body"],
            url=values["url"] or None,
            published=published.at if published else None,
            published_date_only=bool(published and published.date_only),
            topics=values["topics"] or None,
            added_by=identity(request).actor,
            send=not values["no_send"],
            now=state.now(),
            embargo_until=embargo_until,
        )
    except (ReleaseInputError, HTTPException) as exc:
        message = exc.detail if isinstance(exc, HTTPException) else str(exc)
        async with state.db.session() as session:
            topics = await _topics(session)
        return page(
            request,
            "release_new.html",
            {"topics": topics, "values": values, "errors": {"form": message}},
            status_code=422,
        )
    await audit.record(
        state.db,
        identity(request).actor,
        "release.add",
        "release",
        release_id,
        {"title": values["title"], "outcome": outcome, "embargo_until": values["embargo_until"]},
    )
    notice = {
        "new": "Release added.",
        "merged": "This release was already stored; your copy was linked to it.",
    }.get(outcome, f"Release stored ({outcome}).")
    return redirect(request, f"/admin/releases/{release_id}", notice)


def routes() -> list[Route]:
    return [
        Route("/releases", releases_index, methods=["GET"]),
        Route("/releases/new", release_new_form, methods=["GET"]),
        Route("/releases/new", release_new_submit, methods=["POST"]),
        Route("/releases/{id:int}", release_view, methods=["GET"]),
        Route("/releases/{id:int}", release_save, methods=["POST"]),
        Route("/releases/{id:int}/exclude", release_exclude, methods=["POST"]),
        Route("/releases/{id:int}/withdraw", release_withdraw, methods=["POST"]),
        Route("/releases/{id:int}/restore", release_restore, methods=["POST"]),
        Route("/releases/{id:int}/embargo", release_embargo, methods=["POST"]),
    ]
