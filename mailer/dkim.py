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
The physical price of a signature is one RSA operation (0.2-0.3 ms for a
2048-bit key) and one SHA-256 over the body (0.03 ms for 50 KB). Everything else
is avoided for digests, where thousands of messages are spliced from the same
pieces (see ``mailer.message``): the signer is given the pieces a message is
joined from, and a :class:`PieceMemo` remembers, per piece that recurs, its
header fields already canonicalised, or its body text already in relaxed form.
Relaxed canonicalisation only touches runs of whitespace and whitespace before a
line end, so pieces that do not end in whitespace can be relaxed one at a time:
per message only the personal pieces are looked at (three substring searches in
C find them already relaxed, nearly always), and the pieces are fed to the hash
one after the other, without joining the message a second time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
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

    _sign: Callable[[bytes], bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Decided once: an isinstance test against the key's ABC costs more than a
        # SHA-256 of the header data.
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            sign = partial(_rsa_sign, key)
        else:
            sign = partial(_ed25519_sign, key)
        object.__setattr__(self, "_sign", sign)

    def sign(self, header_data: bytes) -> bytes:
        return self._sign(header_data)


def _rsa_sign(key: rsa.RSAPrivateKey, header_data: bytes) -> bytes:
    return key.sign(header_data, _PKCS1V15, _SHA256)


def _ed25519_sign(key: ed25519.Ed25519PrivateKey, header_data: bytes) -> bytes:
    # RFC 8463 3: Ed25519 (pure) over the SHA-256 of the canonical header data.
    return key.sign(hashlib.sha256(header_data).digest())


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

    ``body``: the piece in relaxed form, as part of a body. ``fields``: when the
    piece can stand in the header section (it starts a line and ends one, or holds
    the header/body separator), its header fields canonicalised;
    ``after_separator``, when it holds the separator, the body that starts in it,
    raw and relaxed.
    """

    __slots__ = ("after_separator", "body", "data", "fields")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.body = _relaxed_lines(data)
        self.fields: list[tuple[str, bytes]] | None = None
        self.after_separator: tuple[bytes, bytes] | None = None
        if data.startswith((b" ", b"\t")):
            return  # continues a field of the piece before it
        split = _split_at_body(data)
        if split is not None:
            self.fields = _canonical_fields(split[0])
            self.after_separator = (split[1], _relaxed_lines(split[1]))
        elif data.endswith(b"\r\n"):
            self.fields = _canonical_fields(data)


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
        # The relaxed form of each key's fixed tags, for the hashed copy of the field.
        self._relaxed_tags = [_relaxed_value(tags.encode()).decode() for tags in self._tags]
        self._h_tags: dict[frozenset[str], tuple[list[str], str, str]] = {}

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
        lower_names, h_tag, h_relaxed = self._signed_names(fields)
        signed = b"".join(_select(fields, lower_names))
        timestamp = int(time.time()) if now is None else now
        headers: list[bytes] = []
        for key, tags, relaxed_tags in zip(self.keys, self._tags, self._relaxed_tags, strict=True):
            # Folded as it will be sent, and hashed in that form: the verifier
            # unfolds and collapses whitespace, so the hash must see the same
            # folding points (between tags, after a colon in h=), with b= empty.
            # The relaxed form is written directly: each fold becomes one space.
            unsigned = f"{tags} t={timestamp};\r\n\t{h_tag};\r\n\tbh={body_hash};\r\n\tb="
            canonical = (
                f"dkim-signature:{relaxed_tags} t={timestamp}; {h_relaxed}; bh={body_hash}; b="
            ).encode()
            signature = binascii.b2a_base64(key.sign(signed + canonical), newline=False)
            # Whitespace inside b= is ignored by verifiers, so it folds anywhere.
            folded = b"\r\n\t".join([signature[i : i + 72] for i in range(0, len(signature), 72)])
            headers += (b"DKIM-Signature: ", unsigned.encode(), folded, b"\r\n")
        return b"".join(headers)

    def _signed_names(self, fields: list[tuple[str, bytes]]) -> tuple[list[str], str, str]:
        """The h= names (lower-cased) for the headers present, the folded h= tag
        and its relaxed form (cached: it is nearly always the same few sets)."""
        present = frozenset(name for name, _ in fields) & _SIGNED_LOWER
        cached = self._h_tags.get(present)
        if cached is None:
            names = [n for n in SIGNED_HEADERS if n.lower() in present] + list(OVERSIGNED_HEADERS)
            folded = _fold_list("h=", names)
            relaxed = _relaxed_value(folded.encode()).decode()
            cached = self._h_tags[present] = ([n.lower() for n in names], folded, relaxed)
        return cached


def _analyse(parts: Sequence[bytes], memo: PieceMemo | None) -> tuple[list[tuple[str, bytes]], str]:
    """The canonical header fields (lower-cased name, canonical line) in order, and
    the base64 SHA-256 of the relaxed body, of ``b"".join(parts)``."""
    fields: list[tuple[str, bytes]] = []
    # The body's pieces: raw, and relaxed where a remembered piece knows it.
    body: list[tuple[bytes, bytes | None]] = []
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
            body.append((split[1], None))
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
    if memo is None:
        body += [(part, None) for part in parts[body_from:]]
    else:
        known = memo._known
        for part in parts[body_from:]:
            piece = known.get(id(part))
            body.append((part, piece.body if piece is not None and piece.data is part else None))
    return fields, base64.b64encode(_body_digest(body)).decode()


# A piece ending in one of these may end inside a run of whitespace or a line end.
_OPEN_ENDS = frozenset(b" \t\r")


def _body_digest(body: list[tuple[bytes, bytes | None]]) -> bytes:
    """SHA-256 of the relaxed body (RFC 6376 3.4.4) of the raw pieces joined.

    Relaxed canonicalisation changes only runs of whitespace and whitespace before
    a line end, so where no piece ends in whitespace or between the CR and the LF
    of a line end, nothing it changes spans two pieces: the pieces are relaxed one
    by one (remembered ones already are) and hashed in turn, without joining the
    message. What fails that test, or leaves the body's end in doubt (a last line
    without its end, empty lines at the end), is canonicalised whole.
    """
    digest = hashlib.sha256()
    last = b""
    for raw, relaxed in body:
        if not raw:
            continue
        if raw[-1] in _OPEN_ENDS:
            return _whole_body_digest(body)
        last = _relaxed_lines(raw) if relaxed is None else relaxed
        digest.update(last)
    if not last.endswith(b"\r\n") or last == b"\r\n" or last.endswith(b"\r\n\r\n"):
        return _whole_body_digest(body)
    return digest.digest()


def _whole_body_digest(body: list[tuple[bytes, bytes | None]]) -> bytes:
    raw = b"".join(part for part, _ in body)
    if raw and not raw.endswith(b"\r\n"):
        # SMTP ends the data with CRLF in any case; receivers hash that.
        raw += b"\r\n"
    relaxed = _relaxed_lines(raw)
    # Empty lines at the end of the body are ignored; an empty body hashes as empty.
    while relaxed.endswith(b"\r\n\r\n"):
        relaxed = relaxed[:-2]
    return hashlib.sha256(b"" if relaxed == b"\r\n" else relaxed).digest()


_WSP_RUN = re.compile(rb"[ \t]+")


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
