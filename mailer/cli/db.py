from __future__ import annotations

import click

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
    """Create the schema or bring it up to date."""

    async def work(app: AppContext) -> tuple[str | None, str]:
        async with app.database(prepare=False) as database:
            return await upgrade(database, revision)

    before, after = run(ctx, work)
    if before == after:
        click.echo(f"Schema is current ({after}).")
    else:
        click.echo(f"Schema upgraded from {before or 'empty'} to {after}.")


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
