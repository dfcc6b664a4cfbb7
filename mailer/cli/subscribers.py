"""`mailer subscribers`: the subscriber store from the command line."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from mailer import subscribers as store
from mailer.cli import BadInput, run
from mailer.context import AppContext
from mailer.models import Frequency, SubscriberStatus

T = TypeVar("T")

CLI_ORIGIN = store.Origin(actor="cli")


def _run(ctx: click.Context, work: Callable[[AppContext], Awaitable[T]]) -> T:
    return run(ctx, work, refused=(store.SubscriberError,))


@click.group()
def subscribers() -> None:
    """Subscribers: list, show, add, import, export, remove."""


@subscribers.command("add")
@click.argument("email")
@click.option("--name", help="Display name.")
@click.option("--topic", "topics", multiple=True, help="Topic slug or name; repeat. Default: all.")
@click.option(
    "--frequency", type=click.Choice([f.value for f in Frequency]), help="Default: daily."
)
@click.option(
    "--confirmed",
    is_flag=True,
    help="Record consent you obtained elsewhere instead of mailing a confirmation link.",
)
@click.option(
    "--resubscribe",
    is_flag=True,
    help="Allow an address on the suppression list (the person asked to come back).",
)
@click.pass_context
def add_command(
    ctx: click.Context,
    email: str,
    name: str | None,
    topics: tuple[str, ...],
    frequency: str | None,
    confirmed: bool,
    resubscribe: bool,
) -> None:
    """Add a subscriber, or update one.

    Without --confirmed the subscriber is pending and is sent a confirmation link
    (if the mail server does not take it now, it is queued and `mailer serve`
    retries). An address that unsubscribed
    or was erased is refused unless --resubscribe is given.
    """

    async def work(app: AppContext) -> store.AddResult:
        async with app.database() as database:
            return await store.add(
                database,
                app.settings,
                email,
                name=name,
                topics=topics,
                frequency=frequency,
                confirmed=confirmed,
                resubscribe=resubscribe,
                origin=CLI_ORIGIN,
            )

    result = _run(ctx, work)
    subscriber = result.subscriber
    described = {
        "added": f"Added {subscriber.email} ({subscriber.status.value}).",
        "confirmed": f"Confirmed {subscriber.email}.",
        "pending": f"{subscriber.email} is pending again until the person confirms.",
        "updated": f"Updated {subscriber.email} ({subscriber.status.value}).",
        "unchanged": f"{subscriber.email} is already {subscriber.status.value}; nothing changed.",
    }
    click.echo(described.get(result.outcome, f"{subscriber.email}: {result.outcome}."))
    if result.mail is not None:
        click.echo(f"{result.mail.describe().capitalize()}.")


STATUS_HELP = (
    "suppressed: on the suppression list, so mailed nothing (bounced, complained, blocked); "
    "bounced: suppressed after bounces; confirmed: confirmed and mailed."
)


@subscribers.command("list")
@click.option("--status", type=click.Choice(store.SHOWN_STATUSES), help=STATUS_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.pass_context
def list_command(ctx: click.Context, status: str | None, as_json: bool) -> None:
    """List subscribers, oldest first."""

    async def work(app: AppContext) -> list[store.SubscriberView]:
        async with app.database() as database:
            return await store.list_subscribers(database, status=status, settings=app.settings)

    found = _run(ctx, work)
    if as_json:
        click.echo(json.dumps([s.as_dict() for s in found], ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo("No subscribers" + (f" with status {status}." if status else "."))
        return
    topics = {s.id: ",".join(s.topics) or "all" for s in found}
    width = max(len(s.email) for s in found)
    topic_width = max(6, *(len(t) for t in topics.values()))
    lines = [
        f"{'EMAIL':<{width}}  {'STATUS':<12}  {'FREQUENCY':<11}  {'TOPICS':<{topic_width}}  "
        "NAME  SUPPRESSION"
    ]
    for s in found:
        why = store.suppression_text(s)
        lines.append(
            f"{s.email:<{width}}  {s.shown_status:<12}  {s.frequency.value:<11}  "
            f"{topics[s.id]:<{topic_width}}  {s.name or '-'}  {why}".rstrip()
        )
    click.echo("\n".join(lines))
    click.echo(f"{len(found)} subscriber{'s' if len(found) != 1 else ''}.", err=True)


@subscribers.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--status",
    type=click.Choice(store.IMPORT_STATUSES),
    default=SubscriberStatus.PENDING.value,
    show_default=True,
    help="confirmed: you hold their consent; pending: each is mailed a confirmation link.",
)
@click.pass_context
def import_command(ctx: click.Context, file: Path, status: str) -> None:
    """Import subscribers from a CSV file with columns email, name (optional) and
    topics (optional; slugs or names separated by ';'; empty means all topics).

    Invalid rows are reported by line and skipped; the valid rows are imported.
    Addresses on the suppression list are never imported. Exits with 2 when any
    row was invalid.
    """

    async def work(app: AppContext) -> store.ImportReport:
        async with app.database() as database:
            return await store.import_csv(
                database,
                app.settings,
                file,
                status=SubscriberStatus(status),
                origin=CLI_ORIGIN,
            )

    report = _run(ctx, work)
    for line, message in report.errors:
        click.echo(f"{file}:{line}: {message}", err=True)
    for line, message in report.suppressed:
        click.echo(f"{file}:{line}: skipped: {message}", err=True)
    summary = (
        f"Imported {report.imported} new, updated {report.updated}, "
        f"{report.unchanged} already present"
    )
    if report.merged_duplicates:
        summary += f", merged {report.merged_duplicates} duplicate rows"
    if report.suppressed:
        summary += f", skipped {len(report.suppressed)} suppressed"
    if report.errors:
        summary += f", rejected {len(report.errors)} invalid rows"
    click.echo(summary + ".")
    if status == "pending" and report.imported:
        click.echo("New pending subscribers are sent their confirmation link by `mailer serve`.")
    if report.errors:
        sys.exit(2)


@subscribers.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(store.EXPORT_FORMATS), default="csv", show_default=True
)
@click.option("--status", type=click.Choice(store.SHOWN_STATUSES), help=STATUS_HELP)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.pass_context
def export_command(ctx: click.Context, fmt: str, status: str | None, output: Path | None) -> None:
    """Export subscribers as CSV (readable by `import`) or JSON."""

    async def work(app: AppContext) -> int:
        async with app.database() as database:
            return await store.export_subscribers(
                database, app.settings, text, status=status, fmt=fmt, origin=CLI_ORIGIN
            )

    # Written once the export is whole, so a failed one leaves an existing file alone.
    text = io.StringIO()
    count = _run(ctx, work)
    if output:
        output.write_text(text.getvalue(), encoding="utf-8", newline="")
        click.echo(f"Wrote {count} subscribers to {output}.", err=True)
    else:
        sys.stdout.write(text.getvalue())


@subscribers.command("show")
@click.argument("email")
@click.pass_context
def show_command(ctx: click.Context, email: str) -> None:
    """One subscriber, as JSON (the fields of `export --format json`)."""

    async def work(app: AppContext) -> store.SubscriberView | None:
        async with app.database() as database:
            return await store.find_subscriber(database, email, app.settings)

    view = _run(ctx, work)
    if view is None:
        raise BadInput(f"there is no subscriber with the address {email.strip()}")
    click.echo(json.dumps(view.as_dict(), ensure_ascii=False, indent=2))


@subscribers.command("remove")
@click.argument("email")
@click.pass_context
def remove_command(ctx: click.Context, email: str) -> None:
    """Erase a subscriber's personal data and suppress the address.

    Only a keyed hash of the address is kept, so imports and stale lists cannot
    add it back; `add --resubscribe` or a new confirmed signup lifts that.
    """

    async def work(app: AppContext) -> bool:
        async with app.database() as database:
            return await store.remove(database, app.settings, email, origin=CLI_ORIGIN)

    if not _run(ctx, work):
        raise BadInput(f"there is no subscriber with the address {email.strip()}")
    click.echo(f"Removed {email.strip()}: personal data erased, address suppressed.")
