"""DKIM: signing outgoing mail and making keys (both with cryptography).

Every message is signed rsa-sha256 with relaxed/relaxed canonicalisation, which
survives the header re-folding and trailing-whitespace changes that relays make.
The headers a reader or a mailbox provider relies on are signed, and the ones that
matter most are "over-signed" (listed once more than they occur), so nobody can
add a second From, Subject or List-Unsubscribe to a signed message without
breaking the signature.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.config import ConfigError, Settings

KEY_BITS = 2048
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


class DkimError(Exception):
    pass


@dataclass(frozen=True)
class DkimSigner:
    """Signs with relaxed/relaxed canonicalisation (RFC 6376 3.4) and rsa-sha256.

    Written here rather than calling ``dkim.sign``: dkimpy parses the PEM key and
    computes the RSA signature in pure Python on every call, about 14 ms a message,
    which capped a DKIM-signed send near 70 messages a second. Canonicalisation is
    a page of the RFC; the signature comes from OpenSSL through ``cryptography``.
    dkimpy still verifies every signature in the tests.
    """

    domain: str
    selector: str
    private_key: bytes

    def sign(self, message: bytes, now: int | None = None) -> bytes:
        """The message with a DKIM-Signature header in front of it."""
        head, separator, body = message.partition(b"\r\n\r\n")
        if not separator:
            raise DkimError("DKIM signing failed: the message has no header/body separator")
        headers = _split_headers(head)
        present = {name for name, _ in headers}
        names = [n for n in SIGNED_HEADERS if n.lower() in present] + list(OVERSIGNED_HEADERS)
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest()).decode()
        timestamp = int(time.time()) if now is None else now
        # Folded as it will be sent, and hashed in that form: the verifier unfolds
        # and collapses whitespace, so the hash must see the same folding points
        # (between tags, after a colon in h=), with b= still empty.
        unsigned = "\r\n\t".join(
            [
                f"v=1; a=rsa-sha256; c=relaxed/relaxed; d={self.domain}; s={self.selector};"
                f" t={timestamp};",
                _fold_list("h=", names) + ";",
                f"bh={body_hash};",
                "b=",
            ]
        )
        signed = b"".join(_relaxed_header(n, v) for n, v in _select(headers, names))
        signed += _relaxed_header("dkim-signature", unsigned.encode()).removesuffix(b"\r\n")
        signature = base64.b64encode(
            self._key().sign(signed, padding.PKCS1v15(), hashes.SHA256())
        ).decode()
        # Whitespace inside b= is ignored by verifiers, so it folds anywhere.
        folded = "\r\n\t".join(signature[i : i + 72] for i in range(0, len(signature), 72))
        return b"DKIM-Signature: " + (unsigned + folded).encode() + b"\r\n" + message

    def _key(self) -> rsa.RSAPrivateKey:
        key = _PARSED_KEYS.get(self.private_key)
        if key is None:
            loaded = serialization.load_pem_private_key(self.private_key, password=None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            key = _PARSED_KEYS[self.private_key] = loaded
        return key


_PARSED_KEYS: dict[bytes, rsa.RSAPrivateKey] = {}
_WSP_RUN = re.compile(rb"[ \t]+")


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


def _select(headers: list[tuple[str, bytes]], names: list[str]) -> list[tuple[str, bytes]]:
    """RFC 6376 5.4.2: each name in h= takes the last unused instance; a name with
    none left (over-signing) contributes nothing."""
    remaining: dict[str, list[bytes]] = {}
    for name, value in headers:
        remaining.setdefault(name, []).append(value)
    chosen = []
    for name in names:
        instances = remaining.get(name.lower())
        if instances:
            chosen.append((name.lower(), instances.pop()))
    return chosen


def _relaxed_header(name: str, value: bytes) -> bytes:
    unfolded = value.replace(b"\r\n", b"")
    return name.lower().encode() + b":" + _WSP_RUN.sub(b" ", unfolded).strip(b" \t") + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    lines = [_WSP_RUN.sub(b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and not lines[-1]:
        lines.pop()
    return b"\r\n".join(lines) + b"\r\n" if lines else b""


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


_SIGNERS: dict[tuple[str, str, Path, float], DkimSigner] = {}


def load_signer(settings: Settings) -> DkimSigner | None:
    """The signer for the configured key, or None when DKIM is not configured.

    Raises ConfigError when the key file is missing or not an RSA private key, so a
    misconfiguration stops the send instead of silently mailing unsigned messages.
    """
    config = settings.dkim
    if config is None:
        return None
    path = settings.resolve(config.private_key_file)
    try:
        modified = path.stat().st_mtime
    except OSError as exc:
        raise ConfigError(f"dkim.private_key_file: cannot read {path}: {exc.strerror}") from None
    cache_key = (config.domain, config.selector, path, modified)
    signer = _SIGNERS.get(cache_key)
    if signer is None:
        pem = path.read_bytes()
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"dkim.private_key_file: {path} is not an unencrypted PEM private key ({exc})"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"dkim.private_key_file: {path} is not an RSA key")
        if key.key_size < 1024:
            raise ConfigError(f"dkim.private_key_file: {path} is shorter than 1024 bits")
        signer = DkimSigner(config.domain, config.selector, pem)
        _SIGNERS[cache_key] = signer
    return signer


def generate_key(bits: int = KEY_BITS) -> tuple[bytes, str]:
    """A new RSA key: (private key as PKCS#8 PEM, public key as base64 DER for DNS)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_der = key.public_key().public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return private_pem, base64.b64encode(public_der).decode("ascii")


def txt_record_value(public_key_b64: str) -> str:
    return f"v=DKIM1; k=rsa; p={public_key_b64}"


def dns_record(domain: str, selector: str, public_key_b64: str) -> str:
    """The zone-file line to publish. A TXT string holds at most 255 characters, so
    the value is split into several quoted strings, which resolvers join."""
    value = txt_record_value(public_key_b64)
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
