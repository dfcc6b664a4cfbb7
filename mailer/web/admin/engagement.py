"""Engagement reports: per send, per release across sends, per topic over time, as
server-drawn charts with tables beside them, and as CSV (see mailer.engagement)."""

from __future__ import annotations

from dataclasses import replace

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from mailer import engagement
from mailer.accounts import Role
from mailer.web.admin.auth import requires
from mailer.web.admin.common import page, path_id
from mailer.web.admin.dashboard import Chart, bar_chart
from mailer.web.state import web_state

CHART_TOPICS = 4
TITLE_CHARS = 40


def _short(title: str) -> str:
    return title if len(title) <= TITLE_CHARS else title[: TITLE_CHARS - 1] + "…"


def _release_chart(rows: list[engagement.ReleaseClicks], title: str) -> Chart:
    """Bars by rank (titles are too long to write under a bar; the table has them)."""
    chart = bar_chart(
        [(f"#{n} {_short(r.title)}", r.unique_clicks, "bar") for n, r in enumerate(rows[:12], 1)],
        title,
    )
    bars = [replace(bar, tick=f"#{n}") for n, bar in enumerate(chart.bars, 1)]
    return replace(chart, bars=bars)


def _csv(body: str, name: str) -> Response:
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


@requires(Role.EDITOR)
async def overview(request: Request) -> Response:
    state = web_state(request)
    sends = await engagement.recent_sends(state.db)
    releases = await engagement.release_totals(state.db)
    trend = await engagement.topic_trend(state.db, state.now())
    topic_charts = [
        (
            name,
            bar_chart(
                [
                    (week.strftime("%d %b"), n, "bar")
                    for week, n in zip(trend.weeks, counts, strict=True)
                ],
                f"Clicks per week on {name} releases",
                tick_every=3,
            ),
        )
        for name, counts in trend.topics[:CHART_TOPICS]
    ]
    return page(
        request,
        "engagement.html",
        {
            "tracking": state.settings.tracking,
            "sends": sends,
            "releases": releases,
            "release_chart": _release_chart(releases, "Unique clicks per release, all sends"),
            "trend": trend,
            "topic_charts": topic_charts,
        },
    )


@requires(Role.EDITOR)
async def send(request: Request) -> Response:
    state = web_state(request)
    report = await engagement.send_report(state.db, state.settings, path_id(request))
    if report is None:
        raise HTTPException(404, "There is no such send.")
    return page(
        request,
        "engagement_send.html",
        {
            "tracking": state.settings.tracking,
            "report": report,
            "chart": _release_chart(
                report.releases, f"Unique clicks per release, send {report.digest_id}"
            ),
        },
    )


@requires(Role.EDITOR)
async def send_csv(request: Request) -> Response:
    state = web_state(request)
    report = await engagement.send_report(state.db, state.settings, path_id(request))
    if report is None:
        raise HTTPException(404, "There is no such send.")
    return _csv(engagement.send_report_csv(report), f"send-{report.digest_id}-engagement.csv")


@requires(Role.EDITOR)
async def releases_csv(request: Request) -> Response:
    totals = await engagement.release_totals(web_state(request).db, limit=100_000)
    return _csv(engagement.release_totals_csv(totals), "release-clicks.csv")


@requires(Role.EDITOR)
async def topics_csv(request: Request) -> Response:
    state = web_state(request)
    trend = await engagement.topic_trend(state.db, state.now())
    return _csv(engagement.topic_trend_csv(trend), "topic-clicks-per-week.csv")
