"""DKIM: signing outgoing mail and making keys (both with cryptography).

Every message is signed with relaxed/relaxed canonicalisation, which survives the
header re-folding and trailing-whitespace changes that relays make: rsa-sha256
always, and ed25519-sha256 (RFC 8463) beside it when ``dkim.algorithms`` asks for
it. The headers a reader or a mailbox provider relies on are signed, and the ones
that matter most are "over-signed" (listed once more than they occur), so nobody
can add a second From, Subject or List-Unsubscribe to a signed message without
breaking the signature.

What a signature costs
----------------------
The physical price of a signature is one RSA operation (about 0.2 ms for a
2048-bit key) and one SHA-256 over the body (0.02 ms for 40 KB). Everything else
is avoided for digests, where thousands of messages are spliced from the same
pieces (see ``mailer.message``): the signer is given the pieces a message is
joined from, and a :class:`PieceMemo` remembers, per piece that recurs, its
header fields already canonicalised, or its body lines already canonicalised
(relaxed canonicalisation works line by line, so a piece's complete lines can be
done once; only the lines that straddle a per-recipient value are done again for
each message). So the per-message work is proportional to the personal bytes,
plus the hash and the signature.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailer.config import ConfigError, Settings

KEY_BITS = 2048
RSA_SHA256 = "rsa-sha256"
ED25519_SHA256 = "ed25519-sha256"
ALGORITHMS = (RSA_SHA256, ED25519_SHA256)
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
)
# Signed one extra time: an added copy of any of these breaks the signature.
OVERSIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)
_SIGNED_LOWER = frozenset(name.lower() for name in SIGNED_HEADERS)
# A memo that grew this large is not serving one content's recurring pieces any
# more (a caller passes it for unrelated messages): start it afresh.
_MEMO_LIMIT = 4096

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class DkimError(Exception):
    pass


@dataclass(frozen=True)
class DkimKey:
    """One signing key: its algorithm, the selector its public key is published
    under, and the parsed private key."""

    algorithm: str
    selector: str
    private_key: PrivateKey

    def sign(self, header_data: bytes) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(header_data, _PKCS1V15, _SHA256)
        # RFC 8463 3: Ed25519 (pure) over the SHA-256 of the canonical header data.
        return self.private_key.sign(hashlib.sha256(header_data).digest())


class PieceMemo:
    """What the signer worked out about the byte pieces messages are joined from.

    A piece is remembered once the same object (not merely equal bytes) appears in
    two consecutive messages signed with this memo, which is exactly what the
    fixed pieces of a digest content do and what per-recipient values never do.
    Keep one memo per content: its pieces recur message after message.
    Remembering is only a cache: a remembered piece is recognised by identity, so
    whatever a message is made of, the signature is the same as without the memo.
    """

    __slots__ = ("_known", "_previous")

    def __init__(self) -> None:
        self._known: dict[int, _Piece] = {}
        self._previous: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, part: bytes) -> _Piece | None:
        piece = self._known.get(id(part))
        return piece if piece is not None and piece.data is part else None

    def learn(self, parts: Sequence[bytes]) -> None:
        """Remember the parts that were in the previous message as well."""
        current: dict[int, bytes] = {}
        for part in parts:
            key = id(part)
            if key in self._known:
                continue
            if self._previous.get(key) is part:
                if len(self._known) >= _MEMO_LIMIT:
                    self._known.clear()
                self._known[key] = _Piece(part)
            else:
                current[key] = part
        self._previous = current


class _Piece:
    """A recurring piece, analysed once.

    ``body``: the piece as part of a body. ``fields``: when the piece can stand in
    the header section (it starts a line and ends one, or holds the header/body
    separator), its header fields canonicalised; ``after_separator``, when it
    holds the separator, the body that starts in it.
    """

    __slots__ = ("after_separator", "body", "data", "fields")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.body = _BodyPiece(data, at_line_start=False)
        self.fields: list[tuple[str, bytes]] | None = None
        self.after_separator: _BodyPiece | None = None
        if data.startswith((b" ", b"\t")):
            return  # continues a field of the piece before it
        split = _split_at_body(data)
        if split is not None:
            self.fields = _canonical_fields(split[0])
            self.after_separator = _BodyPiece(split[1], at_line_start=True)
        elif data.endswith(b"\r\n"):
            self.fields = _canonical_fields(data)


class _BodyPiece:
    """A piece of a body: its first line (which completes the line that the pieces
    before it started), its complete lines already canonicalised, and its
    unfinished last line. ``first`` is None when no line ends in the piece."""

    __slots__ = ("first", "lines", "tail")

    def __init__(self, data: bytes, *, at_line_start: bool) -> None:
        last_end = data.rfind(b"\r\n") + 2
        if last_end < 2:
            self.first = b"" if at_line_start else None
            self.lines, self.tail = b"", data
            return
        first_end = 0 if at_line_start else data.find(b"\r\n") + 2
        self.first = data[:first_end]
        self.lines = _relaxed_lines(data[first_end:last_end])
        self.tail = data[last_end:]


def _split_at_body(data: bytes) -> tuple[bytes, bytes] | None:
    """(header lines, body) of text that starts at the beginning of a line, or None
    when the header/body separator is not in it."""
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    head, separator, body = data.partition(b"\r\n\r\n")
    return (head + b"\r\n", body) if separator else None


class DkimSigner:
    """Signs with relaxed/relaxed canonicalisation (RFC 6376 3.4) and each key.

    Written here rather than calling ``dkim.sign``: dkimpy parses the PEM key and
    computes the RSA signature in pure Python on every call, about 14 ms a message,
    and canonicalises the whole message each time. Canonicalisation is a page of
    the RFC; the signatures come from OpenSSL through ``cryptography``. dkimpy
    still verifies every signature in the tests.
    """

    def __init__(self, domain: str, keys: Sequence[DkimKey]) -> None:
        if not keys:
            raise DkimError("a DKIM signer needs at least one key")
        self.domain = domain
        self.keys = tuple(keys)
        self._tags = [
            f"v=1; a={key.algorithm}; c=relaxed/relaxed; d={domain}; s={key.selector};"
            for key in self.keys
        ]
        self._h_tags: dict[frozenset[str], tuple[list[str], str]] = {}

    def sign(self, message: bytes, now: int | None = None) -> bytes:
        """The message with its DKIM-Signature headers in front of it."""
        return self.signature_headers((message,), now=now) + message

    def signature_headers(
        self, parts: Sequence[bytes], memo: PieceMemo | None = None, now: int | None = None
    ) -> bytes:
        """The DKIM-Signature header fields for the message ``b"".join(parts)``,
        one per key, to be put in front of it. With a ``memo``, pieces that recur
        from message to message are canonicalised only once."""
        fields, body_hash = _analyse(parts, memo)
        if memo is not None:
            memo.learn(parts)
        lower_names, h_tag = self._signed_names(fields)
        signed = b"".join(_select(fields, lower_names))
        timestamp = int(time.time()) if now is None else now
        headers = []
        for key, tags in zip(self.keys, self._tags, strict=True):
            # Folded as it will be sent, and hashed in that form: the verifier
            # unfolds and collapses whitespace, so the hash must see the same
            # folding points (between tags, after a colon in h=), with b= empty.
            unsigned = f"{tags} t={timestamp};\r\n\t{h_tag};\r\n\tbh={body_hash};\r\n\tb="
            canonical = b"dkim-signature:" + _relaxed_value(unsigned.encode())
            signature = base64.b64encode(key.sign(signed + canonical)).decode()
            # Whitespace inside b= is ignored by verifiers, so it folds anywhere.
            folded = "\r\n\t".join(signature[i : i + 72] for i in range(0, len(signature), 72))
            headers.append(f"DKIM-Signature: {unsigned}{folded}\r\n")
        return "".join(headers).encode()

    def _signed_names(self, fields: list[tuple[str, bytes]]) -> tuple[list[str], str]:
        """The h= names (lower-cased) for the headers present, and the folded h=
        tag (cached: it is nearly always the same few sets)."""
        present = frozenset(name for name, _ in fields) & _SIGNED_LOWER
        cached = self._h_tags.get(present)
        if cached is None:
            names = [n for n in SIGNED_HEADERS if n.lower() in present] + list(OVERSIGNED_HEADERS)
            cached = self._h_tags[present] = ([n.lower() for n in names], _fold_list("h=", names))
        return cached


def _analyse(parts: Sequence[bytes], memo: PieceMemo | None) -> tuple[list[tuple[str, bytes]], str]:
    """The canonical header fields (lower-cased name, canonical line) in order, and
    the base64 SHA-256 of the relaxed body, of ``b"".join(parts)``."""
    fields: list[tuple[str, bytes]] = []
    body: list[bytes | _BodyPiece] = []
    body_from = len(parts)  # the parts after the one holding the separator
    # The header section: every part starts a line here (checked as it goes).
    for index, part in enumerate(parts):
        piece = memo.get(part) if memo is not None else None
        if piece is not None and piece.fields is not None:
            fields += piece.fields
            if piece.after_separator is not None:
                body.append(piece.after_separator)
                body_from = index + 1
                break
            continue
        if not part:
            continue
        split = _split_at_body(part)
        if split is not None and (len(parts) == 1 or not part.startswith((b" ", b"\t"))):
            fields += _canonical_fields(split[0])
            body.append(split[1])
            body_from = index + 1
            break
        if split is None and part.endswith(b"\r\n") and not part.startswith((b" ", b"\t")):
            fields += _canonical_fields(part)
            continue
        if len(parts) == 1:
            break
        # A header field split across parts: take the message as one piece.
        return _analyse((b"".join(parts),), None)
    if not body:
        raise DkimError("DKIM signing failed: the message has no header/body separator")
    for part in parts[body_from:]:
        piece = memo.get(part) if memo is not None else None
        body.append(piece.body if piece is not None else part)
    # One update over the joined chunks: a copy of 40 KB costs less than a dozen calls.
    digest = hashlib.sha256(b"".join(_relaxed_body_chunks(body))).digest()
    return fields, base64.b64encode(digest).decode()


def _relaxed_body_chunks(items: list[bytes | _BodyPiece]) -> list[bytes]:
    """RFC 6376 3.4.4 over the pieces in order, as chunks that join to the
    canonical body. Remembered pieces give their complete lines ready made; only
    the lines that run across pieces (a piece's last line, what follows it, the
    next piece's first line) are canonicalised here."""
    chunks: list[bytes] = []
    pending: list[bytes] = []  # raw bytes of the line(s) not yet complete
    for item in items:
        if isinstance(item, bytes):
            pending.append(item)
            continue
        if item.first is None:
            pending.append(item.tail)  # no line ends in it
            continue
        pending.append(item.first)
        chunks.append(_relaxed_lines(b"".join(pending)))
        chunks.append(item.lines)
        pending = [item.tail]
    rest = b"".join(pending)
    if rest and not rest.endswith(b"\r\n"):
        # SMTP ends the data with CRLF in any case; receivers hash that.
        rest += b"\r\n"
    chunks.append(_relaxed_lines(rest))
    # Empty lines at the end of the body are ignored, however many chunks they span.
    while chunks and _ONLY_LINE_ENDS.fullmatch(chunks[-1]):
        chunks.pop()
    if chunks:
        last = chunks[-1]
        while last.endswith(b"\r\n\r\n"):
            last = last[:-2]
        chunks[-1] = last
    return chunks


_WSP_RUN = re.compile(rb"[ \t]+")
_ONLY_LINE_ENDS = re.compile(rb"(?:\r\n)*")


def _relaxed_lines(raw: bytes) -> bytes:
    """Relaxed canonical form of complete lines: runs of spaces and tabs become one
    space, and whitespace at the end of a line goes. Text that is already in that
    form (nearly all of it: quoted-printable encodes trailing whitespace) is
    recognised by three substring searches in C and returned as it is."""
    if b"\t" in raw or b"  " in raw or b" \r\n" in raw:
        raw = _WSP_RUN.sub(b" ", raw).replace(b" \r\n", b"\r\n")
    return raw


def _canonical_fields(block: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, relaxed canonical field with CRLF) for each header field."""
    fields = []
    for name, value in _split_headers(block):
        fields.append((name, name.encode() + b":" + _relaxed_value(value) + b"\r\n"))
    return fields


def _relaxed_value(value: bytes) -> bytes:
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return value.strip(b" \t")


def _split_headers(head: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, raw value with its folding) for each header, in order."""
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        elif line:
            name, _, value = line.partition(b":")
            fields.append((name.decode("ascii", "replace").strip().lower(), value))
    return fields


def _select(fields: list[tuple[str, bytes]], lower_names: list[str]) -> list[bytes]:
    """RFC 6376 5.4.2: each name in h= takes the last unused instance; a name with
    none left (over-signing) contributes nothing."""
    remaining: dict[str, list[bytes]] = {}
    for name, canonical in fields:
        remaining.setdefault(name, []).append(canonical)
    chosen = []
    for name in lower_names:
        instances = remaining.get(name)
        if instances:
            chosen.append(instances.pop())
    return chosen


def _fold_list(prefix: str, names: list[str], width: int = 72) -> str:
    """h=a:b:c, broken after a colon where a line would grow past ``width``."""
    lines, line = [], prefix
    for i, name in enumerate(names):
        piece = name + (":" if i < len(names) - 1 else "")
        if len(line) + len(piece) > width and line != prefix:
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return "\r\n\t".join(lines)


_SIGNERS: dict[tuple[object, ...], DkimSigner] = {}


def load_signer(settings: Settings) -> DkimSigner | None:
    """The signer for the configured keys, or None when DKIM is not configured.

    Raises ConfigError when a key file is missing or is not a private key of its
    algorithm, so a misconfiguration stops the send instead of silently mailing
    unsigned messages.
    """
    config = settings.dkim
    if config is None:
        return None
    wanted = [(RSA_SHA256, config.selector, config.private_key_file, "dkim.private_key_file")]
    if ED25519_SHA256 in config.algorithms:
        assert config.ed25519_selector and config.ed25519_private_key_file  # validated
        wanted.append(
            (
                ED25519_SHA256,
                config.ed25519_selector,
                config.ed25519_private_key_file,
                "dkim.ed25519_private_key_file",
            )
        )
    located = []
    for algorithm, selector, key_file, setting in wanted:
        path = settings.resolve(key_file)
        try:
            modified = path.stat().st_mtime
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
        located.append((algorithm, selector, path, setting, modified))
    cache_key = (config.domain, *located)
    signer = _SIGNERS.get(cache_key)
    if signer is None:
        keys = [
            DkimKey(algorithm, selector, _read_key(path, algorithm, setting))
            for algorithm, selector, path, setting, _ in located
        ]
        signer = _SIGNERS[cache_key] = DkimSigner(config.domain, keys)
    return signer


def _read_key(path: Path, algorithm: str, setting: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{setting}: {path} is not an unencrypted PEM private key ({exc})"
        ) from None
    if algorithm == RSA_SHA256:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"{setting}: {path} is not an RSA key")
        if key.key_size < 1024:
            raise ConfigError(f"{setting}: {path} is shorter than 1024 bits")
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{setting}: {path} is not an Ed25519 key")
    return key


