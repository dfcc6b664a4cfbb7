"""Sending from the command line: `digest send|status|pause|resume|cancel` and `worker`."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mailer.cli import (
    OperationalError,
    confirm_at_terminal,
    echo_json,
    run,
    site_zone,
    when,
)
from mailer.context import AppContext
from mailer.db import Database
from mailer.digest import SelectionReport, explain_digest
from mailer.models import Audience, Digest
from mailer.send import (
    Backlog,
    DigestProgress,
    Requester,
    SendError,
    Worker,
    WorkerStats,
    backlog_left,
    recent_sends,
    send_progress,
    set_digest_state,
    start_digest,
)
from mailer.templating import count_of

AUDIENCES = click.Choice([a.value for a in Audience])
# Who changes a send from the command line, in the audit log.
CLI = Requester("cli")


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


@click.command("send")
@click.option("--yes", is_flag=True, help="Send without asking for confirmation.")
@click.option("--dry-run", is_flag=True, help="Count the recipients; send and record nothing.")
@click.option(
    "--frequency",
    type=AUDIENCES,
    default="all",
    show_default=True,
    help="Which subscribers: all, or only those with this frequency.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 32),
    default=_default_workers,
    show_default="CPUs, max 4",
    help="Delivery processes for this send (the rate limit is shared between them).",
)
@click.option("--no-wait", is_flag=True, help="Queue the send and return; workers deliver it.")
@click.pass_context
def digest_send(
    ctx: click.Context, yes: bool, dry_run: bool, frequency: str, workers: int, no_wait: bool
) -> None:
    """Send the digest of new releases to every confirmed subscriber."""
    if dry_run:

        async def explain(app: AppContext) -> SelectionReport:
            async with app.database() as database:
                return await explain_digest(database, app.settings, frequency)

        report = run(ctx, explain)
        would = count_of(report.recipients, "recipient")
        click.echo(f"Would send to {would} (dry run: nothing sent).")
        _echo_reasons(report)
        return
    if not yes:
        confirm_at_terminal("Send the digest now?", "pass --yes to send without asking.")

    async def send(app: AppContext) -> tuple[DigestProgress, str | None, bool, SelectionReport]:
        report = SelectionReport(frequency=frequency, max_age=app.settings.digest.max_age)
        async with app.database() as database:
            digest = await start_digest(
                database, app.settings, frequency=frequency, report=report, requester=CLI
            )
            if digest.recipient_count == 0 or no_wait:
                return await send_progress(database, digest.id), None, False, report
            delivered = await _deliver_with_progress(app, database, digest.id, workers)
            return (*delivered, report)

    progress, unreachable, stopped, report = run(ctx, send)
    if progress.recipients == 0:
        click.echo("Nothing to send:")
        _echo_reasons(report)
        return
    if no_wait:
        recipients = count_of(progress.recipients, "recipient")
        click.echo(f"Digest {progress.id} queued for {recipients}.")
        _echo_reasons(report)
        return
    _echo_reasons(report)
    click.echo(
        f"Digest {progress.id}: sent {progress.sent} of {progress.recipients}"
        f", failed {progress.failed}, deferred {progress.deferred}"
        f", cancelled {progress.cancelled}."
    )
    if stopped:
        left = progress.recipients - progress.done
        raise OperationalError(
            f"stopped by a signal with {left} messages of digest {progress.id} left "
            "queued; `mailer worker` (or `mailer serve`) finishes the send"
        )
    if progress.status == "paused":
        raise OperationalError(f"digest {progress.id} paused: {progress.pause_reason}")
    if progress.deferred:
        retry = "`mailer serve` or `mailer worker` retries them on schedule"
        if unreachable and not progress.sent:
            raise OperationalError(f"SMTP server unreachable ({unreachable}); {retry}")
        click.echo(f"{progress.deferred} deferred by the server; {retry}.")


def _echo_reasons(report: SelectionReport) -> None:
    """Why a send reaches no more readers than it does, one reason a line."""
    for reason in report.reasons():
        click.echo(f"  {reason}")


async def _deliver_with_progress(
    app: AppContext, database: Database, digest_id: int, workers: int
) -> tuple[DigestProgress, str | None, bool]:
    """Deliver until nothing is pending or due; returns the progress, the last
    reason the server could not be reached (if it could not), and whether a
    signal stopped the send. A signal reaches every process of the send."""
    settings = app.settings
    rate = settings.smtp.rate_limit / workers if settings.smtp.rate_limit else 0.0
    share = math.ceil(settings.smtp.per_domain_connections / workers)
    helpers = [_spawn_worker(app, digest_id, rate, share) for _ in range(workers - 1)]
    worker = Worker(
        database,
        settings,
        digest_id=digest_id,
        rate_limit=rate,
        domain_share=share,
        poll_interval=0.5,
    )
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]digest {task.fields[digest]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn(
            "sent {task.fields[sent]} failed {task.fields[failed]} "
            "deferred {task.fields[deferred]} · {task.fields[rate]}/s"
        ),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(
        *columns, console=console, transient=False, disable=not console.is_terminal
    ) as bar:
        task = bar.add_task(
            "send", total=None, digest=digest_id, sent=0, failed=0, deferred=0, rate=0
        )
        work = asyncio.create_task(worker.run(until_empty=True))
        signalled: list[float] = []

        def stop_all() -> None:
            signalled.append(time.monotonic())
            worker.stop()
            for helper in helpers:
                if helper.poll() is None:
                    helper.send_signal(signal.SIGTERM)

        restore = _on_stop_signals(stop_all)
        try:
            while True:
                progress = await send_progress(database, digest_id)
                rate_now = progress.sent / max(time.monotonic() - started, 1e-6)
                bar.update(
                    task,
                    total=progress.recipients,
                    completed=progress.done,
                    sent=progress.sent,
                    failed=progress.failed,
                    deferred=progress.deferred,
                    rate=f"{rate_now:.0f}",
                )
                if work.done() and all(helper.poll() is not None for helper in helpers):
                    break
                if signalled and time.monotonic() - signalled[0] > HELPER_STOP_GRACE:
                    _kill_stragglers(helpers)
                await asyncio.sleep(0.1 if signalled else 0.5)
            await work
        finally:
            restore()
            if not signalled:
                # An error here: the helpers must not outlive the command.
                for helper in helpers:
                    if helper.poll() is None:
                        helper.send_signal(signal.SIGTERM)
            _kill_stragglers(helpers, after=HELPER_STOP_GRACE)
    progress = await send_progress(database, digest_id)
    return progress, worker.last_connection_error, bool(signalled)


# A helper asked to stop finishes the message on the wire; one that has not
# exited by then is killed (its journal keeps what the server accepted).
HELPER_STOP_GRACE = 4.0


def _kill_stragglers(helpers: list[subprocess.Popen[bytes]], after: float = 0.0) -> None:
    deadline = time.monotonic() + after
    for helper in helpers:
        try:
            helper.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()


def _spawn_worker(
    app: AppContext, digest_id: int, rate: float, share: int
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mailer"]
    config_path = app.settings.config_path
    if config_path is not None and Path(config_path).exists():
        command += ["--config", str(config_path)]
    command += [
        "worker",
        "--until-empty",
        "--digest",
        str(digest_id),
        "--rate-limit",
        str(rate),
        "--domain-share",
        str(share),
        "--quiet",
    ]
    return subprocess.Popen(command)  # noqa: S603 - our own interpreter and module


def _on_stop_signals(stop: Callable[[], None]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)

    def restore() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    return restore


@click.command("status")
@click.argument("digest_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per send per line.")
@click.pass_context
def digest_status(ctx: click.Context, digest_id: int | None, as_json: bool) -> None:
    """Show one send's progress, or the most recent sends."""

    async def work(app: AppContext) -> list[DigestProgress]:
        async with app.database() as database:
            if digest_id is not None:
                return [await send_progress(database, digest_id)]
            return await recent_sends(database, limit=10)

    rows = run(ctx, work, refused=(SendError,))
    if as_json:
        for p in rows:
            echo_json(p.as_json())
        return
    if not rows:
        click.echo("No digests have been sent yet.")
        return
    table = Table(
        "id",
        "status",
        "recipients",
        "sent",
        "deferred",
        "failed",
        "bounced",
        "cancelled",
        f"started ({site_zone(ctx)})",
        f"finished ({site_zone(ctx)})",
    )
    for p in rows:
        table.add_row(
            str(p.id),
            p.status + (f" ({p.pause_reason})" if p.pause_reason else ""),
            str(p.recipients),
            str(p.sent),
            str(p.deferred),
            str(p.failed),
            str(p.bounced),
            str(p.cancelled),
            when(ctx, p.started_at, ""),
            when(ctx, p.finished_at, ""),
        )
    Console(width=140).print(table)


