"""The cheap address check that imports rely on agrees with email-validator."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.subscribers import InvalidAddress, normalize_address
from mailer.subscribers.values import _plain_address

# Characters that make the edge cases: every atext symbol, dots, hyphens, digits,
# upper case, a few that email-validator refuses, and some non-ASCII.
_LOCAL = st.text(alphabet="aZ09._-+!#$%&'*/=?^`{|}~\"\\ (),:;<>@[]Ž", min_size=0, max_size=70)
_LABEL = st.text(alphabet="aZx09-n_Ž.", min_size=0, max_size=66)
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=5).map(".".join) | st.sampled_from(
    [
        "example.org",
        "EXAMPLE.ORG",
        "mail.example.lt",
        "xn--80ak6aa92e.com",
        "ab--cd.org",
        "localhost",
        "a.localhost",
        "x.invalid",
        "x.arpa",
        "example.123",
        "a" * 64 + ".org",
        ("a" * 62 + ".") * 4 + "org",
    ]
)


def _validator(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError:
        return None


_ADDRESSES = st.builds(
    "{}@{}".format, _LOCAL | st.sampled_from(["Info", "POSTMASTER", "ona", "a" * 65]), _DOMAIN
) | st.from_regex(
    # Mostly plausible addresses, so that many take the fast path.
    r"[A-Za-z0-9._+'-]{1,20}@[A-Za-z0-9-]{1,8}(\.[A-Za-z0-9-]{1,8}){0,2}\.[A-Za-z0-9]{1,5}",
    fullmatch=True,
)


@settings(max_examples=1500, deadline=None)
@given(address=_ADDRESSES)
def test_fast_path_accepts_only_what_email_validator_accepts_and_normalises_alike(
    address: str,
) -> None:
    fast = _plain_address(address)
    if fast is not None:
        assert fast == _validator(address)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ona.Simonyte+news@Example.ORG", "Ona.Simonyte+news@example.org"),
        ("  reader@mail.example.lt ", "reader@mail.example.lt"),
        ("Info@Example.org", "info@example.org"),  # RFC 2142 names are case-insensitive
        # Punycode is shown decoded: the case the fast path must leave alone.
        ("ona@xn--80ak6aa92e.com", "ona@\u0430\u0440\u0440\u04cf\u0435.com"),
    ],
)
def test_common_and_uncommon_addresses_are_normalised_once(raw: str, expected: str) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    "raw", ["ona@example..org", "ona@localhost", "ona@x.invalid", "ona@-x.org", "Žygis@x.org"]
)
def test_refused_addresses_keep_email_validator_reasons(raw: str) -> None:
    with pytest.raises(InvalidAddress, match=r"not a valid email address|not allowed"):
        normalize_address(raw)
