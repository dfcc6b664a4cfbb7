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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import audit
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


class NoSuchAccount(AccountError):
    """The user or token named does not exist."""


class UserChange(StrEnum):
    """What an admin can change about a user on the Users page."""

    ROLE = "role"
    DISABLE = "disable"
    ENABLE = "enable"
    UNLOCK = "unlock"
    PASSWORD = "password"  # noqa: S105 - the name of a change, not a secret


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
    # The new session's id for the cookie, after a sign-in (:func:`sign_in`).
    session_id: str | None = None


async def _audit(
    session: AsyncSession,
    actor: str | None,
    action: str,
    target_type: str,
    target_id: str,
    details: dict[str, object] | None = None,
    *,
    at: datetime | None = None,
) -> None:
    """The audit entry of a change, in its transaction; None as actor: not audited
    (a test or a migration setting things up, not a person)."""
    if actor is not None:
        await audit.record_in(session, actor, action, target_type, target_id, details, at=at)


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
    database: Database,
    username: str,
    password: str,
    role: Role | str = Role.EDITOR,
    *,
    actor: str | None = None,
) -> UserView:
    """A new user; ``actor`` (who created it) goes into the audit log."""
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
        await _audit(session, actor, "user.create", "user", username, {"role": chosen.value})
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
        raise NoSuchAccount(f"there is no user named {username!r}")
    return user


async def update_user(
    database: Database,
    user_id: int,
    *,
    role: Role | str | None = None,
    active: bool | None = None,
    unlock: bool = False,
    password: str | None = None,
    actor: str | None = None,
    action: str = "user.update",
) -> UserView:
    """Change a user's role, switch the account on or off, lift a lockout, or set a
    new password. A new role, a new password or switching off ends every session
    of the user (they sign in again, under the new terms). The change is audited
    as ``action`` by ``actor`` (never with the password)."""
    new_hash = await hash_password(check_password(password)) if password is not None else None
    chosen = None if role is None else role if isinstance(role, Role) else parse_role(role)
    async with database.transaction() as session:
        user = await session.get(AdminUser, user_id, with_for_update=True)
        if user is None:
            raise NoSuchAccount(f"there is no user with id {user_id}")
        logged: dict[str, object] = {}
        if chosen is not None:
            user.role = logged["role"] = chosen.value
        if active is not None:
            user.active = logged["active"] = active
        if unlock:
            user.failed_logins = 0
            user.locked_until = None
            logged["unlock"] = True
        if new_hash is not None:
            user.password_hash = new_hash
        if chosen is not None or active is False or new_hash is not None:
            await session.execute(delete(AdminSession).where(AdminSession.user_id == user_id))
        await _audit(session, actor, action, "user", user.username, logged)
        return _user_view(user)


async def change_user(
    database: Database,
    user_id: int,
    change: UserChange | str,
    *,
    who: Identity,
    role: str | None = None,
    password: str | None = None,
) -> UserView:
    """One change an admin (``who``) makes on the Users page. An admin cannot switch
    themselves off or change their own role: that could leave nobody to undo it."""
    try:
        chosen = UserChange(change)
    except ValueError:
        raise AccountError(
            f"unknown change {change!r} (one of: {', '.join(c.value for c in UserChange)})"
        ) from None
    if who.kind == "user" and who.id == user_id and chosen in (UserChange.DISABLE, UserChange.ROLE):
        raise AccountError("You cannot disable yourself or change your own role.")
    action = f"user.{chosen.value}"
    if chosen is UserChange.ROLE:
        return await update_user(
            database, user_id, role=parse_role(role or ""), actor=who.actor, action=action
        )
    if chosen in (UserChange.DISABLE, UserChange.ENABLE):
        active = chosen is UserChange.ENABLE
        return await update_user(database, user_id, active=active, actor=who.actor, action=action)
    if chosen is UserChange.UNLOCK:
        return await update_user(database, user_id, unlock=True, actor=who.actor, action=action)
    return await update_user(
        database, user_id, password=password or "", unlock=True, actor=who.actor, action=action
    )


async def set_password_by_name(
    database: Database, username: str, password: str, *, actor: str | None = None
) -> UserView:
    """A new password for the user with this name (also lifts a lockout)."""
    user = await _user_by_name(database, username)
    return await update_user(
        database, user.id, password=password, unlock=True, actor=actor, action="user.password"
    )


