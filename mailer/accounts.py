"""Admin accounts and API tokens: who may use the admin and the JSON API.

* Passwords are hashed with Argon2id (argon2-cffi's PasswordHasher defaults, RFC
  9106's recommended profile). Hashing runs in a worker thread: it is deliberately
  slow and must not stall the event loop that serves everyone else.
* ``lockout_threshold`` wrong passwords in a row lock an account for
  ``lockout_duration``. While locked, even the right password is refused. Every
  attempt costs one password hash (an unknown name, a switched-off or a locked
  account included) and every wrong answer reads the same, so neither the words
  nor the timing tell which names exist; only the right password learns of a lock.
* Sessions live in ``admin_sessions``: the browser holds a random id, the table
  its hash. Signing out, "sign out everywhere", switching an account off, a role
  change and a new password delete rows, so a copied cookie stops working at once.
* API tokens are random strings shown once; only their SHA-256 is stored (they
  carry 256 bits of entropy, so a slow hash would add nothing but latency).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update

from mailer.config import Settings
from mailer.db import Database
from mailer.models import AdminSession, AdminUser, ApiToken, utcnow


class Role(StrEnum):
    # Everything, including subscribers' personal data, users and settings.
    ADMIN = "admin"
    # Releases and digests only.
    EDITOR = "editor"


ROLES = tuple(r.value for r in Role)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
TOKEN_PREFIX = "mlr_"  # noqa: S105 - a label, not a secret
# Letters of any script (Žygimantas), digits and a few separators; no spaces or controls.
_USERNAME = re.compile(r"^\w[\w.@-]{0,99}\Z")
_TOKEN_NAME = re.compile(r"^\w[\w .@-]{0,99}\Z")
# Writing last_used_at on every API call would make every read a write.
TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)
# The same for a session's last_seen_at (the idle limit is counted from it).
SESSION_TOUCH_INTERVAL = timedelta(minutes=1)
# A session "created in the future" beyond this is refused (a clock set back).
SESSION_CLOCK_SKEW = timedelta(minutes=5)

_hasher = PasswordHasher()
# Verified against when the user name is unknown, so that costs the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class AccountError(Exception):
    """A refusal worded for the operator."""


@dataclass(frozen=True)
class UserView:
    id: int
    username: str
    role: Role
    active: bool
    created_at: datetime
    last_login_at: datetime | None
    failed_logins: int
    locked_until: datetime | None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class TokenView:
    id: int
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


@dataclass(frozen=True)
class Identity:
    """Who is acting: a signed-in user or an API token. ``actor`` goes into the audit log."""

    kind: str  # "user" or "token"
    id: int
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may(self, role: Role) -> bool:
        """True when this identity has ``role`` or a stronger one."""
        return self.role is Role.ADMIN or self.role is role


class LoginFailure(StrEnum):
    BAD_CREDENTIALS = "bad-credentials"
    LOCKED = "locked"


@dataclass(frozen=True)
class LoginResult:
    user: UserView | None
    failure: LoginFailure | None = None
    locked_until: datetime | None = None
    # True when this very attempt locked the account (for the audit log).
    just_locked: bool = False


def _user_view(user: AdminUser) -> UserView:
    return UserView(
        id=user.id,
        username=user.username,
        role=Role(user.role),
        active=user.active,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
        failed_logins=user.failed_logins,
        locked_until=user.locked_until,
    )


def _token_view(token: ApiToken) -> TokenView:
    return TokenView(
        id=token.id,
        name=token.name,
        role=Role(token.role),
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        revoked=token.revoked,
    )


def parse_role(raw: str) -> Role:
    try:
        return Role(raw)
    except ValueError:
        raise AccountError(f"the role must be one of: {', '.join(ROLES)}") from None


def check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise AccountError(
            "a user name has 1 to 100 characters: letters, digits and . _ @ - "
            "(starting with a letter or digit)"
        )
    return username


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"the password can have at most {MAX_PASSWORD_LENGTH} characters")
    return password


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password_hash: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)


# --- users -------------------------------------------------------------------------


async def create_user(
    database: Database, username: str, password: str, role: Role | str = Role.EDITOR
) -> UserView:
    check_username(username)
    check_password(password)
    chosen = role if isinstance(role, Role) else parse_role(role)
    password_hash = await hash_password(password)
    async with database.transaction() as session:
        exists = await session.scalar(select(AdminUser.id).where(AdminUser.username == username))
        if exists is not None:
            raise AccountError(f"there is already a user named {username!r}")
        user = AdminUser(username=username, password_hash=password_hash, role=chosen.value)
        session.add(user)
        await session.flush()
        return _user_view(user)


async def list_users(database: Database) -> list[UserView]:
    async with database.session() as session:
        users = (await session.scalars(select(AdminUser).order_by(AdminUser.username))).all()
        return [_user_view(u) for u in users]


async def get_user(database: Database, user_id: int) -> UserView | None:
    async with database.session() as session:
        user = await session.get(AdminUser, user_id)
        return _user_view(user) if user else None


async def _user_by_name(database: Database, username: str) -> AdminUser:
    async with database.session() as session:
        user = await session.scalar(select(AdminUser).where(AdminUser.username == username))
    if user is None:
        raise AccountError(f"there is no user named {username!r}")
    return user


async def update_user(
    database: Database,
    user_id: int,
    *,
    role: Role | str | None = None,
    active: bool | None = None,
    unlock: bool = False,
    password: str | None = None,
) -> UserView:
    """Change a user's role, switch the account on or off, lift a lockout, or set a
    new password. A new role, a new password or switching off ends every session
    of the user (they sign in again, under the new terms)."""
    new_hash = await hash_password(check_password(password)) if password is not None else None
    async with database.transaction() as session:
        user = await session.get(AdminUser, user_id, with_for_update=True)
        if user is None:
            raise AccountError(f"there is no user with id {user_id}")
        if role is not None:
            user.role = (role if isinstance(role, Role) else parse_role(role)).value
        if active is not None:
            user.active = active
        if unlock:
            user.failed_logins = 0
            user.locked_until = None
        if new_hash is not None:
            user.password_hash = new_hash
        if role is not None or active is False or new_hash is not None:
            await session.execute(delete(AdminSession).where(AdminSession.user_id == user_id))
        return _user_view(user)


async def set_password_by_name(database: Database, username: str, password: str) -> UserView:
    user = await _user_by_name(database, username)
    return await update_user(database, user.id, password=password, unlock=True)


async def authenticate(
    database: Database,
    settings: Settings,
    username: str,
    password: str,
    *,
    now: datetime | None = None,
) -> LoginResult:
    """Check a login. Counts failures, locks after ``admin.lockout_threshold`` of them."""
    now = now or utcnow()
    config = settings.admin
    async with database.session() as session:
        user = await session.scalar(select(AdminUser).where(AdminUser.username == username[:100]))
    if user is None or not user.active:
        await _verify(_DUMMY_HASH, password[:MAX_PASSWORD_LENGTH])
        return LoginResult(None, LoginFailure.BAD_CREDENTIALS)
    # Checked even while locked: the same work (and time) as for any other name.
    good = await _verify(user.password_hash, password[:MAX_PASSWORD_LENGTH])
    if user.locked_until is not None and user.locked_until > now:
        # Only someone who knows the password learns that the account is locked.
        if good:
            return LoginResult(None, LoginFailure.LOCKED, user.locked_until)
        return LoginResult(None, LoginFailure.BAD_CREDENTIALS)
    rehash = (
        await hash_password(password)
        if good and _hasher.check_needs_rehash(user.password_hash)
        else None
    )
    async with database.transaction() as session:
        row = await session.get(AdminUser, user.id, with_for_update=True, populate_existing=True)
        if row is None or not row.active:
            return LoginResult(None, LoginFailure.BAD_CREDENTIALS)
        if row.locked_until is not None and row.locked_until > now:
            # Another request locked it while this password was being checked.
            if good:
                return LoginResult(None, LoginFailure.LOCKED, row.locked_until)
            return LoginResult(None, LoginFailure.BAD_CREDENTIALS)
        if not good:
            row.failed_logins += 1
            if row.failed_logins >= config.lockout_threshold:
                row.failed_logins = 0
                row.locked_until = now + config.lockout_duration
                # Worded like any wrong password (see the module doc); audited.
                return LoginResult(
                    None, LoginFailure.BAD_CREDENTIALS, row.locked_until, just_locked=True
                )
            return LoginResult(None, LoginFailure.BAD_CREDENTIALS)
        row.failed_logins = 0
        row.locked_until = None
        row.last_login_at = now
        if rehash is not None:
            row.password_hash = rehash
        return LoginResult(_user_view(row))


# --- sessions ------------------------------------------------------------------------


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def start_session(
    database: Database,
    settings: Settings,
    user_id: int,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    now: datetime | None = None,
) -> str:
    """A new session for the user; returns the id for the cookie (stored hashed).
    Sessions of anyone that expired unused are swept here, so the table stays small."""
    now = now or utcnow()
    config = settings.admin
    session_id = secrets.token_urlsafe(32)
    async with database.transaction() as session:
        await session.execute(
            delete(AdminSession).where(
                (AdminSession.created_at <= now - config.session_lifetime)
                | (AdminSession.last_seen_at <= now - config.session_idle)
            )
        )
        session.add(
            AdminSession(
                id_hash=_session_hash(session_id),
                user_id=user_id,
                created_at=now,
                last_seen_at=now,
                ip=(ip or "")[:64] or None,
                user_agent=(user_agent or "")[:300] or None,
            )
        )
    return session_id


async def session_identity(
    database: Database, settings: Settings, session_id: str, *, now: datetime | None = None
) -> Identity | None:
    """The user signed in with this session id, or None: unknown or ended session,
    idle longer than ``admin.session_idle``, older than ``admin.session_lifetime``,
    or an account switched off since."""
    now = now or utcnow()
    config = settings.admin
    id_hash = _session_hash(session_id)
    async with database.session() as session:
        row = (
            await session.execute(
                select(AdminSession, AdminUser)
                .join(AdminUser, AdminUser.id == AdminSession.user_id)
                .where(AdminSession.id_hash == id_hash)
            )
        ).one_or_none()
    if row is None:
        return None
    stored, user = row
    expired = (
        now - stored.created_at >= config.session_lifetime
        or now - stored.last_seen_at >= config.session_idle
        or stored.created_at > now + SESSION_CLOCK_SKEW
    )
    if expired or not user.active:
        await end_session(database, session_id)
        return None
    if now - stored.last_seen_at > SESSION_TOUCH_INTERVAL:
        async with database.transaction() as session:
            await session.execute(
                update(AdminSession).where(AdminSession.id_hash == id_hash).values(last_seen_at=now)
            )
    return Identity("user", user.id, user.username, Role(user.role))


async def end_session(database: Database, session_id: str) -> None:
    async with database.transaction() as session:
        await session.execute(
            delete(AdminSession).where(AdminSession.id_hash == _session_hash(session_id))
        )


async def end_all_sessions(database: Database, user_id: int) -> int:
    """Sign a user out everywhere; returns how many sessions ended."""
    async with database.transaction() as session:
        result = await session.execute(delete(AdminSession).where(AdminSession.user_id == user_id))
        return int(result.rowcount or 0)


# --- API tokens --------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


async def create_token(
    database: Database, name: str, role: Role | str = Role.ADMIN
) -> tuple[str, TokenView]:
    """A new API token. The token itself is returned only here; store it safely."""
    if not _TOKEN_NAME.match(name):
        raise AccountError(
            "a token name has 1 to 100 characters: letters, digits, spaces and . _ @ -"
        )
    chosen = role if isinstance(role, Role) else parse_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    async with database.transaction() as session:
        exists = await session.scalar(select(ApiToken.id).where(ApiToken.name == name))
        if exists is not None:
            raise AccountError(f"there is already a token named {name!r}")
        row = ApiToken(name=name, token_hash=_token_hash(token), role=chosen.value)
        session.add(row)
        await session.flush()
        return token, _token_view(row)


async def list_tokens(database: Database) -> list[TokenView]:
    async with database.session() as session:
        rows = (await session.scalars(select(ApiToken).order_by(ApiToken.name))).all()
        return [_token_view(t) for t in rows]


async def revoke_token(database: Database, name_or_id: str | int) -> TokenView:
    async with database.transaction() as session:
        if isinstance(name_or_id, int):
            row = await session.get(ApiToken, name_or_id, with_for_update=True)
        else:
            row = await session.scalar(
                select(ApiToken).where(ApiToken.name == name_or_id).with_for_update()
            )
        if row is None:
            raise AccountError(f"there is no token {name_or_id!r}")
        row.revoked = True
        return _token_view(row)


async def token_identity(
    database: Database, token: str, *, now: datetime | None = None
) -> Identity | None:
    """The identity of a bearer token, or None when unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    now = now or utcnow()
    digest = _token_hash(token)
    async with database.session() as session:
        row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked:
        return None
    if row.last_used_at is None or now - row.last_used_at > TOKEN_TOUCH_INTERVAL:
        async with database.transaction() as session:
            fresh = await session.get(ApiToken, row.id)
            if fresh is not None:
                fresh.last_used_at = now
    return Identity("token", row.id, row.name, Role(row.role))
