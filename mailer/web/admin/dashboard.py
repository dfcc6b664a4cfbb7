"""The dashboard: subscribers by status, signups per day, how each recent send went,
and source health, as charts and tables.

Charts are SVG drawn on the server (geometry computed here, markup in the
template): no chart library, nothing loaded from elsewhere, nothing for the strict
Content-Security-Policy to block, and they print and work without JavaScript.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailer import subscribers as store
from mailer.accounts import Role
from mailer.collect.store import source_release_counts
from mailer.models import ConsentEvent, Source, SourceStatus
from mailer.web.admin.auth import requires
from mailer.web.admin.common import page
from mailer.web.admin.digests import DigestStats, recent_digests
from mailer.web.app import web_state

SIGNUP_DAYS = 30
CHART_WIDTH = 640
CHART_HEIGHT = 200
MARGIN_LEFT = 40
MARGIN_BOTTOM = 28
MARGIN_TOP = 12


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    css: str
    # Short text under the bar (every few bars on a long series).
    tick: str = ""


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    # (y position, label) for horizontal guides.
    grid: list[tuple[float, str]]
    baseline: float
    title: str


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10ⁿ at or above ``value`` (so guides land on round numbers)."""
    if value <= 1:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _frame(top_value: int) -> tuple[float, float, list[tuple[float, str]], int]:
    ceiling = _nice_ceiling(top_value)
    plot_height = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    baseline = CHART_HEIGHT - MARGIN_BOTTOM
    grid = [
        (baseline - plot_height * fraction, f"{round(ceiling * fraction):,}")
        for fraction in ((0.0, 1.0) if ceiling < 2 else (0.0, 0.5, 1.0))
    ]
    return plot_height, baseline, grid, ceiling


def bar_chart(items: list[tuple[str, int, str]], title: str, *, tick_every: int = 1) -> Chart:
    """One bar per (label, value, css class)."""
    plot_height, baseline, grid, ceiling = _frame(max((v for _, v, _ in items), default=0))
    slot = (CHART_WIDTH - MARGIN_LEFT) / max(len(items), 1)
    bars = []
    for number, (label, value, css) in enumerate(items):
        height = plot_height * value / ceiling
        bars.append(
            Bar(
                x=round(MARGIN_LEFT + number * slot + slot * 0.15, 2),
                y=round(baseline - height, 2),
                width=round(slot * 0.7, 2),
                height=round(height, 2),
                label=label,
                value=value,
                css=css,
                tick=label if number % tick_every == 0 else "",
            )
        )
    return Chart(CHART_WIDTH, CHART_HEIGHT, bars, grid, baseline, title)


SEGMENTS = (
    ("sent", "seg-sent"),
    ("failed", "seg-failed"),
    ("deferred", "seg-deferred"),
    ("open", "seg-open"),
)


def digest_chart(digests: list[DigestStats]) -> Chart:
    """Stacked bars per send (oldest left): sent, failed, deferred, still waiting."""
    ordered = list(reversed(digests))
    plot_height, baseline, grid, ceiling = _frame(max((d.recipients for d in ordered), default=0))
    slot = (CHART_WIDTH - MARGIN_LEFT) / max(len(ordered), 1)
    bars = []
    for number, digest in enumerate(ordered):
        bottom = baseline
        for field, css in SEGMENTS:
            value = int(getattr(digest, field))
            if not value:
                continue
            height = plot_height * value / ceiling
            bottom -= height
            bars.append(
                Bar(
                    x=round(MARGIN_LEFT + number * slot + slot * 0.15, 2),
                    y=round(bottom, 2),
                    width=round(slot * 0.7, 2),
                    height=round(height, 2),
                    label=f"Send {digest.id} ({digest.kind}): {field}",
                    value=value,
                    css=css,
                    tick=f"#{digest.id}" if field == "sent" or bottom == baseline - height else "",
                )
            )
    return Chart(CHART_WIDTH, CHART_HEIGHT, bars, grid, baseline, "Recent sends")


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


async def signups_per_day(request: Request, days: int = SIGNUP_DAYS) -> list[tuple[date, int]]:
    state = web_state(request)
    today = state.now().date()
    first = today - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=state.now().tzinfo)
    day = func.date(ConsentEvent.at)
    async with state.db.session() as session:
        rows = await session.execute(
            select(day, func.count())
            .where(ConsentEvent.action == "signup", ConsentEvent.at >= since)
            .group_by(day)
        )
        counts = {_day(d): n for d, n in rows}
    return [
        (first + timedelta(days=i), counts.get(first + timedelta(days=i), 0)) for i in range(days)
    ]


@requires(Role.EDITOR)
async def dashboard(request: Request) -> Response:
    state = web_state(request)
    by_status = await store.count_by_status(state.db)
    signups = await signups_per_day(request)
    async with state.db.session() as session:
        digests = await recent_digests(session, limit=12)
        # Every source, hand-added releases' labels included: one count everywhere.
        sources = (await session.scalars(select(Source).order_by(Source.name))).all()
        release_counts = await source_release_counts(session)
    status_chart = bar_chart(
        [(name, count, f"bar bar-{name}") for name, count in by_status.items()],
        "Subscribers by status",
    )
    signup_chart = bar_chart(
        [(d.strftime("%d %b"), n, "bar") for d, n in signups],
        f"Signups per day, last {SIGNUP_DAYS} days",
        tick_every=7,
    )
    failing = [s for s in sources if s.status is SourceStatus.FAILING]
    return page(
        request,
        "dashboard.html",
        {
            "by_status": by_status,
            "status_chart": status_chart,
            "signup_chart": signup_chart,
            "signups_total": sum(n for _, n in signups),
            "digests": digests,
            "digest_chart": digest_chart(digests),
            "sources": sources,
            "release_counts": release_counts,
            "failing": failing,
        },
    )


def routes() -> list[Route]:
    return [Route("/", dashboard, methods=["GET"])]
