"""`mailer serve`: the web app, the scheduler and the delivery worker in one process."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from mailer.cli import BadInput, OperationalError
from mailer.config import LOOPBACK_HOSTS, is_loopback_url, served_base_url
from mailer.context import AppContext

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopRequested(Exception):
    pass


def _stop_requested(signum: int, frame: FrameType | None) -> None:
    raise _StopRequested(signum)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--no-background",
    is_flag=True,
    help="Serve the web pages only: no scheduled jobs and no mail delivery.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, no_background: bool, log_level: str) -> None:
    """Run the signup pages, the scheduler and mail delivery until Ctrl-C or SIGTERM.

    Stopping lets requests and messages in flight finish; queued mail stays in the
    outbox in the database and goes out on the next start.
    """
    # Lazy: `mailer --help` imports every command module to list it; the web app and
    # uvicorn would add ~800 ms CPU to that (bench/startup.py).
    import uvicorn

    from mailer.web.app import create_app
    from mailer.web.tracking import AnonymousTrackingAccessLog

    app_context: AppContext = ctx.find_object(AppContext)
    settings = app_context.settings
    try:
        followed = served_base_url(settings.site.base_url, host, port)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if host not in LOOPBACK_HOSTS and is_loopback_url(settings.site.base_url):
        click.echo(
            f"warning: serving other machines on {host}, but links in mails point at "
            f"{followed or settings.site.base_url}, on this machine; set site.base_url "
            "(or MAILER_BASE_URL) to the address readers use.",
            err=True,
        )
    if followed is not None:
        configured = settings.site.base_url
        settings = settings.model_copy(
            update={"site": settings.site.model_copy(update={"base_url": followed})}
        )
        app_context = AppContext(settings=settings)
        click.echo(
            f"Links in mails use {followed}: site.base_url ({configured}) "
            "is on this machine, so it follows the address served. Set site.base_url "
            "to the public address to choose another."
        )
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(app_context, run_background=not no_background)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        # The app reads X-Forwarded-For itself, from site.trusted_proxies only
        # (mailer.web.proxies); uvicorn must not apply its own list on top.
        proxy_headers=False,
        server_header=False,
        # Long enough for a confirmation mail in a background task to finish.
        timeout_graceful_shutdown=30,
    )
    # After uvicorn.Config, which sets up its loggers.
    logging.getLogger("uvicorn.access").addFilter(AnonymousTrackingAccessLog())
    server = uvicorn.Server(config)
    where = (
        f"caught in {settings.mail_dir}"
        if settings.smtp.embedded
        else f"sent via {settings.smtp.host}:{settings.smtp.port}"
    )
    click.echo(f"{settings.site.name}: http://{host}:{port}/ (mail is {where}). Ctrl-C stops.")
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown (requests and mail in
    # flight finish, the lifespan stops the scheduler and the worker), then raises
    # the signal again so the process dies of it. By then everything has stopped
    # cleanly, so these handlers turn that second delivery into a normal exit 0
    # instead of a KeyboardInterrupt traceback or a kill status.
    previous = {sig: signal.signal(sig, _stop_requested) for sig in _STOP_SIGNALS}
    try:
        server.run()
    except _StopRequested:
        pass
    except OSError as exc:
        raise OperationalError(f"cannot serve on {host}:{port}: {exc}") from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        # Start-up failed (port taken, database unreachable): uvicorn logged why.
        raise OperationalError(f"mailer serve did not start on {host}:{port}; see the log above")
