"""Subscriber values: errors, result types and the validation of addresses, names and
frequencies.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

from mailer.models import (
    Frequency,
    SubscriberStatus,
)

log = logging.getLogger(__name__)


MAX_ADDRESS_LENGTH = 254  # RFC 5321 path limit; email-validator enforces it too
MAX_NAME_LENGTH = 200  # Subscriber.name
MAX_USER_AGENT_LENGTH = 500  # ConsentEvent.user_agent
MAX_URL_LENGTH = 500  # ConsentEvent.form_url
# Control characters, DEL, C1 controls and the Unicode line/paragraph separators: none
# of them belongs in a name or an address, and any of them could split a mail header.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What mail programs turn into a link: a scheme, "www.", an address, a domain name.
# A name is printed in mail ("Hello, …"), so it must not be able to carry one.
_LINK_LIKE = re.compile(
    r"[a-z][a-z0-9+.-]*:/|\b(?:mailto|tel|sms|javascript|data):|www\.|@|<|>"
    r"|\b[^\W_][\w-]*\.(?:[^\W\d_]{2,}|xn--[\w-]+)\b",
    re.IGNORECASE,
)
_TOPIC_SEPARATORS = re.compile(r"[;,|]")
# The common address: an ASCII dot-atom before the @ (at most 64 characters) and
# plain LDH labels after it, the last one letters only. email-validator accepts
# every such address and normalises it by lower-casing the domain only; anything
# else (quotes, Unicode, Punycode, "--" labels, long labels) goes to email-validator.
_PLAIN_ADDRESS = re.compile(
    r"(?P<local>[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+(?:\.[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+)*)"
    r"@(?P<domain>(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{1,63})"
)
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_USE_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)
# Rows per statement in bulk imports: below SQLite's and asyncpg's parameter limits.
_CHUNK = 2000


# --- errors ---------------------------------------------------------------------------


class SubscriberError(Exception):
    """A refusal worded for the person who caused it (form visitor or operator)."""


class InvalidAddress(SubscriberError):
    pass


class InvalidField(SubscriberError):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name

    @property
    def errors(self) -> dict[str, str]:
        """Each wrong field's message, for a form that shows them by its fields."""
        return {self.field: str(self)}


class InvalidFields(InvalidField):
    """Every wrong field of a reader's form at once: ``errors`` maps each field to
    its message, in the form's order; ``field`` and the message are the first's."""

    def __init__(self, errors: dict[str, str]) -> None:
        first = next(iter(errors))
        super().__init__(first, errors[first])
        self._errors = dict(errors)

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._errors)


class TooManyAttempts(SubscriberError):
    """Too many signups for one mailbox just now; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many attempts.")
        self.retry_after = retry_after


class SuppressedAddress(SubscriberError):
    pass


class NotFound(SubscriberError):
    pass


class InvalidLink(SubscriberError):
    pass


class ExpiredLink(InvalidLink):
    pass


class StaleLink(NotFound):
    """A genuine link whose subscription no longer exists (erased, removed)."""


class InvalidFile(SubscriberError):
    pass


# --- values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a consent action came from, for the consent record."""

    ip: str | None = None
    user_agent: str | None = None
    form_url: str | None = None
    # Who acted when it was not the subscriber: "cli", "user:alice", "token:ci".
    actor: str | None = None


@dataclass(frozen=True)
class TopicView:
    slug: str
    name: str


@dataclass(frozen=True)
class SubscriberView:
    id: int
    email: str
    name: str | None
    status: SubscriberStatus
    frequency: Frequency
    # Slugs; empty means every topic.
    topics: tuple[str, ...]
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    # Why the address is on the suppression list (hard-bounce, soft-bounce, complaint,
    # unsubscribed, erased, admin), with details such as the bounce's status code.
    # None when it is not, or when the view was loaded without the settings.
    suppression: str | None = None
    suppression_details: str | None = None
    # Signs this subscription's links; never shown or exported.
    link_key: str = field(default="", repr=False)

    @property
    def shown_status(self) -> str:
        """What an operator needs to know: bounced and suppressed readers get no mail,
        whatever their subscription says (see SHOWN_STATUSES)."""
        return shown_status(self.status, self.suppression)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "status": self.shown_status,
            "subscription": self.status.value,
            "suppression": self.suppression,
            "suppression_details": self.suppression_details,
            "frequency": self.frequency.value,
            "topics": list(self.topics),
            "created_at": _iso(self.created_at),
            "confirmed_at": _iso(self.confirmed_at),
            "unsubscribed_at": _iso(self.unsubscribed_at),
        }


