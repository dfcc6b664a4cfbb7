"""Every command, by name, and the module that defines it.

Modules are imported only when their command runs (or when `--help` lists them):
the collector, the web app and the digest renderer pull in heavy libraries that
`mailer db status` or `mailer worker` should not pay for at every start.
"""

from __future__ import annotations

import importlib

import click

LAZY_COMMANDS: dict[str, str] = {
    "db": "mailer.cli.db:db",
    "subscribers": "mailer.cli.subscribers:subscribers",
    "ingest": "mailer.cli.collect:ingest",
    "collect": "mailer.cli.collect:collect",
    "sources": "mailer.cli.collect:sources",
    "releases": "mailer.cli.collect:releases",
    "digest": "mailer.cli.commands:digest_group",
    "dkim": "mailer.cli.dkim:dkim",
    "admin": "mailer.cli.admin:admin",
    "serve": "mailer.cli.serve:serve",
    "worker": "mailer.cli.send:worker",
}


def digest_group() -> click.Group:
    """`mailer digest`: preview (digest module) plus the sending commands."""
    # Lazy like every command here: all command modules at start cost ~800 ms CPU
    # more than `mailer db status` needs (bench/startup.py).
    from mailer.cli.digest import digest
    from mailer.cli.send import SEND_COMMANDS

    for command in SEND_COMMANDS:
        digest.add_command(command)
    return digest


def load(name: str) -> click.Command:
    module_name, _, attribute = LAZY_COMMANDS[name].partition(":")
    found = getattr(importlib.import_module(module_name), attribute)
    command = found() if not isinstance(found, click.Command) else found
    assert isinstance(command, click.Command)
    return command


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *LAZY_COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            return load(cmd_name)
        return super().get_command(ctx, cmd_name)
