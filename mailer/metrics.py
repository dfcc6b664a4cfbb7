"""Prometheus metrics for /metrics.

Two kinds:

* Read from the database at each scrape (so they are right whichever process did
  the work, and survive restarts): deliveries by status, queue depth, send rate
  over the last minute, subscribers by status, signups, sources by health, clicks
  (counted and discarded), unique clicks and opens (approximate).
* Counted in this process (prometheus-client counters): collection runs and
  failures per source, as the scheduler's jobs and the admin's "collect now" run
  them in ``mailer serve``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.collect.store import source_release_counts
from mailer.db import Database
from mailer.engagement import engagement_metrics
from mailer.models import (
    ConsentEvent,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Source,
    SourceKind,
    Subscriber,
    utcnow,
)
from mailer.retention import unsent_counts

RATE_WINDOW = timedelta(minutes=1)
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
COLLECTION_RUNS = Counter(
    "mailer_collection_runs",
    "Collection runs of a source in this process, by outcome (ok, failed, skipped).",
    ["source", "outcome"],
    registry=PROCESS_REGISTRY,
)


def record_collection(source: str, *, ok: bool, skipped: bool = False) -> None:
    """Count one collection run (called where runs are started)."""
    outcome = "skipped" if skipped else ("ok" if ok else "failed")
    COLLECTION_RUNS.labels(source=source, outcome=outcome).inc()


class _Snapshot(Collector):
    """Database figures read once per scrape, handed to prometheus-client to format."""

    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


async def _outbox_rows(session: AsyncSession) -> dict[DeliveryStatus, int]:
    """Outbox rows by status without counting the sent ones row by row: they are
    the kept sends' recipients less the unsent rows (see retention.send_counts)."""
    rows: dict[DeliveryStatus, int] = {}
    for mine in (await unsent_counts(session)).values():
        for status, number in mine.items():
            rows[DeliveryStatus(status)] = rows.get(DeliveryStatus(status), 0) + number
    kept = await session.scalar(
        select(func.coalesce(func.sum(Digest.recipient_count), 0)).where(
            Digest.delivery_counts.is_(None)
        )
    )
    rows[DeliveryStatus.SENT] = max(0, int(kept or 0) - sum(rows.values()))
    return rows


async def database_metrics(database: Database, now: datetime | None = None) -> list[Metric]:
    now = now or utcnow()
    async with database.session() as session:
        deliveries = await _outbox_rows(session)
        bounced = await session.scalar(select(func.count()).where(Delivery.bounced)) or 0
        recent = (
            await session.scalar(
                select(func.count()).where(
                    Delivery.status == DeliveryStatus.SENT, Delivery.sent_at >= now - RATE_WINDOW
                )
            )
            or 0
        )
        subscribers = dict(
            (
                await session.execute(
                    select(Subscriber.status, func.count()).group_by(Subscriber.status)
                )
            ).all()
        )
        signups = (
            await session.scalar(select(func.count()).where(ConsentEvent.action == "signup")) or 0
        )
        confirmations = (
            await session.scalar(select(func.count()).where(ConsentEvent.action == "confirm")) or 0
        )
        digests = dict(
            (
                await session.execute(
                    select(Digest.status, func.count())
                    .where(Digest.status.in_([DigestStatus.SENDING, DigestStatus.PAUSED]))
                    .group_by(Digest.status)
                )
            ).all()
        )
        sources = (
            await session.execute(
                select(
                    Source.name,
                    Source.status,
                    Source.consecutive_failures,
                    Source.last_success_at,
                    Source.id,
                ).where(Source.kind.in_(SourceKind.collected()))
            )
        ).all()
        release_counts = await source_release_counts(session)
        engagement = await engagement_metrics(session)

    by_status = GaugeMetricFamily(
        "mailer_deliveries",
        "Outbox rows by status (sent, failed, deferred, ...).",
        labels=["status"],
    )
    for status in DeliveryStatus:
        by_status.add_metric([status.value], deliveries.get(status, 0))
    queue = GaugeMetricFamily(
        "mailer_queue_depth", "Messages waiting to be sent (pending, sending or deferred)."
    )
    queue.add_metric(
        [],
        sum(
            deliveries.get(s, 0)
            for s in (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)
        ),
    )
    bounces = CounterMetricFamily("mailer_bounced_deliveries", "Sent messages that bounced.")
    bounces.add_metric([], bounced)
    rate = GaugeMetricFamily(
        "mailer_send_rate_per_second", "Messages accepted by the SMTP server, last minute."
    )
    rate.add_metric([], recent / RATE_WINDOW.total_seconds())
    people = GaugeMetricFamily("mailer_subscribers", "Subscribers by status.", labels=["status"])
    for status, number in subscribers.items():
        people.add_metric([status.value], number)
    signup_total = CounterMetricFamily("mailer_signups", "Signup form submissions ever.")
    signup_total.add_metric([], signups)
    confirm_total = CounterMetricFamily("mailer_confirmations", "Double opt-in confirmations ever.")
    confirm_total.add_metric([], confirmations)
    active = GaugeMetricFamily("mailer_active_sends", "Sends in progress.", labels=["status"])
    for status in (DigestStatus.SENDING, DigestStatus.PAUSED):
        active.add_metric([status.value], digests.get(status, 0))
    failing = GaugeMetricFamily(
        "mailer_source_consecutive_failures",
        "Failed collection runs in a row, per source.",
        labels=["source", "status"],
    )
    success = GaugeMetricFamily(
        "mailer_source_last_success_timestamp_seconds",
        "When a source was last read.",
        labels=["source"],
    )
    releases = CounterMetricFamily(
        "mailer_source_releases", "Releases a source has brought in.", labels=["source"]
    )
    for name, status, failures, last_success, source_id in sources:
        failing.add_metric([name, status.value], failures)
        if last_success is not None:
            success.add_metric([name], last_success.timestamp())
        releases.add_metric([name], release_counts.get(source_id, 0))
    return [
        by_status,
        queue,
        bounces,
        rate,
        people,
        signup_total,
        confirm_total,
        active,
        failing,
        success,
        releases,
        *engagement,
    ]


async def exposition(database: Database, now: datetime | None = None) -> bytes:
    """The text format Prometheus scrapes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await database_metrics(database, now)))
    return generate_latest(registry) + generate_latest(PROCESS_REGISTRY)
