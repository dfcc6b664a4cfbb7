"""The public archive's pages and feeds: thin handlers over :mod:`mailer.archive`.

Every handler answers 404 when ``archive.public`` is false. HTML pages render the
same data the feeds do; feeds answer conditional GETs (ETag, Last-Modified).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import wraps
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from mailer import archive, feeds
from mailer.archive import (
    ArchiveInputError,
    ArchiveQuery,
    NotPublic,
    ReleaseMoved,
    ReleaseWithdrawn,
)
from mailer.web.headers import SECURITY_HEADERS
from mailer.web.state import render, web_state

Handler = Callable[[Request], Awaitable[Response]]
_RELEASE_REF = re.compile(r"^(\d{1,18})(?:-([a-z0-9-]{0,200}))?$")
_POSITION = re.compile(r"^\d{1,18}$")
# Release photos are hot-linked from the publisher's site, so release pages allow
# https images; everything else (scripts, styles, frames) stays as strict as elsewhere.
_RELEASE_PAGE_CSP = SECURITY_HEADERS["content-security-policy"].replace(
    "img-src 'self' data:", "img-src 'self' data: https:"
)
FEED_CACHE = "public, max-age=300"


def public_only(handler: Handler) -> Handler:
    @wraps(handler)
    async def guarded(request: Request) -> Response:
        if not web_state(request).settings.archive.public:
            raise HTTPException(404)
        return await handler(request)

    return guarded


def _query(request: Request) -> ArchiveQuery:
    params = request.query_params

    def position(name: str) -> int | None:
        value = params.get(name, "")
        if not value:
            return None
        if not _POSITION.match(value):
            raise ArchiveInputError("That page of the archive does not exist.")
        return int(value)

    return ArchiveQuery(
        text=params.get("q", "").strip(),
        topic=params.get("topic", "").strip(),
        month=params.get("month", "").strip(),
        before=position("before"),
        after=position("after"),
    )


def _link(path: str, filters: dict[str, str], **position: int) -> str:
    values = {**filters, **{k: str(v) for k, v in position.items()}}
    return f"{path}?{urlencode(values)}" if values else path


async def _archive_page(request: Request, query: ArchiveQuery, path: str) -> Response:
    state = web_state(request)
    settings = state.settings
    try:
        data = await archive.list_releases(
            state.db,
            query,
            now=state.now(),
            page_size=settings.archive.page_size,
            timezone=settings.digest.timezone,
        )
    except NotPublic as exc:
        raise HTTPException(404, str(exc)) from None
    filters = query.filters()
    if path != "/releases":
        filters.pop("topic", None)
    newer, older = data.newer_after, data.older_before
    return render(
        request,
        "archive/releases.html",
        {
            "query": query,
            "error": data.error,
            "releases": data.releases,
            "topics": data.topics,
            "topic": data.topic,
            "newer_link": _link(path, filters, after=newer) if newer is not None else None,
            "older_link": _link(path, filters, before=older) if older is not None else None,
            # Searches, filtered lists and refused filters are not pages to index.
            "noindex": bool(data.error or query.text or query.month or query.before or query.after),
            "timezone": settings.digest.timezone,
            "action": path,
        },
        status_code=400 if data.error else 200,
    )


def _reader_query(request: Request, topic: str | None = None) -> ArchiveQuery:
    try:
        query = _query(request)
    except ArchiveInputError as exc:
        raise HTTPException(400, str(exc)) from None
    if topic is None:
        return query
    return ArchiveQuery(query.text, topic, query.month, query.before, query.after)


@public_only
async def releases_index(request: Request) -> Response:
    return await _archive_page(request, _reader_query(request), "/releases")


@public_only
async def topic_index(request: Request) -> Response:
    slug = request.path_params["slug"]
    return await _archive_page(request, _reader_query(request, slug), f"/topics/{slug}")


@public_only
async def release_page(request: Request) -> Response:
    state = web_state(request)
    match = _RELEASE_REF.match(request.path_params["ref"])
    if match is None:
        raise HTTPException(404)
    try:
        release = await archive.release_detail(
            state.db, int(match.group(1)), match.group(2), now=state.now()
        )
    except NotPublic as exc:
        raise HTTPException(404, str(exc)) from None
    except ReleaseMoved as moved:
        return RedirectResponse(moved.path, status_code=301)
    except ReleaseWithdrawn as gone:
        return render(
            request,
            "archive/withdrawn.html",
            {"gone": gone, "timezone": state.settings.digest.timezone},
            status_code=410,
        )
    page_url = state.settings.site.base_url + release.path
    response = render(
        request,
        "archive/release.html",
        {
            "release": release,
            "page_url": page_url,
            "canonical_url": release.external_url or page_url,
            "timezone": state.settings.digest.timezone,
        },
    )
    response.headers["content-security-policy"] = _RELEASE_PAGE_CSP
    return response


@public_only
async def digest_page(request: Request) -> Response:
    state = web_state(request)
    public_id = request.path_params["public_id"]
    if len(public_id) > 32:
        raise HTTPException(404)
    try:
        digest = await archive.digest_view(state.db, public_id, now=state.now())
    except NotPublic as exc:
        raise HTTPException(404, str(exc)) from None
    return render(
        request,
        "archive/digest.html",
        {"digest": digest, "timezone": state.settings.digest.timezone},
    )


# --- feeds ------------------------------------------------------------------------------


def _not_modified(request: Request, etag: str, updated: datetime | None) -> bool:
    """RFC 9110 section 13.1: If-None-Match wins; If-Modified-Since only without it."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since and updated is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            return False
        return updated.replace(microsecond=0) <= since
    return False


