"""What `mailer serve` runs besides the web app: the scheduler's jobs and a delivery worker.

Jobs (APScheduler 3, asyncio scheduler, explicit ids, ``replace_existing``):

- ``collect:<source>``   every source at its interval; ``max_instances=1`` so one
                          source never runs twice at once; after a run that found
                          new releases, subscribers who chose "immediately" get them.
- ``digest:<frequency>`` the daily and weekly digests, on their cron schedules.
- ``sources:reconcile``  picks up sources added, changed or disabled in the admin.
- ``digests:due``        starts sends scheduled from the admin or the API.
- ``confirmations:resend`` retries confirmation mails and notices that could not be sent.
- ``bounces:poll``       reads the bounce mailbox, when one is configured.
- ``deliveries:prune``   deletes the deliveries of sends finished longer ago than
                          ``retention.deliveries``, keeping their counts.
- ``leader:refresh``     keeps the leadership lock (mailer.locks).

Every instance runs the scheduler, but only the leader's jobs do anything, so two
``mailer serve`` processes never start the same digest twice. Delivery is not
leader-only: every instance runs a worker, and they share the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from mailer.arrivals import releases_arrived
from mailer.bounces import poll_mailboxes
from mailer.collect import collect_source
from mailer.config import Settings
from mailer.context import AppContext
from mailer.db import Database
from mailer.locks import Leadership
from mailer.metrics import record_collection
from mailer.models import Source, utcnow
from mailer.retention import prune_deliveries
from mailer.send import Worker, new_worker_id, start_digest, start_due_digests
from mailer.subscribers import retry_queued_mail

log = logging.getLogger(__name__)

LEADER_REFRESH = timedelta(seconds=15)
RECONCILE_EVERY = timedelta(minutes=1)
RESEND_EVERY = timedelta(minutes=5)
# Deliveries of finished sends older than retention.deliveries (mailer.retention).
PRUNE_EVERY = timedelta(hours=6)
# Sends scheduled in the admin or the API start at most this late.
DUE_SENDS_EVERY = timedelta(seconds=30)
STOP_TIMEOUT = timedelta(seconds=60)


@dataclass
class Background:
    scheduler: AsyncIOScheduler
    leadership: Leadership
    worker: Worker | None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    stopping: bool = False

    async def stop(self) -> None:
        """Stop taking new work, let messages on the wire finish and be recorded."""
        self.stopping = True
        self.scheduler.shutdown(wait=False)
        if self.worker is not None:
            self.worker.stop()
        _, running = await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT.total_seconds())
        for task in running:
            # Only a worker stuck past the SMTP timeout gets here; its claims are
            # recovered from the journal on the next start.
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.leadership.release()


def _leader_only(
    leadership: Leadership, job: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    async def run(*args: Any) -> Any:
        if not leadership.is_leader:
            return None
        try:
            return await job(*args)
        except Exception:
            # A failing job must not kill the scheduler; it runs again next time.
            log.exception("scheduled job %s failed", getattr(job, "__name__", job))
            return None

    # APScheduler names a job after its function's qualified name in every log line.
    run.__name__ = run.__qualname__ = getattr(job, "__name__", "job")
    return run


async def collect_and_notify(database: Database, settings: Settings, source_name: str) -> None:
    result = await collect_source(database, settings, source_name)
    record_collection(source_name, ok=result.ok, skipped=result.skipped)
    await releases_arrived(database, settings, result.new_release_ids)


async def scheduled_digest(database: Database, settings: Settings, frequency: str) -> None:
    digest = await start_digest(
        database, settings, frequency=frequency, kind="scheduled", created_by="scheduler"
    )
    log.info("%s digest %d queued for %d recipients", frequency, digest.id, digest.recipient_count)


async def retry_mail(database: Database, settings: Settings) -> None:
    await retry_queued_mail(database, settings)


async def poll_bounces(database: Database, settings: Settings) -> None:
    await poll_mailboxes(database, settings)


async def reconcile_sources(
    scheduler: AsyncIOScheduler, leadership: Leadership, database: Database, settings: Settings
) -> None:
    """One job per enabled source, at its interval; jobs of removed sources go."""
    async with database.session() as session:
        sources = (await session.scalars(select(Source).where(Source.enabled))).all()
    wanted = {f"collect:{s.name}": s for s in sources}
    for job in scheduler.get_jobs():
        if job.id.startswith("collect:") and job.id not in wanted:
            job.remove()
    for job_id, source in wanted.items():
        interval = max(source.interval_seconds, 10)
        existing = scheduler.get_job(job_id)
        if existing is not None and getattr(existing.trigger, "interval", None) == timedelta(
            seconds=interval
        ):
            continue
        scheduler.add_job(
            _leader_only(leadership, collect_and_notify),
            IntervalTrigger(seconds=interval),
            args=[database, settings, source.name],
            id=job_id,
            name=f"collect {source.name}",
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            # A run missed while the process was busy or asleep is still worth doing
            # within half an interval; later than that the next run is as good.
            misfire_grace_time=max(interval // 2, 30),
            next_run_time=utcnow() if existing is None else existing.next_run_time,
        )


async def start_background(
    app: AppContext, database: Database, *, deliver: bool = True
) -> Background:
    settings = app.settings
    holder = new_worker_id()
    leadership = Leadership(database, "scheduler", holder)
    try:
        await leadership.refresh()
    except Exception:
        log.exception("could not take the scheduler lock; retrying")
    scheduler = AsyncIOScheduler(timezone="UTC")
    # One line per job run (the lock refresh runs every 15 s) drowns the log; the
    # jobs log what they do themselves, and failures still come through.
    logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)

    async def refresh_leadership() -> None:
        try:
            was = leadership.is_leader
            now = await leadership.refresh()
            if now and not was:
                log.info("this process now runs the scheduled jobs (%s)", holder)
        except Exception:
            log.exception("scheduler lock refresh failed")

    common: dict[str, Any] = {"replace_existing": True, "max_instances": 1, "coalesce": True}
    scheduler.add_job(
        refresh_leadership,
        IntervalTrigger(seconds=LEADER_REFRESH.total_seconds()),
        id="leader:refresh",
        **common,
    )
    scheduler.add_job(
        _leader_only(leadership, reconcile_sources),
        IntervalTrigger(seconds=RECONCILE_EVERY.total_seconds()),
        args=[scheduler, leadership, database, settings],
        id="sources:reconcile",
        next_run_time=utcnow(),
        **common,
    )
    for schedule in settings.digest.schedules:
        scheduler.add_job(
            _leader_only(leadership, scheduled_digest),
            CronTrigger.from_crontab(schedule.cron, timezone=schedule.timezone),
            args=[database, settings, schedule.frequency],
            id=f"digest:{schedule.frequency}",
            misfire_grace_time=3600,
            **common,
        )
    scheduler.add_job(
        _leader_only(leadership, start_due_digests),
        IntervalTrigger(seconds=DUE_SENDS_EVERY.total_seconds()),
        args=[database, settings],
        id="digests:due",
        **common,
    )
    scheduler.add_job(
        _leader_only(leadership, retry_mail),
        IntervalTrigger(seconds=RESEND_EVERY.total_seconds()),
        args=[database, settings],
        id="confirmations:resend",
        **common,
    )
    scheduler.add_job(
        _leader_only(leadership, prune_deliveries),
        IntervalTrigger(seconds=PRUNE_EVERY.total_seconds()),
        args=[database, settings],
        id="deliveries:prune",
        **common,
    )
    if settings.bounces.enabled:
        scheduler.add_job(
            _leader_only(leadership, poll_bounces),
            IntervalTrigger(seconds=settings.bounces.poll_interval.total_seconds()),
            args=[database, settings],
            id="bounces:poll",
            **common,
        )
    scheduler.start()
    background = Background(scheduler, leadership, None)
    if deliver:
        background.tasks.append(
            asyncio.create_task(_supervise_delivery(background, database, settings))
        )
    return background


async def _supervise_delivery(
    background: Background, database: Database, settings: Settings
) -> None:
    """Keep a delivery worker running; after a crash (database gone, say) start another."""
    while not background.stopping:
        worker = Worker(database, settings)
        background.worker = worker
        try:
            await worker.run()
        except Exception:
            log.exception("delivery worker failed; restarting in 5 seconds")
            await asyncio.sleep(5)
