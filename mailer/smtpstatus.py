"""What a failed delivery says about the reader's address.

One rule for both places a failure is reported: the SMTP reply to mailer's own
session (transport.py) and a delivery status notification that arrives later
(bounces.py). The RFC 3463 enhanced status code decides where there is one:

- ``5.1.x`` (bad mailbox, bad domain) and ``5.2.1`` (mailbox disabled): the address
  is dead; it is suppressed (HARD). Except 5.1.7 and 5.1.8, which are about the
  sender's address (POLICY).
- ``5.2.2`` (mailbox full) and ``5.4.x`` (routing, DNS): the address may work again;
  counted as a soft bounce, retried in a session (SOFT).
- ``5.7.x``: policy, relaying or authentication refused. That is about the sender,
  not the reader, so nothing is suppressed; repeated across recipients it pauses the
  send (POLICY).
- any other ``5.x.x`` (message too big, content, protocol): the delivery failed but
  the address is fine (FAILED).

Without an enhanced code, the basic reply code decides: 550, 551 and 553 at RCPT
mean "no such mailbox" (RFC 5321), anything else fails without suppressing.
``5.0.0`` is "permanent, subject unknown", which DSNs and older servers use for
unknown users, so it counts as HARD.
"""

from __future__ import annotations

import enum
import re

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_ADDRESS_CODES = (550, 551, 553)


class Verdict(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"
    POLICY = "policy"
    FAILED = "failed"


def enhanced_code(text: str | None) -> str | None:
    """The enhanced status code a reply text or DSN Status field starts with."""
    match = _ENHANCED.match(text or "")
    return f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}" if match else None


def permanent_verdict(enhanced: str | None, code: int | None = None) -> Verdict:
    """The verdict on a permanent (5xx / 5.x.x) failure; see the module text."""
    if enhanced is not None:
        _, subject, detail = (int(part) for part in enhanced.split("."))
        if (subject, detail) in ((1, 7), (1, 8)):
            return Verdict.POLICY  # the sender's address is refused, not the reader's
        if subject == 1 or (subject, detail) == (2, 1) or (subject, detail) == (0, 0):
            return Verdict.HARD
        if (subject, detail) == (2, 2) or subject == 4:
            return Verdict.SOFT
        if subject == 7:
            return Verdict.POLICY
        return Verdict.FAILED
    if code is None or code in _ADDRESS_CODES:
        return Verdict.HARD
    return Verdict.FAILED


def policy_reason(code: int | None, message: str) -> str:
    """A sentence an operator understands for a 5.7.x refusal by the relay."""
    text = message.lower()
    reply = f"{code} {message}".strip() if code else message
    if "relay" in text:
        cause = "the relay refuses to relay for this host"
        advice = "add this machine to the relay's mynetworks or give mailer SMTP credentials"
    elif code in (530, 535) or "auth" in text:
        cause = "the relay requires authentication or refused the credentials"
        advice = "check smtp.username and smtp.password"
    else:
        cause = "the relay refuses the mail by policy"
        advice = "see the relay's log"
    return f"{cause} ({reply}); {advice}"
