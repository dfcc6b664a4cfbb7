"""Which SMTP refusals suppress the reader, which retry and which only fail."""

from __future__ import annotations

import aiosmtplib
import pytest

from mailer.smtpstatus import Verdict, enhanced_code, permanent_verdict, policy_reason
from mailer.transport import Outcome, classify


def _at_rcpt(code: int, message: str) -> aiosmtplib.SMTPRecipientRefused:
    return aiosmtplib.SMTPRecipientRefused(code, message, "reader@example.net")


@pytest.mark.parametrize(
    ("code", "message", "outcome", "suppress", "policy"),
    [
        (550, "5.1.1 <reader@example.net>: Recipient address rejected", "failed", True, False),
        (550, "5.2.1 Mailbox disabled", "failed", True, False),
        (552, "5.2.2 Mailbox full", "deferred", False, False),
        (554, "5.7.1 <reader@example.net>: Relay access denied", "failed", False, True),
        (530, "5.7.0 Authentication required", "failed", False, True),
        (550, "5.7.26 Unauthenticated email is not accepted", "failed", False, True),
        (552, "5.3.4 Message too big", "failed", False, False),
        (550, "User unknown", "failed", True, False),
        (554, "Transaction failed", "failed", False, False),
        (450, "4.2.0 Greylisted", "deferred", False, False),
    ],
)
def test_refusals_at_rcpt(
    code: int, message: str, outcome: str, suppress: bool, policy: bool
) -> None:
    result = classify(_at_rcpt(code, message))
    assert (result.outcome, result.hard_bounce, result.policy) == (
        Outcome(outcome),
        suppress,
        policy,
    )


def test_a_bare_5xx_after_data_is_about_the_message() -> None:
    result = classify(aiosmtplib.SMTPDataError(554, "Message rejected"))
    assert (result.outcome, result.hard_bounce) == (Outcome.FAILED, False)
    result = classify(aiosmtplib.SMTPDataError(550, "5.1.1 mailbox gone"))
    assert result.hard_bounce


def test_a_refused_sender_is_never_the_readers_fault() -> None:
    refused = aiosmtplib.SMTPSenderRefused(553, "5.1.8 Sender address rejected", "x@y.z")
    result = classify(refused)
    assert (result.outcome, result.hard_bounce, result.policy) == (Outcome.FAILED, False, True)
    assert permanent_verdict("5.1.7") is Verdict.POLICY


def test_a_temporary_refusal_of_the_sender_is_retried() -> None:
    for code, text in ((421, "4.3.2 Service shutting down"), (451, "4.7.1 Greylisted")):
        result = classify(aiosmtplib.SMTPSenderRefused(code, text, "x@y.z"))
        assert (result.outcome, result.hard_bounce, result.policy) == (
            Outcome.DEFERRED,
            False,
            False,
        )


def test_enhanced_codes() -> None:
    assert enhanced_code("5.7.26 no") == "5.7.26"
    assert enhanced_code("550 User unknown") is None
    assert enhanced_code("5.1.10 null MX") == "5.1.10"
    assert permanent_verdict("5.4.4") is Verdict.SOFT
    assert permanent_verdict("5.0.0") is Verdict.HARD


def test_policy_reasons_say_what_to_do() -> None:
    relay = policy_reason(554, "5.7.1 <a@b.c>: Relay access denied")
    assert relay.startswith("the relay refuses to relay for this host (554 5.7.1")
    assert "mynetworks" in relay
    assert "authentication" in policy_reason(530, "5.7.0 Authentication required")
