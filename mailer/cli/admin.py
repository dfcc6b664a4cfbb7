"""`mailer admin`: accounts for the admin web UI and tokens for the JSON API."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from mailer import accounts
from mailer.cli import BadInput, echo_json, run, when
from mailer.context import AppContext

T = TypeVar("T")
CLI_ACTOR = "cli"


def _run(ctx: click.Context, work: Callable[[AppContext], Awaitable[T]]) -> T:
    return run(ctx, work, refused=(accounts.AccountError,))


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        # One line: the password, without its line break (so `echo pw |` works).
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise BadInput("no terminal to type the password at: pass --password-stdin and pipe it in")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        return accounts.check_password(password)
    except accounts.AccountError as exc:
        raise BadInput(str(exc)) from None


@click.group()
def admin() -> None:
    """Admin accounts (web UI) and API tokens."""


@admin.command("create-user")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(accounts.ROLES),
    default=accounts.Role.EDITOR.value,
    show_default=True,
    help="admin: everything; editor: releases and digests only.",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def create_user(ctx: click.Context, name: str, role: str, password_stdin: bool) -> None:
    """Create a user who signs in at /admin/login (the password is prompted for)."""
    try:
        accounts.check_username(name)
    except accounts.AccountError as exc:
        raise BadInput(str(exc)) from None
    password = _read_password(password_stdin)

    async def work(app: AppContext) -> accounts.UserView:
        async with app.database() as database:
            return await accounts.create_user(database, name, password, role, actor=CLI_ACTOR)

    user = _run(ctx, work)
    click.echo(f"Created {user.role.value} {user.username!r}.")


@admin.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def set_password(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Give a user a new password (also lifts a lockout and ends their sessions)."""
    password = _read_password(password_stdin)

    async def work(app: AppContext) -> accounts.UserView:
        async with app.database() as database:
            return await accounts.set_password_by_name(database, name, password, actor=CLI_ACTOR)

    user = _run(ctx, work)
    click.echo(f"New password set for {user.username!r}.")


@admin.command("list-users")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def list_users(ctx: click.Context, as_json: bool) -> None:
    """Every admin account, its role and state."""

    async def work(app: AppContext) -> list[accounts.UserView]:
        async with app.database() as database:
            return await accounts.list_users(database)

    users = _run(ctx, work)
    for user in users:
        state = "active" if user.active else "disabled"
        if as_json:
            echo_json(
                {
                    "username": user.username,
                    "role": user.role.value,
                    "state": state,
                    "last_login_at": user.last_login_at,
                    "locked_until": user.locked_until,
                }
            )
        else:
            last = when(ctx, user.last_login_at, "never")
            click.echo(f"{user.username:30} {user.role.value:7} {state:9} last login {last}")
    if not users and not as_json:
        click.echo("No users yet: mailer admin create-user NAME --role admin")


@admin.command("create-token")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(accounts.ROLES),
    default=accounts.Role.ADMIN.value,
    show_default=True,
    help="What the token may do in the API (editor: releases and digests only).",
)
@click.pass_context
def create_token(ctx: click.Context, name: str, role: str) -> None:
    """Create a bearer token for the JSON API. It is printed once; keep it secret."""

    async def work(app: AppContext) -> tuple[str, accounts.TokenView]:
        async with app.database() as database:
            return await accounts.create_token(database, name, role, actor=CLI_ACTOR)

    token, view = _run(ctx, work)
    click.echo(f"Created {view.role.value} token {view.name!r}. Use it as", err=True)
    click.echo("  Authorization: Bearer <token>", err=True)
    click.echo("It is shown only now:", err=True)
    click.echo(token)


@admin.command("list-tokens")
@click.pass_context
def list_tokens(ctx: click.Context) -> None:
    """API tokens (names and state; the tokens themselves are not stored)."""

    async def work(app: AppContext) -> list[accounts.TokenView]:
        async with app.database() as database:
            return await accounts.list_tokens(database)

    for token in _run(ctx, work):
        state = "revoked" if token.revoked else "active"
        used = when(ctx, token.last_used_at, "never")
        click.echo(f"{token.name:30} {token.role.value:7} {state:8} last used {used}")


@admin.command("revoke-token")
@click.argument("name")
@click.pass_context
def revoke_token(ctx: click.Context, name: str) -> None:
    """Revoke an API token at once."""

    async def work(app: AppContext) -> accounts.TokenView:
        async with app.database() as database:
            return await accounts.revoke_token(database, name, actor=CLI_ACTOR)

    view = _run(ctx, work)
    click.echo(f"Revoked token {view.name!r}.")
