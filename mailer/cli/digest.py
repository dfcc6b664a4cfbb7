"""`mailer digest`: the digest email. This module creates the group and its
``preview`` command; the sending commands (send, status, pause, resume, cancel)
are attached from mailer.cli.send."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mailer.cli import run
from mailer.context import AppContext
from mailer.digest import PreviewError
from mailer.message import MessageError
from mailer.preview import PreviewResult, preview_now


@click.group()
def digest() -> None:
    """The digest email: preview, send and follow a send."""


@digest.command("preview")
@click.option(
    "--subscriber",
    "subscriber_email",
    metavar="EMAIL",
    help="Whose digest to show (default: a sample with the newest releases).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the .eml and .html files (default: <data_dir>/preview).",
)
@click.pass_context
def digest_preview(ctx: click.Context, subscriber_email: str | None, out_dir: Path | None) -> None:
    """Write the exact message a subscriber would receive now, as .eml and .html.

    Nothing is sent and nothing is marked as sent.
    """

    async def work(app: AppContext) -> PreviewResult:
        async with app.database() as database:
            return await preview_now(database, app.settings, subscriber_email)

    result = run(ctx, work, refused=(PreviewError, MessageError))
    digest, selection = result.digest, result.selection
    if digest is None:
        who = subscriber_email or "the sample reader"
        click.echo(f"No digest would be sent to {who} now:")
        for reason in result.reasons():
            click.echo(f"  {reason}")
        return
    app: AppContext = ctx.find_object(AppContext)
    folder = out_dir or app.settings.data_path / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "digest-" + (re.sub(r"[^a-z0-9]+", "-", digest.recipient.lower()).strip("-") or "sample")
    eml_path, html_path = folder / f"{stem}.eml", folder / f"{stem}.html"
    eml_path.write_bytes(digest.message.data)
    html_path.write_text(digest.html, encoding="utf-8")
    click.echo(f"To:       {digest.recipient}")
    click.echo(f"Subject:  {digest.subject}")
    click.echo(f"Releases: {digest.release_count}")
    click.echo(f"Size:     {len(digest.message.data):,} bytes")
    click.echo(f"Wrote {eml_path}")
    click.echo(f"Wrote {html_path}")
    if subscriber_email is None:
        # The sample shows the newest releases; a real send follows the rules.
        click.echo(f"A send now would reach {selection.summary()}")
    else:
        for reason in selection.reasons():
            click.echo(f"  {reason}")