@dataclass(frozen=True)
class SignupResult:
    subscriber_id: int
    # True when a mail should go out now: the confirmation link, or for an address
    # that is already confirmed the "already subscribed" notice (send_due_mail).
    confirmation_due: bool
    # The address as stored (normalised), for the page that says where mail goes.
    email: str = ""


@dataclass(frozen=True)
class ConfirmResult:
    subscriber: SubscriberView
    # True when the link had already been used and the subscription stands.
    already_confirmed: bool


@dataclass(frozen=True)
class Unsubscribed:
    subscriber: SubscriberView
    # False when the subscriber had already unsubscribed.
    changed: bool


@dataclass(frozen=True)
class MailOutcome:
    """What became of a mail about the subscription (see mailer.subscribers.mail)."""

    # "confirmation" or a notice kind ("already-subscribed").
    kind: str
    sent: bool
    # Why it was not sent now; it stays queued and the retry job sends it.
    reason: str | None = None
    # True when no session with the SMTP server could be had (down, busy, bad
    # credentials): no other mail would go through now either.
    server_unavailable: bool = False

    def describe(self) -> str:
        """The one wording every shell shows."""
        if self.sent:
            return f"{self.kind} sent"
        return f"{self.kind} queued, will retry: {self.reason}"


@dataclass(frozen=True)
class AddResult:
    subscriber: SubscriberView
    created: bool
    # What changed, in words, for the operator: "added", "confirmed", "unchanged", ...
    outcome: str
    confirmation_due: bool
    # The confirmation mail, when one was due: sent, or queued with the reason.
    mail: MailOutcome | None = None


@dataclass
class ImportReport:
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    # Rows naming an address already seen earlier in the same file.
    merged_duplicates: int = 0
    # (line number, message) for rows that were not imported.
    errors: list[tuple[int, str]] = field(default_factory=list)
    suppressed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.errors) + len(self.suppressed)


# --- validation -----------------------------------------------------------------------


def normalize_address(raw: str, *, allow_special_use: bool = False) -> str:
    """The validated, normalised address; raises InvalidAddress with a readable reason.

    ``allow_special_use`` (``signup.allow_special_use_domains``) accepts the reserved
    names of RFC 2606/6761 (.test, .localhost, .invalid, ...) for staging setups."""
    candidate = raw.strip()
    if not candidate:
        raise InvalidAddress("Please enter your email address.")
    if len(candidate) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"An email address has at most {MAX_ADDRESS_LENGTH} characters.")
    if _CONTROL.search(candidate) or not _encodable(candidate):
        raise InvalidAddress("The email address contains characters that are not allowed.")
    plain = _plain_address(candidate)
    if plain is not None:
        return plain
    checked = _with_test_domain(candidate) if allow_special_use else candidate
    try:
        # No SMTPUTF8: mail to a non-ASCII local part (Žygimantas@…) cannot be sent by
        # mailer.message, so such an address is refused here with a reason rather
        # than accepted and never mailed. Internationalised domains are fine.
        validated = validate_email(
            checked,
            check_deliverability=False,
            allow_smtputf8=False,
            test_environment=allow_special_use,
        )
    except EmailNotValidError as exc:
        hint = ""
        if "special-use" in str(exc):
            hint = " (a staging setup can allow it: signup.allow_special_use_domains)"
        raise InvalidAddress(f"This is not a valid email address: {exc}{hint}") from None
    if checked != candidate:
        return f"{validated.local_part}@{candidate.rpartition('@')[2].lower()}"
    return validated.normalized