def _state_command(action: str, help_text: str) -> click.Command:
    @click.command(action, help=help_text)
    @click.argument("digest_id", type=int)
    @click.pass_context
    def command(ctx: click.Context, digest_id: int) -> None:
        async def work(app: AppContext) -> Digest:
            async with app.database() as database:
                return await set_digest_state(database, digest_id, action, requester=CLI)

        digest = run(ctx, work, refused=(SendError,))
        click.echo(f"Digest {digest.id} is now {digest.status.value}.")

    return command


digest_pause = _state_command("pause", "Pause a send; workers stop claiming its messages.")
digest_resume = _state_command("resume", "Resume a paused send.")
digest_cancel = _state_command("cancel", "Cancel a send; unsent messages are withdrawn.")


@click.command("worker")
@click.option(
    "--until-empty",
    is_flag=True,
    help="Exit once nothing is pending or due now; prints what is left and when it is due.",
)
@click.option(
    "--until-done",
    is_flag=True,
    help="Wait, retries included, until the sends are finished (at most the retry window: "
    "smtp.retry_for + smtp.retry_max_interval); exit 1 if something is still open then.",
)
@click.option("--digest", "digest_id", type=int, help="Deliver only this send.")
@click.option("--rate-limit", type=float, help="Messages per second (default: smtp.rate_limit).")
@click.option(
    "--domain-share",
    type=click.IntRange(1, 200),
    help="At most this many of a domain's smtp.per_domain_connections in this process "
    "(default: all; the limit holds for the machine's processes together either way).",
)
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
@click.pass_context
def worker(
    ctx: click.Context,
    until_empty: bool,
    until_done: bool,
    digest_id: int | None,
    rate_limit: float | None,
    domain_share: int | None,
    quiet: bool,
) -> None:
    """Run delivery workers only (no web app, no scheduler)."""

    async def work(app: AppContext) -> tuple[WorkerStats, Backlog, bool]:
        async with app.database() as database:
            delivery = Worker(
                database,
                app.settings,
                digest_id=digest_id,
                rate_limit=rate_limit,
                domain_share=domain_share,
            )
            signalled: list[bool] = []

            def stop() -> None:
                signalled.append(True)
                delivery.stop()

            restore = _on_stop_signals(stop)
            try:
                stats = await delivery.run(until_empty=until_empty, until_done=until_done)
            finally:
                restore()
            return stats, await backlog_left(database, digest_id), bool(signalled)

    stats, backlog, stopped = run(ctx, work)
    if not quiet:
        click.echo(
            f"Worker done: sent {stats.sent}, deferred {stats.deferred}, failed {stats.failed}."
        )
    if until_done and backlog.open and not stopped:
        raise OperationalError(f"not finished within the retry window. {backlog.describe()}")
    if not quiet:
        click.echo(backlog.describe())


# Attached to the `digest` group (mailer/cli/digest.py) in mailer/cli/commands.py.
SEND_COMMANDS = [digest_send, digest_status, digest_pause, digest_resume, digest_cancel]
