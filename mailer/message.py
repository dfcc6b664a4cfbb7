"""The emails themselves: the digest, the confirmation request and notices.

How a digest is personalised quickly (the sender's throughput rests on this)
---------------------------------------------------------------------------
Thousands of subscribers receive the same releases; only a handful of values
differ between their messages: the greeting with their name, their address, the
links carrying their signed tokens, the Message-ID and the Date. So the work is
split in two:

1. Once per *content* (the same set of releases, grouped the same way) the
   :class:`MessageComposer` renders the HTML and text templates with unguessable
   marker strings in place of every per-recipient value, inlines the CSS, and
   cuts each rendered part at the markers. Every fixed piece is quoted-printable
   encoded right away, and the per-content headers (Subject, From, List-Id, ...)
   are encoded too. The result, a :class:`_Content`, is cached (LRU).
2. Per recipient, :meth:`MessageComposer.compose` encodes only the few small
   values (escaped for HTML, raw for text) and joins the pre-encoded pieces with
   them: a ``bytes.join`` over a couple of dozen items, no template rendering, no
   CSS work and no MIME tree.

Quoted-printable makes the splice safe: each fixed piece is encoded with lines of
at most 75 characters, and every value is put between soft line breaks (``=``
CRLF, which decoders remove), so the decoded text is exactly the rendered
template with the values in place, and no encoded line exceeds 76 characters.
The multipart boundary contains ``=_``, which quoted-printable output can never
contain, so no body content can end a part early.

Values given by subscribers (their name) and by sources (release titles in a
subject) can contain anything: they are reduced to one line of printable
characters before they reach a header, and HTML-escaped in the HTML part.
"""

from __future__ import annotations

import base64
import email.quoprimime
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, parseaddr
from typing import Any

import css_inline
from itsdangerous import TimestampSigner
from jinja2 import Environment, TemplateNotFound
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailer import tokens
from mailer.config import Settings
from mailer.dkim import DkimSigner, PieceMemo, load_signer
from mailer.engagement import LinkSigner
from mailer.models import Digest, Release, SubscriberTopic, Topic
from mailer.templating import template_environment
from mailer.tokens import MailTokenKind, MailTokenSigner, Purpose, address_extension, link

# Gmail hides everything after the first 102 KB of a message's HTML behind a
# "[Message clipped]" link, the footer with the unsubscribe link included. The
# budget is measured on the encoded part and leaves room for the per-recipient values.
HTML_SIZE_BUDGET = 100_000
# Headers that are per content or per recipient; everything the composer writes.
SUMMARY_CHARACTERS = 420
COMPACT_SUMMARY_CHARACTERS = 160
CONTENT_CACHE_SIZE = 256

_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
# The composer checks addresses itself because a bad one must never reach a header.
# Full syntax validation happened at signup (email-validator); this only guarantees
# one plain addr-spec without whitespace, brackets or separators.
_ADDR_SPEC = re.compile(r"^[^\s<>()\[\],;:\\\"@]+@[^\s<>()\[\],;:\\\"@]+$")
# A display name that can go into a header as a quoted-string without encoding.
_PLAIN_NAME = re.compile(r"^[\x20-\x7e]{1,60}$")


class MessageError(ValueError):
    """A message cannot be built from what was given (the reason is in the text)."""


@dataclass(frozen=True)
class ComposedMessage:
    """A complete message, ready for SMTP: ``data`` has CRLF line endings."""

    envelope_from: str
    recipients: list[str]
    data: bytes
    message_id: str
    # ``data`` as the SMTP DATA payload (dot-stuffed, terminated), when the composer
    # could build it from pre-stuffed pieces; None: the transport makes it.
    wire: bytes | None = None


@dataclass(frozen=True)
class SourceLink:
    name: str
    url: str | None


def credit_line(photo_credit: str | None) -> str | None:
    """The photo credit as the publisher wrote it ("Photo by X / ELTA.", "X
    nuotr."); a bare name (a feed's media:credit) gets a label."""
    if not photo_credit:
        return None
    if _CREDIT_LABEL.search(photo_credit):
        return photo_credit
    return f"Photo: {photo_credit}"


def shown_publication(published_at: datetime, date_only: bool) -> datetime | date:
    """What readers are shown: the day itself for a date without a time (stored as
    that day at 00:00 UTC), so no timezone moves it to another day."""
    return published_at.astimezone(UTC).date() if date_only else published_at


