"""Signed tokens for the links in emails (confirm, preferences, unsubscribe).

itsdangerous signs the payload with the site's secret key and a salt per purpose,
so a token for one purpose never works for another. Confirmation tokens carry the
subscriber's current ``confirm_nonce`` and expire; the nonce is cleared on use,
which makes them single-use. Preference and unsubscribe links must keep working
for as long as old emails sit in inboxes, so they do not expire.
"""

from __future__ import annotations

import enum
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
    nonce: str | None = None


def _serializer(settings: Settings, purpose: Purpose) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.get_secret_key(), salt=f"mailer.{purpose.value}")


def make_token(
    settings: Settings, purpose: Purpose, subscriber_id: int, nonce: str | None = None
) -> str:
    payload: list[int | str] = [subscriber_id] if nonce is None else [subscriber_id, nonce]
    return str(_serializer(settings, purpose).dumps(payload))


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


def link(settings: Settings, purpose: Purpose, subscriber_id: int, nonce: str | None = None) -> str:
    """The absolute URL a subscriber follows for ``purpose``."""
    path = {
        Purpose.CONFIRM: "confirm",
        Purpose.MANAGE: "preferences",
        Purpose.UNSUBSCRIBE: "unsubscribe",
    }[purpose]
    return f"{settings.site.base_url}/{path}/{make_token(settings, purpose, subscriber_id, nonce)}"
