"""The `mailer` command. Each group lives in its own module and is a thin shell
over the domain functions; this module only wires them together and maps errors
to exit codes: 0 success, 1 operational failure, 2 bad usage, configuration or input."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from mailer.cli.commands import LazyGroup
from mailer.config import ConfigError
from mailer.context import AppContext
from mailer.db import DatabaseURLError
from mailer.migrate import SchemaOutdated

T = TypeVar("T")


class OperationalError(click.ClickException):
    """Something outside the user's input failed (SMTP down, database unreachable)."""

    exit_code = 1


class BadInput(click.ClickException):
    exit_code = 2


def confirm_at_terminal(question: str, without_terminal: str) -> None:
    """Ask ``question``; a "no" aborts. Without a terminal nobody can answer, so
    rather than read an empty answer as "no" this says which option replaces the
    question (``without_terminal``) and exits 2."""
    if not sys.stdin.isatty():
        raise BadInput(
            f"{question} needs an answer at a terminal, and there is none: {without_terminal}"
        )
    if not click.confirm(question, default=False):
        raise click.Abort()


def run(
    ctx: click.Context,
    work: Callable[[AppContext], Awaitable[T]],
    *,
    refused: tuple[type[Exception], ...] = (),
) -> T:
    """Run one async unit of work with the shared error-to-exit-code mapping;
    ``refused``: the domain's errors for input it will not take (exit 2)."""
    app: AppContext = ctx.find_object(AppContext)
    try:
        return asyncio.run(work(app))
    except refused as exc:
        raise BadInput(str(exc)) from None
    except ConfigError as exc:
        raise BadInput(str(exc)) from None
    except DatabaseURLError as exc:
        raise BadInput(f"database.url: {exc}") from None
    except SchemaOutdated as exc:
        raise OperationalError(str(exc)) from None
    except OSError as exc:
        raise OperationalError(str(exc)) from None


def site_zone(ctx: click.Context) -> str:
    """The configured timezone (digest.timezone) that every time shown is in."""
    app = ctx.find_object(AppContext)
    return app.settings.digest.timezone if app is not None else "UTC"


def when(ctx: click.Context, value: datetime | None, empty: str = "—") -> str:
    """A moment in the configured timezone, labelled with the zone, as the admin
    shows it (``2025-10-23 15:10 EEST``)."""
    # Lazy: jinja2 would add ~50 ms to `mailer db status` (bench/startup.py).
    from mailer.templating import local_time

    return local_time(value, site_zone(ctx)) if value is not None else empty


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Configuration file (default: $MAILER_CONFIG, else ./config.yaml).",
)
@click.version_option(package_name="mailer")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """mailer: press releases to subscribers, by email."""
    ctx.obj = AppContext(config_path)
    if ctx.invoked_subcommand not in (None, "version"):
        try:
            ctx.obj.settings  # noqa: B018 - validate the configuration before any command runs
        except ConfigError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, default=str))
