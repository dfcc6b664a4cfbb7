"""The engagement reports in the JSON API (declared like every other operation, so
they appear in /api/openapi.json); the figures come from mailer.engagement."""

from __future__ import annotations

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from mailer import engagement
from mailer.accounts import Identity, Role
from mailer.web.api import Operation, Strict, _iso, error, ok
from mailer.web.state import web_state


class ReleaseClicksOut(BaseModel):
    release_id: int
    title: str
    clicks: int = Field(description="Counted clicks (scanner clicks left out).")
    unique_clicks: int = Field(
        description="Clicks that were a reader's first on this release: per message with "
        "tracking.individual, otherwise per browser and day (approximate)."
    )
    discarded_scanner_clicks: int
    sends: int = Field(description="Sends in which the release was clicked.")


class SendEngagementOut(BaseModel):
    send: int
    kind: str
    started_at: str | None
    delivered: int
    bounced: int
    unsubscribed: int = Field(
        description="Unsubscribes made with this send's link; those that name no send "
        "(the mailto address, the preferences page) count for the reader's last message "
        "before they unsubscribed."
    )
    clicks: int
    unique_clicks: int
    click_rate: float | None = Field(description="Unique clicks per delivered message.")
    discarded_scanner_clicks: int
    opens_approximate: int = Field(
        description="Loads of the digest image. Image proxies and Apple Mail Privacy "
        "Protection load it without anyone reading: approximate, never use it to decide."
    )
    readers_opened_approximate: int | None = Field(
        description="Readers who opened, with tracking.individual only."
    )
    releases: list[ReleaseClicksOut] = Field(description="Ranked: most unique clicks first.")


class ReleaseTotalsQuery(Strict):
    limit: int = Field(100, ge=1, le=1000)


class ReleaseTotalsOut(BaseModel):
    items: list[ReleaseClicksOut] = Field(description="Ranked: most unique clicks first.")


class TopicTrendQuery(Strict):
    weeks: int = Field(12, ge=1, le=104)


class TopicWeeks(BaseModel):
    topic: str
    clicks: list[int] = Field(description="Counted clicks per week, in the order of weeks.")


class TopicTrendOut(BaseModel):
    weeks: list[str] = Field(description="The Monday each week starts on (UTC), oldest first.")
    topics: list[TopicWeeks]


def _release(row: engagement.ReleaseClicks) -> ReleaseClicksOut:
    return ReleaseClicksOut(
        release_id=row.release_id,
        title=row.title,
        clicks=row.clicks,
        unique_clicks=row.unique_clicks,
        discarded_scanner_clicks=row.discarded,
        sends=row.sends,
    )


async def send_engagement(request: Request, who: Identity, id: int) -> Response:
    state = web_state(request)
    report = await engagement.send_report(state.db, state.settings, id)
    if report is None:
        return error(404, "There is no such send.")
    return ok(
        SendEngagementOut(
            send=report.digest_id,
            kind=report.kind,
            started_at=_iso(report.started_at),
            delivered=report.delivered,
            bounced=report.bounced,
            unsubscribed=report.unsubscribed,
            clicks=report.clicks,
            unique_clicks=report.unique_clicks,
            click_rate=report.click_rate,
            discarded_scanner_clicks=report.discarded,
            opens_approximate=report.opens_approximate,
            readers_opened_approximate=report.readers_opened,
            releases=[_release(r) for r in report.releases],
        )
    )


async def release_engagement(
    request: Request, who: Identity, query: ReleaseTotalsQuery
) -> Response:
    totals = await engagement.release_totals(web_state(request).db, limit=query.limit)
    return ok(ReleaseTotalsOut(items=[_release(r) for r in totals]))


async def topic_engagement(request: Request, who: Identity, query: TopicTrendQuery) -> Response:
    state = web_state(request)
    trend = await engagement.topic_trend(state.db, state.now(), weeks=query.weeks)
    return ok(
        TopicTrendOut(
            weeks=[week.isoformat() for week in trend.weeks],
            topics=[TopicWeeks(topic=name, clicks=counts) for name, counts in trend.topics],
        )
    )


OPERATIONS = [
    Operation(
        "GET",
        "/engagement/sends/{id:int}",
        Role.EDITOR,
        "A send's engagement: clicks per release, click rate, opens (approximate)",
        send_engagement,
        SendEngagementOut,
        path_params=("id",),
        errors=(404,),
        tag="engagement",
    ),
    Operation(
        "GET",
        "/engagement/releases",
        Role.EDITOR,
        "Releases by clicks across every send",
        release_engagement,
        ReleaseTotalsOut,
        query=ReleaseTotalsQuery,
        tag="engagement",
    ),
    Operation(
        "GET",
        "/engagement/topics",
        Role.EDITOR,
        "Counted clicks per topic and week",
        topic_engagement,
        TopicTrendOut,
        query=TopicTrendQuery,
        tag="engagement",
    ),
]
