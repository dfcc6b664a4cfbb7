"""The dashboard: subscribers by status, signups per day, how each recent send went,
and source health, as charts and tables.

Charts are SVG drawn on the server (geometry computed here, markup in the
template): no chart library, nothing loaded from elsewhere, nothing for the strict
Content-Security-Policy to block, and they print and work without JavaScript.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from mailer.accounts import Role
from mailer.overview import overview
from mailer.send import DigestProgress
from mailer.web.admin.auth import requires
from mailer.web.admin.common import page
from mailer.web.state import web_state

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


# (DigestProgress field, css class, label)
SEGMENTS = (
    ("sent", "seg-sent", "sent"),
    ("failed", "seg-failed", "failed"),
    ("deferred", "seg-deferred", "deferred"),
    ("pending", "seg-open", "open"),
)


def digest_chart(digests: list[DigestProgress]) -> Chart:
    """Stacked bars per send (oldest left): sent, failed, deferred, still waiting."""
    ordered = list(reversed(digests))
    plot_height, baseline, grid, ceiling = _frame(max((d.recipients for d in ordered), default=0))
    slot = (CHART_WIDTH - MARGIN_LEFT) / max(len(ordered), 1)
    bars = []
    for number, digest in enumerate(ordered):
        bottom = baseline
        for field, css, name in SEGMENTS:
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
                    label=f"Send {digest.id} ({digest.kind}): {name}",
                    value=value,
                    css=css,
                    tick=f"#{digest.id}" if field == "sent" or bottom == baseline - height else "",
                )
            )
    return Chart(CHART_WIDTH, CHART_HEIGHT, bars, grid, baseline, "Recent sends")


@requires(Role.EDITOR)
async def dashboard(request: Request) -> Response:
    state = web_state(request)
    seen = await overview(state.db, signup_days=SIGNUP_DAYS, send_count=12, now=state.now())
    status_chart = bar_chart(
        [(name, count.value, f"bar bar-{name}") for name, count in seen.by_status.items()],
        "Subscribers by status",
    )
    signup_chart = bar_chart(
        [(d.strftime("%d %b"), n, "bar") for d, n in seen.signups],
        f"Signups per day, last {SIGNUP_DAYS} days",
        tick_every=7,
    )
    return page(
        request,
        "dashboard.html",
        {
            "by_status": seen.by_status,
            "status_chart": status_chart,
            "signup_chart": signup_chart,
            "signups_total": seen.signups_total,
            "digests": seen.sends,
            "digest_chart": digest_chart(seen.sends),
            "sources": [h.source for h in seen.sources],
            "release_counts": {h.source.id: h.releases for h in seen.sources},
            "failing": seen.failing_sources,
        },
    )


async def to_dashboard(request: Request) -> Response:
    """/admin without the slash."""
    return RedirectResponse("/admin/", status_code=308)