def _plain_address(candidate: str) -> str | None:
    """The normalised form of a common address, exactly as email-validator would give
    it, or None when only email-validator can tell. A million-row import spends most
    of its time validating; this check costs a regular expression."""
    match = _PLAIN_ADDRESS.fullmatch(candidate)
    if match is None or len(candidate) > MAX_ADDRESS_LENGTH:
        return None
    local, domain = match["local"], match["domain"].lower()
    if (
        len(local) > 64
        or len(domain) > 253
        or "--" in domain
        or local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES
        or domain in _SPECIAL_USE
        or domain.endswith(_SPECIAL_USE_SUFFIXES)
    ):
        return None
    return f"{local}@{domain}"


def _with_test_domain(address: str) -> str:
    """email-validator's test_environment allows only .test: other special-use
    suffixes (.localhost, .invalid, ...) are validated as if they were .test."""
    local, _, domain = address.rpartition("@")
    lowered = domain.lower()
    for name in SPECIAL_USE_DOMAIN_NAMES:
        if lowered == name:
            return f"{local}@{name}.test"
        if lowered.endswith("." + name):
            return f"{local}@{lowered.removesuffix(name)}test"
    return address


def mailbox_key(address: str) -> str:
    """One key for every sub-addressed spelling of a mailbox: ``ona+news@x.org``
    and ``Ona+1@X.org`` both give ``ona@x.org``. The per-address signup limit
    counts by it, so ``victim+0…+99@`` cannot mail one person a hundred times."""
    local, _, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0] or local}@{domain}"


def clean_name(raw: str | None) -> str | None:
    """A display name safe to put in a mail header, or None when empty."""
    if raw is None:
        return None
    # Checked before whitespace is collapsed: a line break in a name is refused, not
    # quietly joined, because it only ever comes from header-injection attempts.
    if _CONTROL.search(raw) or not _encodable(raw):
        raise InvalidField("name", "The name must not contain line breaks or control characters.")
    name = " ".join(raw.split())
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidField("name", f"The name can be at most {MAX_NAME_LENGTH} characters long.")
    if _LINK_LIKE.search(name):
        raise InvalidField("name", "The name must not contain a web or email address.")
    return name


def parse_frequency(raw: str | Frequency | None) -> Frequency:
    if raw is None or raw == "":
        return Frequency.DAILY
    try:
        return Frequency(raw)
    except ValueError:
        choices = ", ".join(f.value for f in Frequency)
        raise InvalidField("frequency", f"Choose how often: {choices}.") from None


def _encodable(text: str) -> bool:
    # Lone surrogates cannot be stored or sent; they only arrive through broken input.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    if not _encodable(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", text)[:limit]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- reading --------------------------------------------------------------------------

BOUNCE_REASONS = ("hard-bounce", "soft-bounce")
# The statuses operators see and filter by: the subscription's own (the model's
# SubscriberStatus, extended rather than copied), and two that say the address is on
# the suppression list ("suppressed" includes "bounced"). The CLI's choices, the
# admin's filter, the API's models and its OpenAPI document all use this one enum.
ShownStatus = StrEnum(  # type: ignore[misc]
    "ShownStatus",
    [
        *((s.name, s.value) for s in SubscriberStatus),
        ("SUPPRESSED", "suppressed"),
        ("BOUNCED", "bounced"),
    ],
    module=__name__,
)
SHOWN_STATUSES: tuple[str, ...] = tuple(s.value for s in ShownStatus)
# What an import may store: consent held elsewhere, or a confirmation link to each.
IMPORT_STATUSES: tuple[str, ...] = (
    SubscriberStatus.PENDING.value,
    SubscriberStatus.CONFIRMED.value,
)


def shown_status(status: SubscriberStatus, suppression: str | None) -> str:
    if suppression in BOUNCE_REASONS:
        return "bounced"
    if suppression and status is not SubscriberStatus.UNSUBSCRIBED:
        return "suppressed"
    return status.value


def matches_status(view: SubscriberView, wanted: str) -> bool:
    shown = view.shown_status
    return shown == wanted or (wanted == "suppressed" and shown == "bounced")
