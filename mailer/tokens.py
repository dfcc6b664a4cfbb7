"""Signed tokens for the links in emails (confirm, preferences, unsubscribe).

itsdangerous signs the payload with the site's secret key and a salt per purpose,
so a token for one purpose never works for another. Confirmation tokens carry the
subscriber's current ``confirm_nonce`` and expire; the nonce is cleared on use,
which makes them single-use. Preference and unsubscribe links must keep working
for as long as old emails sit in inboxes, so they do not expire; instead they carry
the subscriber's random ``link_key``, which dies with the row. A link mailed to a
reader who was later erased or removed therefore never reaches whoever holds that
id (or that address) next.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from mailer.config import Settings


class Purpose(enum.StrEnum):
    CONFIRM = "confirm"
    MANAGE = "manage"
    UNSUBSCRIBE = "unsubscribe"


class InvalidToken(Exception):
    pass


class ExpiredToken(InvalidToken):
    pass


@dataclass(frozen=True)
class TokenPayload:
    subscriber_id: int
    # The confirm nonce (CONFIRM) or the subscriber's link key (MANAGE, UNSUBSCRIBE);
    # None only in links made before keys existed, which no longer work.
    key: str | None = None


def _serializer(settings: Settings, purpose: Purpose) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.get_secret_key(), salt=f"mailer.{purpose.value}")


def make_token(settings: Settings, purpose: Purpose, subscriber_id: int, key: str) -> str:
    """``key`` is the confirm nonce for CONFIRM, the subscriber's link key otherwise."""
    return str(_serializer(settings, purpose).dumps([subscriber_id, key]))


def read_token(
    settings: Settings, purpose: Purpose, token: str, max_age: timedelta | None = None
) -> TokenPayload:
    serializer = _serializer(settings, purpose)
    try:
        seconds = int(max_age.total_seconds()) if max_age else None
        payload = serializer.loads(token, max_age=seconds)
    except SignatureExpired:
        raise ExpiredToken("this link has expired") from None
    except (BadSignature, ValueError, TypeError):
        raise InvalidToken("this link is not valid") from None
    if (
        not isinstance(payload, list)
        or not 1 <= len(payload) <= 2
        or not isinstance(payload[0], int)
        or (len(payload) == 2 and not isinstance(payload[1], str))
    ):
        raise InvalidToken("this link is not valid")
    return TokenPayload(payload[0], payload[1] if len(payload) == 2 else None)


def link(settings: Settings, purpose: Purpose, subscriber_id: int, key: str) -> str:
    """The absolute URL a subscriber follows for ``purpose``."""
    path = {
        Purpose.CONFIRM: "confirm",
        Purpose.MANAGE: "preferences",
        Purpose.UNSUBSCRIBE: "unsubscribe",
    }[purpose]
    return f"{settings.site.base_url}/{path}/{make_token(settings, purpose, subscriber_id, key)}"


# --- tokens in mail addresses -----------------------------------------------------------
#
# The envelope sender of every message (``bounces+d42.<sig>@…``) and the mailto in
# List-Unsubscribe (``bounces+u7.<sig>@…``) carry a token. MTAs lowercase addresses
# (Postfix can, on the way to a mailbox), so itsdangerous' case-sensitive base64
# cannot be used here: the signature is a keyed BLAKE2b MAC in lowercase hex (a C
# one-shot call: two tokens per message must not slow the sender down) and tokens
# are compared after lowercasing. 64 bits of MAC make it unguessable, so a bounce or
# an unsubscribe request by mail can only come back to an address mailer itself used.
# An unsubscribe token also signs the subscriber's link key (like the https links), so
# a mailto kept from an erased reader never unsubscribes whoever holds that id next.


class MailTokenKind(enum.StrEnum):
    DELIVERY = "d"  # a digest delivery: bounces name the delivery row
    UNSUBSCRIBE = "u"  # a subscriber's List-Unsubscribe mailto
    RECIPIENT = "t"  # a one-off message (confirmation, notice): signs the recipient


@dataclass(frozen=True)
class MailToken:
    kind: MailTokenKind
    number: int | None  # the delivery or subscriber id; None for RECIPIENT tokens
    signature: str


_MAIL_TOKEN = re.compile(r"^([dut])(\d{0,19})\.([0-9a-f]{16})$")


class MailTokenSigner:
    """Signs and checks address tokens; build once, use for many messages."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.get_secret_key().encode()
        self._key = hashlib.sha256(b"mailer.address-token:" + secret).digest()

    def _signature(self, payload: str) -> str:
        return hashlib.blake2b(payload.encode(), key=self._key, digest_size=8).hexdigest()

    def token(self, kind: MailTokenKind, number: int, link_key: str | None = None) -> str:
        """``link_key`` is required for UNSUBSCRIBE tokens and ignored otherwise."""
        payload = f"{kind.value}{number}"
        return f"{payload}.{self._signature(self._signed(kind, payload, link_key))}"

    @staticmethod
    def _signed(kind: MailTokenKind, payload: str, link_key: str | None) -> str:
        if kind is not MailTokenKind.UNSUBSCRIBE:
            return payload
        if not link_key:
            raise ValueError("an unsubscribe token needs the subscriber's link key")
        return f"{payload}:{link_key}"

    def recipient_token(self, address: str) -> str:
        return f"t.{self._signature('t:' + address.strip().lower())}"

    def read(self, token: str) -> MailToken | None:
        """The token's content if it is well-formed and signed by this site."""
        match = _MAIL_TOKEN.match(token.strip().lower())
        if match is None:
            return None
        kind, digits, signature = MailTokenKind(match.group(1)), match.group(2), match.group(3)
        if kind is MailTokenKind.RECIPIENT:
            # Checked against the reported recipient by recipient_matches().
            return None if digits else MailToken(kind, None, signature)
        if kind is MailTokenKind.UNSUBSCRIBE:
            # Checked against the subscriber's link key by link_key_matches().
            return MailToken(kind, int(digits), signature) if digits else None
        if not digits or not hmac.compare_digest(
            signature, self._signature(f"{kind.value}{digits}")
        ):
            return None
        return MailToken(kind, int(digits), signature)

    def link_key_matches(self, token: MailToken, link_key: str) -> bool:
        """Whether an UNSUBSCRIBE token was made for the subscriber holding ``link_key``."""
        if token.kind is not MailTokenKind.UNSUBSCRIBE or token.number is None or not link_key:
            return False
        expected = self._signature(f"{token.kind.value}{token.number}:{link_key}")
        return hmac.compare_digest(token.signature, expected)

    def recipient_matches(self, token: MailToken, address: str) -> bool:
        expected = self.recipient_token(address).split(".", 1)[1]
        return hmac.compare_digest(token.signature, expected)


def address_extension(address: str) -> str | None:
    """The part after the first '+' of an address's local part (``a+x@b`` -> ``x``)."""
    local, at, _ = address.strip().strip("<>").rpartition("@")
    if not at or "+" not in local:
        return None
    return local.split("+", 1)[1]