@dataclass(frozen=True)
class DigestItem:
    """What a digest shows of one release (plain data, so rendering needs no session)."""

    id: int
    title: str
    url: str | None
    published_at: datetime
    published_estimated: bool
    summary: str
    image_url: str | None
    image_alt: str
    photo_credit: str | None
    publisher: str | None
    sources: tuple[SourceLink, ...]
    topic_ids: tuple[int, ...] = ()
    published_date_only: bool = False

    @property
    def credit(self) -> str | None:
        return credit_line(self.photo_credit)

    @property
    def published(self) -> datetime | date:
        return shown_publication(self.published_at, self.published_date_only)

    @classmethod
    def from_release(cls, release: Release) -> DigestItem:
        """From a Release with ``links`` and ``topics`` loaded (both load eagerly)."""
        sources: list[SourceLink] = []
        seen: set[tuple[str, str | None]] = set()
        for release_link in release.links:
            url = _web_url(release_link.url) or _web_url(release.canonical_url)
            key = (release_link.source_name, url)
            if key not in seen:
                seen.add(key)
                sources.append(SourceLink(release_link.source_name, url))
        primary = _web_url(release.canonical_url) or next(
            (source.url for source in sources if source.url), None
        )
        title = one_line(release.title) or "(untitled release)"
        return cls(
            id=release.id,
            title=title,
            url=primary,
            published_at=release.published_at,
            published_estimated=bool(release.published_estimated),
            summary=_summary_of(release.summary or release.text or ""),
            image_url=_web_url(release.image_url),
            image_alt=one_line(release.image_alt or "") or title,
            photo_credit=one_line(release.photo_credit) or None,
            publisher=_publisher(release.publisher),
            sources=tuple(sources),
            topic_ids=tuple(topic.id for topic in release.topics),
            published_date_only=bool(release.published_date_only),
        )


TEST_SUBJECT_PREFIX = "[Test]"


def one_line(value: str | None) -> str:
    """Any text as one line of printable characters: safe to put into a header."""
    if not value:
        return ""
    return _SPACES.sub(" ", _LINE_BREAKING.sub(" ", value)).strip()


_CREDIT_LABEL = re.compile(
    r"^[(\[]?(photo|foto|nuotr|image|picture|credit|©)|(nuotr\.?|nuotrauka)[)\]]?$", re.I
)


def _publisher(publisher: str | None) -> str | None:
    # Lazy: any mailer.collect module runs the package's __init__, which reaches
    # ingest -> arrivals -> send -> digest -> this module (a cycle at the top).
    from mailer.collect.boilerplate import is_bare_host

    name = one_line(publisher)
    return name if name and not is_bare_host(name) else None


def _web_url(url: str | None) -> str | None:
    if url and re.match(r"^https?://[^\s\"'<>]+$", url.strip(), re.IGNORECASE):
        return url.strip()
    return None


def _summary_of(text: str, limit: int = SUMMARY_CHARACTERS) -> str:
    return shorten(" ".join(text.split()), limit)


def shorten(text: str, limit: int) -> str:
    """Cut at a word boundary and mark the cut with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:.-–—")
    return f"{cut}…"


def return_path(settings: Settings) -> tuple[str, str]:
    """Local part and domain of the envelope sender: ``bounces.address`` or the From."""
    address = settings.bounces.address or settings.sender.from_address
    local, _, domain = address.rpartition("@")
    return local, domain


def parse_verp(settings: Settings, address: str) -> int | None:
    """The delivery id a VERP bounce address names, if its token is this site's."""
    extension = address_extension(address)
    found = MailTokenSigner(settings).read(extension) if extension else None
    return found.number if found and found.kind is MailTokenKind.DELIVERY else None


def verp_address(settings: Settings, delivery_id: int) -> str:
    local, domain = return_path(settings)
    token = MailTokenSigner(settings).token(MailTokenKind.DELIVERY, delivery_id)
    return f"{local}+{token}@{domain}"


def checked_address(address: str) -> str:
    """The recipient address as it may appear in a header and in RCPT TO.

    Raises MessageError for anything that is not one plain address, such as a
    value carrying line breaks (a header-injection attempt) or a second address.
    """
    candidate = address.strip()
    if not _ADDR_SPEC.match(candidate):
        raise MessageError(f"{address!r} is not a single email address")
    local, _, domain = candidate.rpartition("@")
    if not local.isascii():
        raise MessageError(
            f"{address!r} has a non-ASCII local part, which needs SMTPUTF8 (not supported)"
        )
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise MessageError(f"{address!r} has a domain that cannot be encoded") from None
    return f"{local}@{domain}"


def _display_name(name: str | None) -> str:
    return one_line(name)[:200]


def _to_header(name: str, address: str) -> bytes:
    if not name:
        return f"To: {address}\r\n".encode("ascii")
    if _PLAIN_NAME.match(name):
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'To: "{quoted}" <{address}>\r\n'.encode("ascii")
    raw = name.encode("utf-8")
    if len(raw) <= 45:
        # The common case (a short non-ASCII name) as one RFC 2047 encoded word of
        # at most 72 characters, written directly: email.header takes ~50 µs for it,
        # a quarter of the whole per-recipient budget.
        encoded = f"=?utf-8?b?{base64.b64encode(raw).decode('ascii')}?="
    else:
        # Longer names: several encoded words of at most 75 characters, folded.
        encoded = Header(name, "utf-8", header_name="To").encode(linesep="\r\n")
    return f"To: {encoded}\r\n <{address}>\r\n".encode("ascii")


