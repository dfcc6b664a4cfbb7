"""Accounts and tokens in the domain layer, and the `mailer admin` commands."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from argon2 import PasswordHasher
from click.testing import CliRunner

from mailer import accounts, audit
from mailer.cli import main
from mailer.context import AppContext
from mailer.models import utcnow
from tests.admin.conftest import site_settings


@pytest.fixture
async def database(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    settings = site_settings(tmp_path, database_url)
    async with AppContext(settings=settings).database() as db:
        yield db


def test_production_hashes_are_argon2id() -> None:
    # The module's own hasher (the autouse fixture swaps in a cheap one for speed).
    hashed = PasswordHasher().hash("a password")
    assert hashed.startswith("$argon2id$")
    assert accounts.PasswordHasher is PasswordHasher


async def test_users_are_stored_with_argon2id_hashes(database) -> None:  # type: ignore[no-untyped-def]
    user = await accounts.create_user(database, "Žygimantas.k", "long enough password", "admin")
    assert user.role is accounts.Role.ADMIN
    async with database.session() as session:
        from mailer.models import AdminUser

        row = await session.get(AdminUser, user.id)
    assert row is not None
    assert row.password_hash.startswith("$argon2id$")
    assert "long enough password" not in row.password_hash


@pytest.mark.parametrize(
    ("username", "password", "problem"),
    [
        ("", "long enough password", "user name"),
        ("has space", "long enough password", "user name"),
        ("bob", "short", "at least"),
    ],
)
async def test_bad_accounts_are_refused(
    database, username: str, password: str, problem: str
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(accounts.AccountError, match=problem):
        await accounts.create_user(database, username, password)


async def test_duplicate_user_is_refused(database) -> None:  # type: ignore[no-untyped-def]
    await accounts.create_user(database, "bob", "long enough password")
    with pytest.raises(accounts.AccountError, match="already"):
        await accounts.create_user(database, "bob", "another long password")


async def test_outdated_hash_is_upgraded_at_login(database, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    settings = site_settings(tmp_path, "sqlite://")
    await accounts.create_user(database, "bob", "long enough password")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    monkeypatch.setattr(accounts, "_hasher", stronger)
    result = await accounts.authenticate(database, settings, "bob", "long enough password")
    assert result.user is not None
    async with database.session() as session:
        from sqlalchemy import select

        from mailer.models import AdminUser

        stored = await session.scalar(select(AdminUser.password_hash))
    assert not stronger.check_needs_rehash(stored)


async def test_concurrent_failures_lock_exactly_once(database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = site_settings(tmp_path, "sqlite://", admin={"lockout_threshold": 3})
    await accounts.create_user(database, "bob", "long enough password")
    now = utcnow()
    results = await asyncio.gather(
        *(accounts.authenticate(database, settings, "bob", "wrong", now=now) for _ in range(6))
    )
    assert sum(r.just_locked for r in results) == 1
    later = await accounts.authenticate(
        database, settings, "bob", "long enough password", now=now + timedelta(minutes=16)
    )
    assert later.user is not None


async def test_tokens_identify_until_revoked(database) -> None:  # type: ignore[no-untyped-def]
    token, _view = await accounts.create_token(database, "cms", "editor")
    assert token.startswith(accounts.TOKEN_PREFIX)
    identity = await accounts.token_identity(database, token)
    assert identity is not None and identity.role is accounts.Role.EDITOR
    assert identity.actor == "token:cms"
    assert await accounts.token_identity(database, token + "x") is None
    listed = await accounts.list_tokens(database)
    assert listed[0].last_used_at is not None
    await accounts.revoke_token(database, "cms")
    assert await accounts.token_identity(database, token) is None


def _config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "database": {"url": database_url},
                "secret_key": "test-secret-key-0123456789abcdef",
            }
        )
    )
    return path


def test_cli_creates_users_and_tokens(tmp_path: Path, sqlite_url: str) -> None:
    config = str(_config(tmp_path, sqlite_url))
    runner = CliRunner()
    created = runner.invoke(
        main,
        [
            "--config",
            config,
            "admin",
            "create-user",
            "alice",
            "--role",
            "admin",
            "--password-stdin",
        ],
        input="correct horse battery\n",
    )
    assert created.exit_code == 0, created.output
    assert "Created admin 'alice'" in created.output

    again = runner.invoke(
        main,
        ["--config", config, "admin", "create-user", "alice", "--password-stdin"],
        input="correct horse battery\n",
    )
    assert again.exit_code == 2
    assert "already" in again.output

    short = runner.invoke(
        main,
        ["--config", config, "admin", "create-user", "bob", "--password-stdin"],
        input="short\n",
    )
    assert short.exit_code == 2
    assert "at least" in short.output

    token_run = runner.invoke(main, ["--config", config, "admin", "create-token", "ci"])
    assert token_run.exit_code == 0, token_run.output
    token = token_run.stdout.strip().splitlines()[-1]
    assert token.startswith(accounts.TOKEN_PREFIX)

    listed = runner.invoke(main, ["--config", config, "admin", "list-users"])
    assert "alice" in listed.output and "admin" in listed.output

    async def check() -> None:
        settings = AppContext(config).settings
        async with AppContext(settings=settings).database() as db:
            identity = await accounts.token_identity(db, token)
            assert identity is not None and identity.role is accounts.Role.ADMIN
            result = await accounts.authenticate(db, settings, "alice", "correct horse battery")
            assert result.user is not None
            entries, _ = await audit.query(db, actor="cli")
            assert {e.action for e in entries} == {"user.create", "token.create"}

    asyncio.run(check())

    revoked = runner.invoke(main, ["--config", config, "admin", "revoke-token", "ci"])
    assert revoked.exit_code == 0
    missing = runner.invoke(main, ["--config", config, "admin", "revoke-token", "nope"])
    assert missing.exit_code == 2


async def test_account_changes_write_their_audit_entry_and_refusals_none(database) -> None:  # type: ignore[no-untyped-def]
    boss = accounts.Identity("user", 10**6, "boss", accounts.Role.ADMIN)
    user = await accounts.create_user(
        database, "ona", "long enough password", "editor", actor="cli"
    )
    with pytest.raises(accounts.AccountError, match="already"):
        await accounts.create_user(database, "ona", "long enough password", actor="cli")
    await accounts.change_user(database, user.id, "role", who=boss, role="admin")
    await accounts.change_user(
        database, user.id, "password", who=boss, password="another long password"
    )
    with pytest.raises(accounts.AccountError, match="at least"):
        await accounts.change_user(database, user.id, "password", who=boss, password="short")
    herself = accounts.Identity("user", user.id, "ona", accounts.Role.ADMIN)
    with pytest.raises(accounts.AccountError, match="cannot disable yourself"):
        await accounts.change_user(database, user.id, "disable", who=herself)
    with pytest.raises(accounts.NoSuchAccount):
        await accounts.change_user(database, user.id + 1, "unlock", who=boss)
    token, _ = await accounts.create_token(database, "cms", "editor", actor="user:boss")
    await accounts.revoke_token(database, "cms", actor="cli")
    entries, _ = await audit.query(database)
    assert [(e.actor, e.action, e.target_id, e.details) for e in reversed(entries)] == [
        ("cli", "user.create", "ona", {"role": "editor"}),
        ("user:boss", "user.role", "ona", {"role": "admin"}),
        # Never the password itself.
        ("user:boss", "user.password", "ona", {"unlock": True}),
        ("user:boss", "token.create", "cms", {"role": "editor"}),
        ("cli", "token.revoke", "cms", {}),
    ]
    assert token not in str([e.as_dict() for e in entries])
