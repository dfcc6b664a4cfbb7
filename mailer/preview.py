"""One answer to "what would a digest sent now look like?", for every shell.

The admin's preview page, the API's ``/digests/preview`` and ``mailer digest
preview`` all show the message a reader (or the sample reader) would get, and,
when there would be none, why not. :mod:`mailer.digest` builds the message and the
reasons; this puts the two together so the shells ask once and answer alike.
"""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from datetime import datetime

from mailer.config import Settings
from mailer.db import Database
from mailer.digest import DigestPreview, SelectionReport, explain_digest, preview_digest


@dataclass(frozen=True)
class PreviewResult:
    # The message itself; None when no digest would be sent now.
    digest: DigestPreview | None
    # Who a send now would reach and why not more (for the sample reader: everyone).
    selection: SelectionReport

    @property
    def text(self) -> str:
        """The plain-text part of the message, as the reader's mail program shows it."""
        if self.digest is None:
            return ""
        parsed = email.message_from_bytes(self.digest.message.data, policy=email.policy.default)
        part = parsed.get_body(("plain",))  # type: ignore[attr-defined]
        return part.get_content() if part is not None else ""  # type: ignore[no-any-return]

    def reasons(self) -> list[str]:
        return self.selection.reasons()


async def preview_now(
    database: Database,
    settings: Settings,
    subscriber_email: str | None = None,
    *,
    now: datetime | None = None,
) -> PreviewResult:
    """The digest ``subscriber_email`` (None: a sample reader) would get now, with
    the reasons. Nothing is sent or marked as sent. Raises PreviewError for an
    unknown or unconfirmed subscriber, MessageError when the message cannot be made."""
    digest = await preview_digest(database, settings, subscriber_email, now)
    if digest is not None and digest.selection is not None:
        return PreviewResult(digest, digest.selection)
    selection = await explain_digest(database, settings, now=now, subscriber_email=subscriber_email)
    return PreviewResult(digest, selection)
