"""Every address the web app answers, in one table per part of the site.

``PUBLIC``: the pages strangers use, the archive and its feeds, the bounce webhook
and /metrics. ``ADMIN``: the admin under /admin; every endpoint there is wrapped in
:func:`mailer.web.admin.auth.requires` (tests/admin/test_access.py walks this table
to prove it). ``API_OPERATIONS``: the API under /api; each operation is declared
beside its handler (mailer.web.api, mailer.web.api_engagement) with the models that
validate it and describe it in /api/openapi.json.

A handler is served only when it is listed here: a renamed or new module fails at
import or is missing from this file in plain sight, never dropped silently.
Public paths are documented in README.md ("Web"), admin and API paths in docs/web.md;
tests/test_docs.py fails when one is not.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from mailer.web import api, api_engagement, archive, metrics, public, tracking, webhooks
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
from mailer.web.openapi import Operation

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Form posts are small; anything bigger is refused before it is parsed.
_FORM = {"max_body_size": public.MAX_FORM_BYTES}

PUBLIC: list[BaseRoute] = [
    # mailer.web.public: subscribe, confirm, preferences, unsubscribe, privacy
    Route("/", public.subscribe_form, methods=["GET"], name="home"),
    Route("/", public.subscribe_submit, methods=["POST"], **_FORM),
    Route("/subscribe", public.subscribe_form, methods=["GET"], name="subscribe"),
    Route("/subscribe", public.subscribe_submit, methods=["POST"], **_FORM),
    Route("/privacy", public.privacy, methods=["GET"], name="privacy"),
    Route("/confirm/{token}", public.confirm_page, methods=["GET"], name="confirm"),
    Route("/confirm/{token}", public.confirm_submit, methods=["POST"], **_FORM),
    Route("/preferences/{token}", public.preferences_page, methods=["GET"], name="preferences"),
    Route("/preferences/{token}", public.preferences_submit, methods=["POST"], **_FORM),
    Route("/preferences/{token}/data.json", public.export_download, methods=["GET"], name="export"),
    Route("/preferences/{token}/erase", public.erase_page, methods=["GET"], name="erase"),
    Route("/preferences/{token}/erase", public.erase_submit, methods=["POST"], **_FORM),
    Route("/unsubscribe/{token}", public.unsubscribe_page, methods=["GET"], name="unsubscribe"),
    Route("/unsubscribe/{token}", public.unsubscribe_submit, methods=["POST"], **_FORM),
    # mailer.web.archive: the public archive, its feeds and sitemaps
    Route("/releases", archive.releases_index, methods=["GET"], name="archive"),
    Route("/releases.atom", archive.releases_atom, methods=["GET"], name="releases_atom"),
    Route("/releases.json", archive.releases_json, methods=["GET"], name="releases_json"),
    Route("/releases/{ref}", archive.release_page, methods=["GET"], name="release"),
    Route("/topics/{slug}.atom", archive.topic_atom, methods=["GET"], name="topic_atom"),
    Route("/topics/{slug}.json", archive.topic_json, methods=["GET"], name="topic_json"),
    Route("/topics/{slug}", archive.topic_index, methods=["GET"], name="topic"),
    Route("/digests/{public_id}", archive.digest_page, methods=["GET"], name="digest"),
    Route("/sitemap.xml", archive.sitemap_index, methods=["GET"]),
    Route("/sitemap-pages.xml", archive.sitemap_pages, methods=["GET"]),
    Route("/sitemap-releases-{number:int}.xml", archive.sitemap_releases, methods=["GET"]),
    Route("/robots.txt", archive.robots_txt, methods=["GET"]),
    # mailer.web.tracking: tracked links and the open image (tracking.clicks / opens)
    Route("/r/{token}", tracking.follow, methods=["GET"]),
    Route("/r/{token}/{reader}", tracking.follow, methods=["GET"]),
    Route("/o/{token}", tracking.open_image, methods=["GET"]),
    Route("/o/{token}/{reader}", tracking.open_image, methods=["GET"]),
    # mailer.web.webhooks and mailer.web.metrics
    Route("/webhooks/bounce", webhooks.bounce_webhook, methods=["POST"], name="bounce_webhook"),
    Route("/metrics", metrics.metrics, methods=["GET"]),
]

# Relative to /admin.
ADMIN: list[BaseRoute] = [
    # mailer.web.admin.auth: sign in and out (the only pages without a session)
    Route("/login", auth.login_form, methods=["GET"]),
    Route("/login", auth.login_submit, methods=["POST"]),
    Route("/logout", auth.logout, methods=["POST"]),
    Route("/logout-everywhere", auth.logout_everywhere, methods=["POST"]),
    # mailer.web.admin.dashboard
    Route("/", dashboard.dashboard, methods=["GET"]),
    # mailer.web.admin.digests: previews, sends and their progress
    Route("/digests", digests.digests_index, methods=["GET"]),
    Route("/digests/preview", digests.preview_page, methods=["GET"]),
    Route("/digests/preview/html", digests.preview_html, methods=["GET"]),
    Route("/digests/test", digests.send_test, methods=["POST"]),
    Route("/digests/send", digests.confirm_send, methods=["GET"]),
    Route("/digests/send", digests.send_now, methods=["POST"]),
    Route("/digests/schedule", digests.schedule, methods=["POST"]),
    Route("/digests/{id:int}", digests.digest_page, methods=["GET"]),
    Route("/digests/{id:int}/progress", digests.digest_progress_json, methods=["GET"]),
    Route("/digests/{id:int}/{action:str}", digests.digest_action, methods=["POST"]),
    # mailer.web.admin.engagement: clicks and opens per send, release and topic
    Route("/engagement", engagement.overview, methods=["GET"]),
    Route("/engagement/releases.csv", engagement.releases_csv, methods=["GET"]),
    Route("/engagement/topics.csv", engagement.topics_csv, methods=["GET"]),
    Route("/engagement/sends/{id:int}", engagement.send, methods=["GET"]),
    Route("/engagement/sends/{id:int}.csv", engagement.send_csv, methods=["GET"]),
    # mailer.web.admin.releases
    Route("/releases", releases.releases_index, methods=["GET"]),
    Route("/releases/new", releases.release_new_form, methods=["GET"]),
    Route("/releases/new", releases.release_new_submit, methods=["POST"]),
    Route("/releases/{id:int}", releases.release_view, methods=["GET"]),
    Route("/releases/{id:int}", releases.release_save, methods=["POST"]),
    Route("/releases/{id:int}/exclude", releases.release_exclude, methods=["POST"]),
    Route("/releases/{id:int}/withdraw", releases.release_withdraw, methods=["POST"]),
    Route("/releases/{id:int}/restore", releases.release_restore, methods=["POST"]),
    Route("/releases/{id:int}/embargo", releases.release_embargo, methods=["POST"]),
    # mailer.web.admin.subscribers
    Route("/subscribers", subscribers.subscribers_index, methods=["GET"]),
    Route("/subscribers/new", subscribers.subscriber_new_form, methods=["GET"]),
    Route("/subscribers/new", subscribers.subscriber_new_submit, methods=["POST"]),
    Route("/subscribers/export.csv", subscribers.subscribers_export, methods=["GET"]),
    Route("/subscribers/import", subscribers.import_form, methods=["GET"]),
    Route("/subscribers/import", subscribers.import_preview, methods=["POST"]),
    Route("/subscribers/import/confirm", subscribers.import_confirm, methods=["POST"]),
    Route("/subscribers/{id:int}", subscribers.subscriber_view, methods=["GET"]),
    Route(
        "/subscribers/{id:int}/unsubscribe", subscribers.subscriber_unsubscribe, methods=["POST"]
    ),
    Route("/subscribers/{id:int}/erase", subscribers.subscriber_erase, methods=["POST"]),
    # mailer.web.admin.sources
    Route("/sources", sources.sources_index, methods=["GET"]),
    Route("/sources/new", sources.source_new_form, methods=["GET"]),
    Route("/sources/new", sources.source_new_submit, methods=["POST"]),
    Route("/sources/{id:int}", sources.source_view, methods=["GET"]),
    Route("/sources/{id:int}", sources.source_save, methods=["POST"]),
    Route("/sources/{id:int}/enabled", sources.source_toggle, methods=["POST"]),
    Route("/sources/{id:int}/collect", sources.source_collect, methods=["POST"]),
    # mailer.web.admin.manage: audit log, users, API tokens, settings
    Route("/audit", manage.audit_page, methods=["GET"]),
    Route("/users", manage.users_index, methods=["GET"]),
    Route("/users/new", manage.user_new, methods=["POST"]),
    Route("/users/{id:int}", manage.user_update, methods=["POST"]),
    Route("/tokens/new", manage.token_new, methods=["POST"]),
    Route("/tokens/{id:int}/revoke", manage.token_revoke, methods=["POST"]),
    Route("/settings", manage.settings_page, methods=["GET"]),
]

API_OPERATIONS: list[Operation] = [*api.OPERATIONS, *api_engagement.OPERATIONS]


def all_routes() -> list[BaseRoute]:
    """The app's routes: the three tables mounted, plus the static files."""
    return [
        *PUBLIC,
        Route("/admin", dashboard.to_dashboard, methods=["GET"]),
        Mount("/admin", routes=ADMIN),
        Mount("/api", routes=api.routes(API_OPERATIONS)),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
