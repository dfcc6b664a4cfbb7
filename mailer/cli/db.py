from __future__ import annotations

import click

from mailer.catalog import sync_catalog
from mailer.cli import run
from mailer.context import AppContext
from mailer.migrate import current_revision, head_revision, upgrade


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def db_upgrade(ctx: click.Context, revision: str) -> None:
    """Create the schema or bring it up to date, then bring the topics and sources
    tables in step with the configuration file."""

    async def work(app: AppContext) -> tuple[str | None, str, list[str]]:
        async with app.database(prepare=False) as database:
            before, after = await upgrade(database, revision)
            changes = await sync_catalog(database, app.settings) if after == head_revision() else []
            return before, after, changes

    before, after, changes = run(ctx, work)
    if before == after:
        click.echo(f"Schema is current ({after}).")
    else:
        click.echo(f"Schema upgraded from {before or 'empty'} to {after}.")
    for change in changes:
        click.echo(f"Configuration: {change}.")


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show the schema revision and whether it is current."""

    async def work(app: AppContext) -> str | None:
        async with app.database(prepare=False) as database:
            return await current_revision(database)

    current, head = run(ctx, work), head_revision()
    state = "current" if current == head else "out of date: run `mailer db upgrade`"
    click.echo(f"Schema revision {current or 'none'} (latest {head}): {state}.")
