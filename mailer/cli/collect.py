"""`mailer ingest`, `mailer collect`, `mailer sources`, `mailer releases`."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailer.arrivals import releases_arrived
from mailer.cli import BadInput, OperationalError, echo_json, run, site_zone
from mailer.collect import (
    INGEST_SOURCE,
    IngestReport,
    SourceRunResult,
    collect_all,
    ingest_paths,
)
from mailer.collect.extract import published_text
from mailer.collect.ingest import IngestedRelease
from mailer.collect.store import Outcome
from mailer.context import AppContext
from mailer.models import Digest, Release
from mailer.releases import ReleaseFilter, list_releases
from mailer.sources import NoSuchSource, SourceHealth, enabled_sources, list_sources
from mailer.templating import count_of, local_time, publication_date


def _published(release: Release, zone: str) -> str:
    shown = publication_date(release.published_at, zone, date_only=release.published_date_only)
    return shown + (" ~" if release.published_estimated else "")


def _arrival_line(arrival: Digest | None) -> str | None:
    if arrival is None:
        return None
    if arrival.recipient_count == 0:
        return "Readers who chose “as soon as published”: nothing new for them."
    return (
        f"Queued digest {arrival.id} for "
        f"{count_of(arrival.recipient_count, '“as soon as published” reader')}; "
        "`mailer serve` or `mailer worker` delivers it."
    )


def _stdout() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped or redirected: wide enough that errors and titles stay on one line.
        console = Console(highlight=False, width=200)
    return console


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Read and match the releases as a real run would (new, or merged into which "
    "stored release); store nothing.",
)
@click.option(
    "--no-send",
    is_flag=True,
    help="Store the releases excluded from digests (by default a release added by hand "
    "is sent whatever its publication date).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per release per line.")
@click.option(
    "--source",
    "source_name",
    default=INGEST_SOURCE,
    show_default=True,
    help="Source name the releases are filed under.",
)
@click.pass_context
def ingest(
    ctx: click.Context,
    paths: tuple[str, ...],
    dry_run: bool,
    no_send: bool,
    as_json: bool,
    source_name: str,
) -> None:
    """Read release files (.txt, .md, .html, .eml, and feed files .xml .rss .atom .json)
    or folders of them, and store the releases. Files that cannot be read are listed
    and the others are stored all the same; the exit status is then 2.

    A release added by hand is an editor's decision to publish: it goes out with the
    next digest whatever its publication date (digest.max_age holds back only
    collected releases), and readers who chose "as soon as published" get it now."""

    async def work(app: AppContext) -> IngestReport:
        async with app.database() as database:
            return await ingest_paths(
                database, app.settings, paths, dry_run, source_name=source_name, send=not no_send
            )

    report = run(ctx, work)
    zone = site_zone(ctx)
    for item in report.releases:
        if as_json:
            row = item.candidate.as_json(report.source)
            if item.release_id is not None:
                row = {"id": item.release_id, "outcome": str(item.outcome), **row}
            echo_json(row)
        else:
            candidate = item.candidate
            date = publication_date(
                candidate.published, zone, date_only=candidate.published_date_only
            )
            click.echo(f"{_ingest_state(item, dry_run):>11}  {date:20}  {candidate.title}")
            click.echo(f"{'':>11}  from {item.path}")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for error in report.errors:
        click.echo(f"error: {error}", err=True)
    if not as_json:
        read = count_of(len(report.releases), "release")
        counts = ", ".join(f"{report.count(o)} {o}" for o in Outcome)
        if dry_run:
            click.echo(f"{read} read: would be {counts}; nothing stored (--dry-run).")
        else:
            click.echo(f"{read} read: {counts}.")
            if no_send:
                click.echo("New releases are stored excluded from digests (--no-send).")
            if line := _arrival_line(report.arrival):
                click.echo(line)
    if report.errors:
        raise BadInput(
            f"{count_of(len(report.errors), 'input')} could not be read or stored (see above)"
        )


def _ingest_state(item: IngestedRelease, dry_run: bool) -> str:
    if item.outcome is None:
        return "failed"
    would = "would " if dry_run else ""
    target = f"#{item.release_id} “{item.existing_title}”"
    if item.merged_with_path is not None:
        # New in this same run: a dry run has no id to name for it.
        target = f"“{item.existing_title}” (new from {item.merged_with_path})"
    return {
        Outcome.NEW: f"{would}store" if dry_run else "new",
        Outcome.MERGED: f"{would}merge into {target}" if dry_run else f"merged into {target}",
        Outcome.UPDATED: f"{would}update {target}",
        Outcome.UNCHANGED: f"unchanged: {target}",
    }[item.outcome]


@click.command("collect")
@click.option("--source", "only", metavar="NAME", help="Collect only this source.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source per line.")
@click.pass_context
def collect(ctx: click.Context, only: str | None, as_json: bool) -> None:
    """Collect now from every enabled source (or one), then show what came in.

    Exit status 1 when a source failed; the others are collected regardless."""
    errors = Console(stderr=True)

    async def work(app: AppContext) -> tuple[list[SourceRunResult], Digest | None]:
        async with app.database() as database:
            try:
                names = await enabled_sources(database, only)
            except NoSuchSource as exc:
                raise BadInput(str(exc)) from None
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} sources"),
                TimeElapsedColumn(),
                console=errors,
                transient=True,
                disable=as_json or not errors.is_terminal,
            ) as progress:
                overall = progress.add_task("Collecting", total=None)
                running: set[str] = set()

                def report(name: str, result: SourceRunResult | None) -> None:
                    if result is None:
                        running.add(name)
                    else:
                        running.discard(name)
                        progress.advance(overall)
                    shown = ", ".join(sorted(running)) or "done"
                    progress.update(overall, description=f"Collecting: {shown}")

                progress.update(overall, total=len(names))
                results = await collect_all(database, app.settings, only=only, progress=report)
            arrived = [i for result in results for i in result.new_release_ids]
            return results, await releases_arrived(database, app.settings, arrived)

    results, arrival = run(ctx, work)
    if as_json:
        for result in results:
            echo_json({"source": result.source, "error": result.error, **result.counts()})
    else:
        _results_table(results)
        if line := _arrival_line(arrival):
            click.echo(line)
    failed = [r for r in results if r.error and not r.skipped]
    if failed:
        raise OperationalError(f"{len(failed)} of {count_of(len(results), 'source')} failed")


def _results_table(results: list[SourceRunResult]) -> None:
    table = Table(title="Collection", title_justify="left")
    for column in ("Source", "New", "Updated", "Unchanged", "Merged", "Failed"):
        table.add_column(column, justify="left" if column == "Source" else "right")
    table.add_column("Error", overflow="fold")
    for result in results:
        error = result.error
        if error is None and result.entry_errors:
            more = len(result.entry_errors) - 1
            error = result.entry_errors[0] + (f" (+{more} more)" if more else "")
        if result.not_modified and error is None:
            error = "not modified since the last run"
        table.add_row(
            result.source,
            str(result.new),
            str(result.updated),
            str(result.unchanged),
            str(result.merged),
            str(result.failed + (1 if result.error and not result.skipped else 0)),
            error or "",
        )
    _stdout().print(table)


@click.command("sources")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source per line.")
@click.pass_context
def sources(ctx: click.Context, as_json: bool) -> None:
    """List sources and their health."""

    async def work(app: AppContext) -> list[SourceHealth]:
        async with app.database() as database:
            return await list_sources(database)

    health = run(ctx, work)
    rows = [h.source for h in health]
    counts = {h.source.id: h.releases for h in health}
    zone = site_zone(ctx)
    if as_json:
        for source in rows:
            echo_json(
                {
                    "name": source.name,
                    "kind": source.kind,
                    "url": source.url,
                    "path": source.path,
                    "enabled": source.enabled,
                    "status": str(source.status),
                    "interval_seconds": source.interval_seconds,
                    "last_run_at": source.last_run_at,
                    "last_success_at": source.last_success_at,
                    "last_error": source.last_error,
                    "last_error_at": source.last_error_at,
                    "consecutive_failures": source.consecutive_failures,
                    "total_releases": counts.get(source.id, 0),
                    "last_counts": source.last_counts,
                }
            )
        return
    table = Table(title=f"Sources (times in {zone})", title_justify="left")
    for column in ("Name", "Kind", "Status", "Every", "Last run", "Last success", "Releases"):
        table.add_column(column)
    table.add_column("Last error", overflow="fold")
    for source in rows:
        status = str(source.status)
        if source.consecutive_failures:
            status += f" ({source.consecutive_failures}×)"
        error = ""
        if source.last_error and source.status != "ok":
            error = f"{local_time(source.last_error_at, zone)}: {source.last_error}"
        every = f"{source.interval_seconds // 60} min" if source.interval_seconds else "—"
        table.add_row(
            source.name,
            source.kind,
            status,
            every,
            local_time(source.last_run_at, zone),
            local_time(source.last_success_at, zone),
            str(counts.get(source.id, 0)),
            error,
        )
    _stdout().print(table)


@click.command("releases")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per release per line.")
@click.option("--limit", default=50, show_default=True, help="How many; 0 for all.")
@click.option("--source", "source_name", metavar="NAME", help="Only releases from this source.")
@click.option("--topic", metavar="SLUG", help="Only releases with this topic.")
@click.pass_context
def releases(
    ctx: click.Context, as_json: bool, limit: int, source_name: str | None, topic: str | None
) -> None:
    """List stored releases, newest first."""
    if limit < 0:
        raise BadInput("--limit must be 0 (all) or more")

    wanted = ReleaseFilter(topic=topic or "", source=source_name or "")

    async def work(app: AppContext) -> list[Release]:
        async with app.database() as database:
            found = await list_releases(database, wanted, limit=limit or None)
            return found.items

    rows = run(ctx, work)
    if as_json:
        for release in rows:
            echo_json(release_json(release))
        return
    zone = site_zone(ctx)
    table = Table(title=f"Releases (times in {zone})", title_justify="left")
    for column in ("Id", "Published", "Title", "Publisher", "Sources", "Topics"):
        table.add_column(column, overflow="fold")
    for release in rows:
        table.add_row(
            str(release.id),
            _published(release, zone),
            release.title,
            release.publisher or "",
            ", ".join(dict.fromkeys(link.source_name for link in release.links)),
            ", ".join(t.name for t in release.topics),
        )
    _stdout().print(table)
    if not rows:
        click.echo("No releases yet: run `mailer collect`.", err=True)


def release_json(release: Release) -> dict[str, Any]:
    return {
        "id": release.id,
        "title": release.title,
        "published": published_text(release.published_at, date_only=release.published_date_only),
        "published_estimated": release.published_estimated,
        "published_date_only": release.published_date_only,
        "first_seen": release.first_seen_at.isoformat(),
        "updated": release.updated_at.isoformat(),
        "sources": [{"name": link.source_name, "url": link.url} for link in release.links],
        "url": release.canonical_url,
        "publisher": release.publisher,
        "summary": release.summary,
        "text": release.text,
        "html": release.html,
        "image_url": release.image_url,
        "image_alt": release.image_alt,
        "photo_credit": release.photo_credit,
        "topics": [topic.slug for topic in release.topics],
    }


COMMANDS = [ingest, collect, sources, releases]