async def _feed(request: Request, topic: str | None, kind: str) -> Response:
    state = web_state(request)
    settings = state.settings
    now = state.now()
    try:
        data = await archive.feed(state.db, topic, now=now, limit=settings.archive.feed_items)
    except NotPublic as exc:
        raise HTTPException(404, str(exc)) from None
    headers = {"etag": data.etag, "cache-control": FEED_CACHE}
    if data.updated is not None:
        headers["last-modified"] = format_datetime(data.updated.replace(microsecond=0), usegmt=True)
    if _not_modified(request, data.etag, data.updated):
        return Response(status_code=304, headers=headers)
    site = {"site_name": settings.site.name, "base_url": settings.site.base_url}
    if kind == "atom":
        body = feeds.atom(data, now=now, **site)
        return Response(body, media_type=feeds.ATOM_TYPE, headers=headers)
    return Response(feeds.json_feed(data, **site), media_type=feeds.JSON_FEED_TYPE, headers=headers)


@public_only
async def releases_atom(request: Request) -> Response:
    return await _feed(request, None, "atom")


@public_only
async def releases_json(request: Request) -> Response:
    return await _feed(request, None, "json")


@public_only
async def topic_atom(request: Request) -> Response:
    return await _feed(request, request.path_params["slug"], "atom")


@public_only
async def topic_json(request: Request) -> Response:
    return await _feed(request, request.path_params["slug"], "json")


# --- for crawlers -----------------------------------------------------------------------

SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"
XML_TYPE = "application/xml; charset=utf-8"


@public_only
async def sitemap_index(request: Request) -> Response:
    state = web_state(request)
    base = state.settings.site.base_url
    files = await archive.sitemap_files(state.db, now=state.now())
    locations = [f"{base}/sitemap-pages.xml"]
    locations += [f"{base}/sitemap-releases-{number}.xml" for number in range(files)]
    entries = "".join(f"<sitemap><loc>{feeds.escape_xml(loc)}</loc></sitemap>" for loc in locations)
    return _xml(f'<sitemapindex xmlns="{SITEMAP_NS}">{entries}</sitemapindex>')


@public_only
async def sitemap_pages(request: Request) -> Response:
    state = web_state(request)
    base = state.settings.site.base_url
    topics = await archive.active_topics(state.db)
    paths = ["/", "/releases", *(f"/topics/{topic.slug}" for topic in topics)]
    return _urlset([(base + path, None) for path in paths])


@public_only
async def sitemap_releases(request: Request) -> Response:
    state = web_state(request)
    base = state.settings.site.base_url
    try:
        entries = await archive.sitemap_entries(
            state.db, request.path_params["number"], now=state.now()
        )
    except NotPublic as exc:
        raise HTTPException(404, str(exc)) from None
    return _urlset([(base + entry.path, entry.updated) for entry in entries])


def _urlset(urls: list[tuple[str, datetime | None]]) -> Response:
    rows = []
    for location, updated in urls:
        modified = f"<lastmod>{feeds.rfc3339(updated)}</lastmod>" if updated else ""
        rows.append(f"<url><loc>{feeds.escape_xml(location)}</loc>{modified}</url>")
    return _xml(f'<urlset xmlns="{SITEMAP_NS}">{"".join(rows)}</urlset>')


def _xml(document: str) -> Response:
    return Response(f'<?xml version="1.0" encoding="UTF-8"?>\n{document}\n', media_type=XML_TYPE)


@public_only
async def robots_txt(request: Request) -> Response:
    base = web_state(request).settings.site.base_url
    lines = [
        "User-agent: *",
        # Personal links (they carry tokens), the admin and the API are not for crawlers;
        # nor are searches and filtered lists, which are endless variations of /releases.
        "Disallow: /admin/",
        "Disallow: /api/",
        "Disallow: /confirm/",
        "Disallow: /preferences/",
        "Disallow: /unsubscribe/",
        "Disallow: /releases?",
        "Disallow: /topics/*?",
        "Allow: /",
        "",
        f"Sitemap: {base}/sitemap.xml",
    ]
    return PlainTextResponse("\n".join(lines) + "\n")