def _headers(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """Encode fixed headers once with the standard library (RFC 2047, folding)."""
    message = EmailMessage(policy=SMTP)
    for name, value in pairs:
        message[name] = value
    return message.as_bytes().removesuffix(b"\r\n")


_QP_LITERAL = re.compile(r"^[\x21-\x3c\x3e-\x7e]+(?: [\x21-\x3c\x3e-\x7e]+)*$")


def _qp(text: str) -> bytes:
    """Quoted-printable, CRLF, lines of at most 75 characters (one spare for a splice)."""
    if not text:
        return b""
    if _QP_LITERAL.match(text):
        # Printable ASCII without "=" and without leading, trailing or repeated
        # spaces (URLs, most names) stands for itself: only soft line breaks are
        # needed. A shortcut for the per-recipient values, which are encoded for
        # every message; anything else goes through the standard encoder.
        return b"=\r\n".join(
            text[start : start + 75].encode("ascii") for start in range(0, len(text), 75)
        )
    latin = text.encode("utf-8").decode("latin-1")
    return email.quoprimime.body_encode(latin, maxlinelen=75, eol="\r\n").encode("ascii")


def _sender_address(settings: Settings) -> Address:
    name, address = parseaddr(settings.sender.from_)
    local, _, domain = address.rpartition("@")
    return Address(display_name=one_line(name), username=local, domain=domain)


def delivery_of_message_id(signer: MailTokenSigner, message_id: str) -> int | None:
    """The delivery a digest's Message-ID names, if this site signed it."""
    local = message_id.strip().strip("<>").rpartition("@")[0]
    token = signer.read(local.partition(".")[2])
    if token is None or token.kind is not MailTokenKind.DELIVERY:
        return None
    return token.number


def _message_id(settings: Settings, tag: str) -> str:
    return f"<{int(time.time())}.{tag}.{secrets.token_hex(8)}@{settings.sender.domain}>"


def _reply_to(settings: Settings) -> Address | None:
    if not settings.sender.reply_to:
        return None
    name, address = parseaddr(settings.sender.reply_to)
    local, _, domain = address.rpartition("@")
    return Address(display_name=one_line(name), username=local, domain=domain)


def site_context(settings: Settings) -> dict[str, Any]:
    return {
        "site": {
            "name": settings.site.name,
            "base_url": settings.site.base_url,
            "postal_address": settings.site.postal_address,
        },
        "timezone": settings.digest.timezone,
    }


# --- the cut-and-splice machinery ---------------------------------------------------

# Per-recipient values the templates can use, as attributes of ``recipient``.
# ``reader`` is empty unless tracking.individual: then "/<signed delivery>" after
# every tracked link (see mailer.engagement).
SLOTS = ("greeting", "name", "email", "unsubscribe_url", "preferences_url", "reader")


class _Markers:
    """Unguessable stand-ins for the per-recipient values during rendering."""

    def __init__(self) -> None:
        token = secrets.token_hex(8)
        self.by_slot = {slot: f"mailerslot{token}{index}x" for index, slot in enumerate(SLOTS)}
        self.pattern = re.compile(f"mailerslot{token}(\\d)x")

    def split(self, rendered: str, part: str) -> list[bytes | tuple[str, str]]:
        """Encoded fixed pieces interleaved with (part, slot) placeholders."""
        pieces: list[bytes | tuple[str, str]] = []
        position = 0
        for match in self.pattern.finditer(rendered):
            pieces.append(_qp(rendered[position : match.start()]) + b"=\r\n")
            pieces.append((part, SLOTS[int(match.group(1))]))
            pieces.append(b"=\r\n")
            position = match.end()
        pieces.append(_qp(rendered[position:]))
        return pieces


@dataclass(frozen=True)
class _Content:
    """One rendered and encoded body, shared by every recipient of the same content."""

    # Encoded header lines, CRLF-terminated, in the order they appear in a message.
    head_from: bytes
    head_subject: bytes
    head_list: bytes  # Reply-To (when configured), List-Id
    head_tail: bytes  # Auto-Submitted, MIME-Version
    pieces: tuple[bytes | tuple[str, str], ...]
    html: str  # rendered HTML with markers (for previews and checks)
    text: str
    html_bytes: int  # size of the encoded HTML part
    # The (part, slot) pairs the pieces use, text first: only these are encoded.
    slots: tuple[tuple[str, str], ...]
    item_count: int
    # What the DKIM signer learnt about the pieces above (they recur in every message).
    signing_memo: PieceMemo = field(default_factory=PieceMemo, compare=False, repr=False)
    # ``pieces`` made ready for the wire once (see _wire_pieces), or None.
    wire_pieces: tuple[bytes | tuple[str, str, bool], ...] | None = field(
        init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        heads = (self.head_from, self.head_subject, self.head_list, self.head_tail)
        wire = _wire_pieces(self.pieces) if all(map(_wire_header, heads)) else None
        object.__setattr__(self, "wire_pieces", wire)


def _wire_pieces(
    pieces: tuple[bytes | tuple[str, str], ...],
) -> tuple[bytes | tuple[str, str, bool], ...] | None:
    """The body pieces as SMTP carries them (RFC 5321 4.5.2: a line that starts with
    a dot gets a second one), so that a message costs a join instead of a scan of
    its 40 KB (``transport.wire_format``). A slot becomes (part, slot, whether it
    starts a line). None when a piece would need its neighbour to decide (a fixed
    piece starting with a dot right after a value) or has a bare CR or LF."""
    ready: list[bytes | tuple[str, str, bool]] = []
    line_start = True  # the header section ends with a line end
    for piece in pieces:
        if isinstance(piece, tuple):
            ready.append((*piece, line_start))
            line_start = False  # values are one line: see _wire_value
            continue
        if not piece:
            continue
        if not _crlf_only(piece) or (piece.startswith(b".") and not line_start):
            return None
        stuffed = piece.replace(b"\n.", b"\n..")
        ready.append(b"." + stuffed if line_start and piece.startswith(b".") else stuffed)
        line_start = piece.endswith(b"\n")
    return tuple(ready) if line_start else None


def _crlf_only(data: bytes) -> bool:
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


def _wire_header(lines: bytes) -> bool:
    """Whether header lines go on the wire as they are. They never start with a dot
    (a continuation line starts with whitespace); checked all the same, it is cheap."""
    return not lines or (
        _crlf_only(lines) and lines.endswith(b"\n") and lines[:1] != b"." and b"\n." not in lines
    )


def _wire_value(value: bytes, line_start: bool) -> bytes | None:
    """A per-recipient piece stuffed as in _wire_pieces; None when it has a bare CR
    or LF or ends a line (the piece after it was stuffed assuming it does not)."""
    if b"\r" in value or b"\n" in value:
        if not _crlf_only(value) or value.endswith(b"\n"):
            return None
        value = value.replace(b"\n.", b"\n..")
    return b"." + value if line_start and value.startswith(b".") else value


def _merge(pieces: Iterable[bytes | tuple[str, str]]) -> tuple[bytes | tuple[str, str], ...]:
    merged: list[bytes | tuple[str, str]] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return tuple(merged)


def _minify(html: str) -> str:
    # Indentation from the templates is dead weight in the size budget; the email
    # templates contain no <pre> or <textarea> where leading spaces would matter.
    return "\n".join(line.strip() for line in html.splitlines() if line.strip())


_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


_KEPT_STYLE = re.compile(r"<head>(<style>.*?</style>)(.*?)</head>", re.S)


def _inline(html: str) -> str:
    # @media rules (dark mode, narrow screens) cannot be inlined; keep_at_rules
    # leaves them in a <style> block for the clients that honour it. css-inline puts
    # that block first in <head>; it goes last, so that <meta charset> stays within
    # the first bytes of the document, where browsers look for it.
    inlined = _INLINER.inline(html)
    return _KEPT_STYLE.sub(r"<head>\2\1</head>", inlined, count=1)


def _body_pieces(
    boundary: str, text_pieces: list[bytes | tuple[str, str]], html_pieces: list[Any]
) -> tuple[bytes | tuple[str, str], ...]:
    part_head = (
        '--{b}\r\nContent-Type: text/{kind}; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    return _merge(
        [
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
            part_head.format(b=boundary, kind="plain").encode(),
            *text_pieces,
            b"\r\n",
            part_head.format(b=boundary, kind="html").encode(),
            *html_pieces,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )


def _new_boundary() -> str:
    # "=_" never occurs in quoted-printable output (a literal "=" is encoded as =3D).
    return f"=_mailer_{secrets.token_hex(12)}"


class _LinkMaker:
    """``tokens.link`` for many subscribers: the same URLs, but the signing
    serializer and its signer are built once instead of per link, and the signer
    is given the key itsdangerous derives from the secret and the salt, which it
    would otherwise derive again (an HMAC) for every link."""

    def __init__(self, settings: Settings, purpose: Purpose) -> None:
        self._prefix = link(settings, purpose, 0, "").rsplit("/", 1)[0] + "/"
        self._serializer = tokens._serializer(settings, purpose)
        signer = self._serializer.make_signer()
        self._signer = TimestampSigner(
            signer.derive_key(),
            salt=signer.salt,
            sep=signer.sep,
            key_derivation="none",
            digest_method=signer.digest_method,
        )

    def url(self, subscriber_id: int, link_key: str) -> str:
        payload = self._serializer.dump_payload([subscriber_id, link_key])
        return self._prefix + self._signer.sign(payload).decode("ascii")


class _Greeting:
    """The greeting line from ``email/greeting.txt.j2``, rendered twice (with and
    without a name) rather than once per recipient: the template gets a stand-in
    name, replaced by the real one afterwards. So templates use ``name`` as a
    value (print it, test it for presence), not as something to transform."""

    def __init__(self, environment: Environment) -> None:
        template = environment.get_template("email/greeting.txt.j2")
        self._stand_in = f"mailername{secrets.token_hex(8)}x"
        self._with_name = one_line(template.render(name=self._stand_in))
        self._without_name = one_line(template.render(name=""))

    def for_name(self, name: str) -> str:
        if not name:
            return self._without_name
        return self._with_name.replace(self._stand_in, name)


# --- digest --------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicGroup:
    name: str | None
    items: tuple[DigestItem, ...]


@dataclass
class MessageComposer:
    """Builds digest messages; one instance serves many recipients (see module doc).

    ``topic_choices`` maps subscriber ids to the topic ids they chose: a subscriber
    with several gets the digest grouped under those topics.
    """

    settings: Settings
    releases_by_id: Mapping[int, Release | DigestItem]
    topic_choices: Mapping[int, Sequence[int]] = field(default_factory=dict)
    topic_names: Mapping[int, str] = field(default_factory=dict)
    signer: DkimSigner | None = None
    cache_size: int = CONTENT_CACHE_SIZE
    # The digest's web version ("View in browser"); None when the archive is private.
    web_url: str | None = None
    # The send: tracked links and the open image name it (tracking.clicks/opens).
    digest_id: int | None = None

    def __post_init__(self) -> None:
        self._items: dict[int, DigestItem] = {
            release_id: item if isinstance(item, DigestItem) else DigestItem.from_release(item)
            for release_id, item in self.releases_by_id.items()
        }
        if self.signer is None:
            self.signer = load_signer(self.settings)
        self._environment = template_environment(self.settings)
        self._markers = _Markers()
        self._cache: OrderedDict[tuple[Any, ...], _Content] = OrderedDict()
        self._greeting = _Greeting(self._environment)
        self._links = {
            purpose: _LinkMaker(self.settings, purpose)
            for purpose in (Purpose.UNSUBSCRIBE, Purpose.MANAGE)
        }
        # Parsed once: the sender address is needed for every message.
        domain = self.settings.sender.domain
        # Names the delivery with the return path's signed token: a bounce that quotes
        # it is matched to its row without the Message-ID being stored (see
        # delivery_of_message_id).
        self._message_id = f"<{{}}.{{}}@{domain}>"
        self._address_tokens = MailTokenSigner(self.settings)
        self._return_path = "{}+{{}}@{}".format(*return_path(self.settings))
        # The mailto unsubscribe is advertised only where mailer reads that mail.
        self._mailto_unsubscribe = self.settings.bounces.enabled
        self._missing: set[int] = set()
        tracking = self.settings.tracking
        # The send an unsubscribe link came from, for the send's report (not signed:
        # a reader can only move their own unsubscribe to another send of theirs).
        self._from_send = f"?send={self.digest_id}" if self.digest_id is not None else ""
        self._tracked = (
            LinkSigner(self.settings)
            if self.digest_id is not None and (tracking.clicks or tracking.opens)
            else None
        )
        # Only individual tracking names the message in its links.
        self._readers = self._tracked if tracking.individual else None
        self.renders = 0  # how many bodies were rendered (the rest came from the cache)

    @classmethod
    async def load(
        cls,
        session: AsyncSession,
        settings: Settings,
        release_ids: Iterable[int],
        subscriber_ids: Iterable[int] = (),
        digest_id: int | None = None,
    ) -> MessageComposer:
        """A composer with the given releases loaded, and the topic choices of the
        given subscribers (a worker passes none: it reads each claimed batch's
        choices and hands them to :meth:`compose`, so no map of every reader is
        held for a send). ``digest_id`` gives the messages their "View in browser"
        link."""
        ids = sorted(set(release_ids))
        releases: dict[int, Release] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await session.scalars(select(Release).where(Release.id.in_(chunk)))
            releases.update({release.id: release for release in rows})
        topic_names = {
            topic.id: topic.name
            for topic in await session.scalars(select(Topic).where(Topic.active.is_(True)))
        }
        choices = await load_topic_choices(session, subscriber_ids)
        web_url = None
        if digest_id is not None and settings.archive.public:
            public_id = await session.scalar(select(Digest.public_id).where(Digest.id == digest_id))
            if public_id is not None:
                web_url = f"{settings.site.base_url}/digests/{public_id}"
        return cls(
            settings,
            releases,
            topic_choices=choices,
            topic_names=topic_names,
            web_url=web_url,
            digest_id=digest_id,
        )

    def has_releases(self, release_ids: Iterable[int]) -> bool:
        """True when every id is loaded or known to be gone (deleted since planning)."""
        return all(i in self._items or i in self._missing for i in release_ids)

    async def add_releases(self, session: AsyncSession, release_ids: Iterable[int]) -> None:
        """Load releases this composer has not seen yet (a later content of the send)."""
        missing = sorted({i for i in release_ids if i not in self._items})
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            for release in await session.scalars(select(Release).where(Release.id.in_(chunk))):
                self._items[release.id] = DigestItem.from_release(release)
        self._missing.update(i for i in missing if i not in self._items)

    # -- per content

    def grouping_for(
        self, subscriber_id: int | None, topics: Sequence[int] | None = None
    ) -> tuple[int, ...]:
        """The topics a subscriber's digest is grouped by (none: one flat list).
        ``topics``: the ones they chose, when the caller read them; None: look
        them up in ``topic_choices``."""
        if subscriber_id is None:
            return ()
        if topics is None:
            topics = self.topic_choices.get(subscriber_id, ())
        chosen = [t for t in topics if t in self.topic_names]
        return tuple(sorted(chosen)) if len(chosen) > 1 else ()

    def content(
        self, release_ids: Iterable[int], grouping: tuple[int, ...] = (), *, test: bool = False
    ) -> _Content:
        present = tuple(sorted({i for i in release_ids if i in self._items}))
        if not present:
            raise MessageError("none of the digest's releases exist any more")
        key = (present, grouping, test)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        content = self._render([self._items[i] for i in present], grouping, test)
        self._cache[key] = content
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return content

    def _groups(self, items: list[DigestItem], grouping: tuple[int, ...]) -> list[TopicGroup]:
        newest_first = sorted(items, key=lambda item: (item.published_at, item.id), reverse=True)
        if not grouping:
            return [TopicGroup(None, tuple(newest_first))]
        buckets: dict[int | None, list[DigestItem]] = {topic: [] for topic in grouping}
        buckets[None] = []
        for item in newest_first:
            home = next((t for t in grouping if t in item.topic_ids), None)
            buckets[home].append(item)
        groups = [
            TopicGroup(self.topic_names[topic], tuple(buckets[topic]))
            for topic in grouping
            if buckets[topic]
        ]
        if buckets[None]:
            groups.append(TopicGroup("Other releases", tuple(buckets[None])))
        return groups

    def subject_for(self, items: Sequence[DigestItem]) -> str:
        digest = self.settings.digest
        if len(items) == 1 and digest.subject_single:
            pattern = digest.subject_single
        else:
            pattern = digest.subject
        title = items[0].title if items else ""
        subject = pattern.format_map(
            {"site": self.settings.site.name, "count": len(items), "title": title}
        )
        return one_line(subject)

    def _render(
        self, items: list[DigestItem], grouping: tuple[int, ...], test: bool = False
    ) -> _Content:
        self.renders += 1
        items, open_image = self._with_tracking(items)
        groups = self._groups(items, grouping)
        ordered = [item for group in groups for item in group.items]
        subject = self.subject_for(ordered)
        if test:
            # A test send says so where the recipient looks first.
            subject = f"{TEST_SUBJECT_PREFIX} {subject}"
        context = {
            **site_context(self.settings),
            "subject": subject,
            "groups": groups,
            "grouped": bool(grouping),
            "count": len(ordered),
            "preheader": _preheader(ordered),
            "recipient": self._markers.by_slot,
            "test": test,
            "web_url": self.web_url,
            "open_image": open_image,
        }
        text = self._environment.get_template("email/digest.txt.j2").render(context)
        html, html_pieces, html_bytes = self._render_html(context, groups, ordered)
        boundary = _new_boundary()
        text_pieces = self._markers.split(text, "text")
        used = {p for p in (*text_pieces, *html_pieces) if isinstance(p, tuple)}
        slots = tuple(sorted(used, key=lambda pair: (pair[0] != "text", pair[1])))
        reply_to = _reply_to(self.settings)
        list_id = f"{one_line(self.settings.site.name)} <{self.settings.sender.list_id}>"
        return _Content(
            head_from=_headers([("From", _sender_address(self.settings))]),
            head_subject=_headers([("Subject", subject)]),
            head_list=_headers(
                ([("Reply-To", reply_to)] if reply_to is not None else []) + [("List-Id", list_id)]
            ),
            head_tail=_headers([("Auto-Submitted", "auto-generated"), ("MIME-Version", "1.0")]),
            pieces=_body_pieces(boundary, text_pieces, html_pieces),
            slots=slots,
            html=html,
            text=text,
            html_bytes=html_bytes,
            item_count=len(ordered),
        )

    def _with_tracking(self, items: list[DigestItem]) -> tuple[list[DigestItem], str | None]:
        """Release links through /r/ and the open image, per content: the URLs name
        the send and the release only, plus the reader slot under individual tracking."""
        if self._tracked is None or self.digest_id is None:
            return items, None
        tracking = self.settings.tracking
        reader = self._markers.by_slot["reader"] if tracking.individual else ""
        if tracking.clicks:
            items = [
                replace(item, url=self._tracked.click_url(self.digest_id, item.id) + reader)
                if item.url
                else item
                for item in items
            ]
        open_image = self._tracked.open_url(self.digest_id) + reader if tracking.opens else None
        return items, open_image

    def _render_html(
        self, context: dict[str, Any], groups: list[TopicGroup], ordered: list[DigestItem]
    ) -> tuple[str, list[bytes | tuple[str, str]], int]:
        """The HTML part within Gmail's clipping limit.

        The full layout first; if it is too large, the compact one (short summaries,
        no images); if even that is too large, the newest releases that fit, with a
        note that the plain-text part lists them all. Never a clipped footer.
        """
        template = self._environment.get_template("email/digest.html.j2")

        def attempt(compact: bool, shown: list[DigestItem]) -> tuple[str, list[Any], int]:
            rendered = template.render(
                {
                    **context,
                    "compact": compact,
                    "shown": len(shown),
                    "groups": _regroup(groups, shown),
                }
            )
            html = _inline(_minify(rendered))
            pieces = self._markers.split(html, "html")
            return html, pieces, sum(len(p) for p in pieces if isinstance(p, bytes))

        for compact in (False, True):
            result = attempt(compact, ordered)
            if result[2] <= HTML_SIZE_BUDGET:
                return result
        fitting, low, high = attempt(True, ordered[:1]), 1, len(ordered) - 1
        while low < high:
            middle = (low + high + 1) // 2
            result = attempt(True, ordered[:middle])
            if result[2] <= HTML_SIZE_BUDGET:
                fitting, low = result, middle
            else:
                high = middle - 1
        return fitting

    # -- per recipient

    def recipient_values(
        self,
        subscriber_id: int | None,
        address: str,
        name: str | None,
        link_key: str | None = None,
        delivery_id: int | None = None,
    ) -> dict[str, str]:
        """The plain-text values of the per-recipient slots. A subscriber's links
        carry their ``link_key`` (see mailer.tokens), so it must be given."""
        display = _display_name(name)
        greeting = self._greeting.for_name(display)
        if subscriber_id is None:
            # Test sends and previews without a subscriber: links to the site itself.
            unsubscribe = preferences = self.settings.site.base_url + "/"
        elif not link_key:
            raise MessageError(f"subscriber {subscriber_id} has no link key; cannot link them")
        else:
            unsubscribe = self._links[Purpose.UNSUBSCRIBE].url(subscriber_id, link_key)
            unsubscribe += self._from_send
            preferences = self._links[Purpose.MANAGE].url(subscriber_id, link_key)
        return {
            "greeting": greeting,
            "name": display,
            "email": address,
            "unsubscribe_url": unsubscribe,
            "preferences_url": preferences,
            "reader": (
                "/" + self._readers.reader(delivery_id)
                if self._readers is not None and subscriber_id is not None and delivery_id
                else ""
            ),
        }

    def compose(
        self,
        delivery_id: int,
        subscriber_id: int | None,
        email: str,
        name: str | None,
        release_ids: Sequence[int],
        link_key: str | None = None,
        topics: Sequence[int] | None = None,
    ) -> ComposedMessage:
        """One recipient's message. ``topics``: the topic ids they chose, when the
        caller read them (else ``topic_choices`` is used). Raises MessageError for
        an unusable address or when none of the releases exist any more."""
        address = checked_address(email)
        # Only a test send has no subscriber (see mailer.send's claim).
        content = self.content(
            release_ids, self.grouping_for(subscriber_id, topics), test=subscriber_id is None
        )
        values = self.recipient_values(subscriber_id, address, name, link_key, delivery_id)
        encoded: dict[tuple[str, str], bytes] = {}
        for part, slot in content.slots:
            value = values[slot]
            if part == "html":
                escaped = str(escape(value))
                if escaped == value and ("text", slot) in encoded:
                    encoded[part, slot] = encoded["text", slot]
                    continue
                value = escaped
            encoded[part, slot] = _qp(value)
        message_id = self._message_id.format(
            int(time.time()), self._address_tokens.token(MailTokenKind.DELIVERY, delivery_id)
        )
        # Test sends have no subscriber to unsubscribe, so no List-Unsubscribe.
        unsubscribe = (
            b""
            if subscriber_id is None
            else self._list_unsubscribe(subscriber_id, link_key, values["unsubscribe_url"])
        )
        # The content's own lines at even positions, the reader's between (see _wire).
        head = (
            content.head_from,
            _to_header(values["name"], address),
            content.head_subject,
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: {message_id}\r\n".encode(),
            content.head_list,
            unsubscribe,
            content.head_tail,
        )
        parts = (
            *head,
            *(piece if isinstance(piece, bytes) else encoded[piece] for piece in content.pieces),
        )
        # Signed from the same parts: the shared ones are canonicalised once.
        signer, memo = self.signer, content.signing_memo
        signature = b"" if signer is None else signer.signature_headers(parts, memo)
        data = b"".join((signature, *parts))
        return ComposedMessage(
            envelope_from=self._return_path.format(
                self._address_tokens.token(MailTokenKind.DELIVERY, delivery_id)
            ),
            recipients=[address],
            data=data,
            message_id=message_id,
            wire=_wire(content, signature, head, encoded),
        )

    def _list_unsubscribe(
        self, subscriber_id: int, link_key: str | None, unsubscribe_url: str
    ) -> bytes:
        """RFC 2369 (an https link and, where mailer reads the mailbox, a mailto) plus
        RFC 8058 one-click unsubscribe."""
        links = f"<{unsubscribe_url}>"
        if self._mailto_unsubscribe:
            token = self._address_tokens.token(MailTokenKind.UNSUBSCRIBE, subscriber_id, link_key)
            mailbox = self._return_path.format(token)
            links += f",\r\n <mailto:{mailbox}?subject=unsubscribe>"
        return (
            f"List-Unsubscribe: {links}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        ).encode("ascii")


def _wire(
    content: _Content,
    signature: bytes,
    head: tuple[bytes, ...],
    encoded: dict[tuple[str, str], bytes],
) -> bytes | None:
    """One message's SMTP DATA payload from the content's pre-stuffed pieces, or
    None to leave it to the transport. ``head``: the header lines in order, the
    content's own (checked with its pieces) at even positions."""
    if content.wire_pieces is None or not all(map(_wire_header, (signature, *head[1::2]))):
        return None
    body: list[bytes] = []
    for piece in content.wire_pieces:
        if isinstance(piece, bytes):
            body.append(piece)
            continue
        part, slot, line_start = piece
        value = _wire_value(encoded[part, slot], line_start)
        if value is None:
            return None
        body.append(value)
    return b"".join((signature, *head, *body, b".\r\n"))


def _preheader(items: Sequence[DigestItem]) -> str:
    titles = " · ".join(item.title for item in items[:4])
    return shorten(titles, 150)


def _regroup(groups: list[TopicGroup], shown: Sequence[DigestItem]) -> list[TopicGroup]:
    keep = {item.id for item in shown}
    trimmed = [TopicGroup(g.name, tuple(i for i in g.items if i.id in keep)) for g in groups]
    return [group for group in trimmed if group.items]


async def load_topic_choices(
    session: AsyncSession, subscriber_ids: Iterable[int]
) -> dict[int, list[int]]:
    """Topic ids chosen per subscriber, for those of the given subscribers who
    chose several. Only ever for named subscribers: every reader's choices read at
    once (about 390 bytes a chosen topic) made a sending worker's peak memory grow
    with the number of readers."""
    query = select(SubscriberTopic.subscriber_id, SubscriberTopic.topic_id).join(
        Topic, Topic.id == SubscriberTopic.topic_id
    )
    query = query.where(Topic.active.is_(True))
    choices: dict[int, list[int]] = {}
    wanted = sorted(set(subscriber_ids))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        result = await session.execute(query.where(SubscriberTopic.subscriber_id.in_(chunk)))
        for subscriber_id, topic_id in result:
            choices.setdefault(subscriber_id, []).append(topic_id)
    return {s: sorted(t) for s, t in choices.items() if len(t) > 1}


def content_key(release_ids: Iterable[int]) -> str:
    """sha256 of the sorted release ids: deliveries with equal keys share a body."""
    return hashlib.sha256(",".join(map(str, sorted(set(release_ids)))).encode()).hexdigest()


# --- transactional messages -------------------------------------------------------------


def _transactional(
    settings: Settings,
    environment: Environment,
    template_base: str,
    email: str,
    name: str | None,
    context: dict[str, Any],
    list_unsubscribe_url: str | None = None,
) -> ComposedMessage:
    """Render and encode a one-off message (no cache: each is sent once)."""
    address = checked_address(email)
    display = _display_name(name)
    greeting = _Greeting(environment).for_name(display)
    full_context = {
        **site_context(settings),
        **context,
        "recipient": {
            "greeting": greeting,
            "name": display,
            "email": address,
            "unsubscribe_url": context.get("unsubscribe_url"),
            "preferences_url": context.get("manage_url"),
        },
    }
    try:
        text_template = environment.get_template(f"{template_base}.txt.j2")
        html_template = environment.get_template(f"{template_base}.html.j2")
    except TemplateNotFound as exc:
        raise MessageError(f"no email template {exc.name!r}") from None
    text_module = text_template.make_module(full_context)
    subject = one_line(str(getattr(text_module, "subject", "") or settings.site.name))
    text = str(text_module)
    html = _inline(_minify(html_template.render({**full_context, "subject": subject})))
    boundary = _new_boundary()
    message_id = _message_id(settings, "t")
    pairs: list[tuple[str, Any]] = [
        ("From", _sender_address(settings)),
        ("To", Address(display_name=display, addr_spec=address)),
        ("Subject", subject),
        ("Date", formatdate(usegmt=True)),
        ("Message-ID", message_id),
    ]
    reply_to = _reply_to(settings)
    if reply_to is not None:
        pairs.append(("Reply-To", reply_to))
    if list_unsubscribe_url:
        pairs.append(("List-Unsubscribe", f"<{list_unsubscribe_url}>"))
    pairs += [("Auto-Submitted", "auto-generated"), ("MIME-Version", "1.0")]
    pieces = _body_pieces(boundary, [_qp(text)], [_qp(html)])
    data = _headers(pairs) + b"".join(p for p in pieces if isinstance(p, bytes))
    signer = load_signer(settings)
    if signer is not None:
        data = signer.sign(data)
    local, domain = return_path(settings)
    return ComposedMessage(
        # Signed for this recipient, so that a bounce of it is recognised as genuine.
        envelope_from=f"{local}+{MailTokenSigner(settings).recipient_token(address)}@{domain}",
        recipients=[address],
        data=data,
        message_id=message_id,
    )


def build_confirmation_message(
    settings: Settings,
    email: str,
    name: str | None,
    confirm_url: str,
    manage_url: str | None = None,
) -> ComposedMessage:
    """The double opt-in request: one link that confirms the subscription."""
    return _transactional(
        settings,
        template_environment(settings),
        "email/confirmation",
        email,
        name,
        {"confirm_url": confirm_url, "manage_url": manage_url},
    )


NOTICE_KINDS = ("unsubscribed", "already-subscribed", "preferences-updated")


def build_notice_message(
    settings: Settings, email: str, name: str | None, kind: str, **context: Any
) -> ComposedMessage:
    """A short notice about the subscription itself (``kind`` in NOTICE_KINDS, or any
    kind for which the site provides ``email/notice/<kind>.{txt,html}.j2``)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", kind):
        raise MessageError(f"{kind!r} is not a notice kind")
    environment = template_environment(settings)
    if f"email/notice/{kind}.txt.j2" not in environment.list_templates():
        known = ", ".join(NOTICE_KINDS)
        raise MessageError(f"unknown notice kind {kind!r} (known: {known})")
    return _transactional(settings, environment, f"email/notice/{kind}", email, name, dict(context))