async def authenticate(
    database: Database,
    settings: Settings,
    username: str,
    password: str,
    *,
    ip: str | None = None,
    now: datetime | None = None,
) -> LoginResult:
    """Check a login. Counts failures, locks after ``admin.lockout_threshold`` of them.
    A sign-in, a wrong password and a lockout are audited (with ``ip``); the right
    password for a locked account is not (nothing changed)."""
    now = now or utcnow()
    result = await _authenticate(database, settings, username, password, now)
    if result.failure is LoginFailure.LOCKED:
        return result
    async with database.transaction() as session:
        await _audit_login(session, result, username, ip, now)
    return result


async def sign_in(
    database: Database,
    settings: Settings,
    username: str,
    password: str,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    now: datetime | None = None,
) -> LoginResult:
    """:func:`authenticate`, and for the right password a new session in the
    transaction of the "login" audit entry (``session_id``, for the cookie)."""
    now = now or utcnow()
    result = await _authenticate(database, settings, username, password, now)
    if result.failure is LoginFailure.LOCKED:
        return result
    async with database.transaction() as session:
        await _audit_login(session, result, username, ip, now)
        if result.user is None:
            return result
        session_id = await _add_session(
            session, settings, result.user.id, ip=ip, user_agent=user_agent, now=now
        )
    return replace(result, session_id=session_id)


async def _audit_login(
    session: AsyncSession, result: LoginResult, username: str, ip: str | None, now: datetime
) -> None:
    actor = f"user:{username[:100]}"
    details = {"ip": ip}
    if result.just_locked:
        await _audit(session, actor, "login.lockout", "user", username[:60], details, at=now)
    action = "login" if result.user is not None else "login.failed"
    await _audit(session, actor, action, "user", username[:60], details, at=now)


async def _authenticate(
    database: Database, settings: Settings, username: str, password: str, now: datetime
) -> LoginResult:
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


async def _add_session(
    session: AsyncSession,
    settings: Settings,
    user_id: int,
    *,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
) -> str:
    """A new session for the user; returns the id for the cookie (stored hashed).
    Sessions of anyone that expired unused are swept here, so the table stays small."""
    config = settings.admin
    session_id = secrets.token_urlsafe(32)
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


async def end_session(
    database: Database, session_id: str | None, *, who: Identity | None = None
) -> None:
    """End one session; with ``who`` (signing out, not expiry) it is audited."""
    async with database.transaction() as session:
        if session_id is not None:
            await session.execute(
                delete(AdminSession).where(AdminSession.id_hash == _session_hash(session_id))
            )
        if who is not None:
            await _audit(session, who.actor, "logout", "user", who.name)


async def end_all_sessions(database: Database, who: Identity) -> int:
    """Sign a user out everywhere (audited); returns how many sessions ended."""
    async with database.transaction() as session:
        result = await session.execute(delete(AdminSession).where(AdminSession.user_id == who.id))
        ended = int(result.rowcount or 0)
        await _audit(session, who.actor, "logout.everywhere", "user", who.name, {"sessions": ended})
        return ended


# --- API tokens --------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


async def create_token(
    database: Database, name: str, role: Role | str = Role.ADMIN, *, actor: str | None = None
) -> tuple[str, TokenView]:
    """A new API token. The token itself is returned only here; store it safely.
    ``actor`` (who created it) goes into the audit log."""
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
        await _audit(session, actor, "token.create", "token", name, {"role": chosen.value})
        return token, _token_view(row)


async def overview(database: Database) -> tuple[list[UserView], list[TokenView]]:
    """Every user and every token, for the admin's Users page."""
    return await list_users(database), await list_tokens(database)


async def list_tokens(database: Database) -> list[TokenView]:
    async with database.session() as session:
        rows = (await session.scalars(select(ApiToken).order_by(ApiToken.name))).all()
        return [_token_view(t) for t in rows]


async def revoke_token(
    database: Database, name_or_id: str | int, *, actor: str | None = None
) -> TokenView:
    """Revoke a token by name or id; ``actor`` goes into the audit log."""
    async with database.transaction() as session:
        if isinstance(name_or_id, int):
            row = await session.get(ApiToken, name_or_id, with_for_update=True)
        else:
            row = await session.scalar(
                select(ApiToken).where(ApiToken.name == name_or_id).with_for_update()
            )
        if row is None:
            raise NoSuchAccount(f"there is no token {name_or_id!r}")
        row.revoked = True
        await _audit(session, actor, "token.revoke", "token", row.name)
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
