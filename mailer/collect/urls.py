"""Canonical URLs: one spelling per page, so the same release found twice is one."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

# Query parameters that only say where a click came from.
_TRACKING_PREFIXES = ("utm_", "mc_", "_hs", "pk_", "mtm_")
_TRACKING_NAMES = {
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "igshid", "_ga",
    "_gl", "ref_src", "cmpid", "oly_enc_id", "oly_anon_id", "vero_id", "mkt_tok",
}  # fmt: skip
# Already canonical: a lower-case http(s) host without port, user or query, and a path
# of unreserved characters. Joining it to any base and splitting it again gives it
# back unchanged (an absolute URL is not resolved against the base), so the work of
# urljoin, urlsplit and urlencode is skipped for the usual feed link.
_CANONICAL = re.compile(r"https?://[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?/[A-Za-z0-9._~/-]*")


def canonical_url(url: str | None, base: str | None = None) -> str | None:
    """Absolute http(s) URL with the host in lower case, no default port, no
    fragment and no tracking parameters; None for anything else."""
    if not url:
        return None
    url = url.strip()
    if _CANONICAL.fullmatch(url):
        return url
    if base:
        url = urljoin(base, url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.netloc.rsplit("@", 1)[-1].lower()
    if (scheme, port) in (("http", 80), ("https", 443)):
        host = host.rsplit(":", 1)[0]
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if not name.lower().startswith(_TRACKING_PREFIXES) and name.lower() not in _TRACKING_NAMES
    ]
    return urlunsplit((scheme, host, parts.path or "/", urlencode(query), ""))