def generate_key(algorithm: str = RSA_SHA256, bits: int = KEY_BITS) -> tuple[bytes, str]:
    """A new key: (private key as PKCS#8 PEM, public key as it goes into DNS).

    RSA's public key is published as base64 DER (SubjectPublicKeyInfo); Ed25519's
    as the base64 of the bare 32-byte key (RFC 8463 4.2).
    """
    key: PrivateKey
    if algorithm == RSA_SHA256:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        public = key.public_key().public_bytes(
            encoding=serialization.Encoding.DER,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    elif algorithm == ED25519_SHA256:
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
        )
    else:
        raise DkimError(f"unknown DKIM algorithm {algorithm!r} (known: {', '.join(ALGORITHMS)})")
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    return private_pem, base64.b64encode(public).decode("ascii")


def txt_record_value(public_key_b64: str, algorithm: str = RSA_SHA256) -> str:
    kind = "ed25519" if algorithm == ED25519_SHA256 else "rsa"
    return f"v=DKIM1; k={kind}; p={public_key_b64}"


def dns_record(domain: str, selector: str, public_key_b64: str, algorithm: str = RSA_SHA256) -> str:
    """The zone-file line to publish. A TXT string holds at most 255 characters, so
    the value is split into several quoted strings, which resolvers join."""
    value = txt_record_value(public_key_b64, algorithm)
    chunks = " ".join(f'"{value[i : i + 250]}"' for i in range(0, len(value), 250))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"


def write_private_key(path: Path, pem: bytes, *, overwrite: bool = False) -> None:
    """Write readable by the owner only; refuse to replace a key unless asked to,
    because a replaced key breaks every message signed before DNS is updated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise DkimError(f"{path} already exists (use --force to replace it)") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)
