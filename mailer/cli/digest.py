"""`mailer digest`: the digest email. This module creates the group and its
``preview`` command; the sending commands (send, status, pause, resume, cancel)
are attached from mailer.cli.send."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mailer.cli import BadInput, run
from mailer.context import AppContext
from mailer.digest import (
    DigestPreview,
    PreviewError,
    SelectionReport,
    explain_digest,
    preview_digest,
)
from mailer.message import MessageError


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

    async def work(app: AppContext) -> tuple[DigestPreview | None, SelectionReport | None]:
        async with app.database() as database:
            try:
                preview = await preview_digest(database, app.settings, subscriber_email)
                if preview is not None:
                    return preview, preview.selection
                explained = await explain_digest(
                    database, app.settings, subscriber_email=subscriber_email
                )
                return None, explained
            except (PreviewError, MessageError) as exc:
                raise BadInput(str(exc)) from None

    preview, selection = run(ctx, work)
    who = subscriber_email or "the sample reader"
    if preview is None:
        click.echo(f"No digest would be sent to {who} now:")
        for reason in selection.reasons() if selection else ():
            click.echo(f"  {reason}")
        return
    app: AppContext = ctx.find_object(AppContext)
    folder = out_dir or app.settings.data_path / "preview"
    folder.mkdir(parents=True, exist_ok=True)
    stem = "digest-" + (
        re.sub(r"[^a-z0-9]+", "-", preview.recipient.lower()).strip("-") or "sample"
    )
    eml_path, html_path = folder / f"{stem}.eml", folder / f"{stem}.html"
    eml_path.write_bytes(preview.message.data)
    html_path.write_text(preview.html, encoding="utf-8")
    click.echo(f"To:       {preview.recipient}")
    click.echo(f"Subject:  {preview.subject}")
    click.echo(f"Releases: {preview.release_count}")
    click.echo(f"Size:     {len(preview.message.data):,} bytes")
    click.echo(f"Wrote {eml_path}")
    click.echo(f"Wrote {html_path}")
    if selection is not None and subscriber_email is None:
        # The sample shows the newest releases; a real send follows the rules.
        click.echo(f"A send now would reach {selection.summary()}")
    elif selection is not None:
        for reason in selection.reasons():
            click.echo(f"  {reason}")
