"""DKIM: signing outgoing mail (dkimpy) and making keys (cryptography).

Every message is signed rsa-sha256 with relaxed/relaxed canonicalisation, which
survives the header re-folding and trailing-whitespace changes that relays make.
The headers a reader or a mailbox provider relies on are signed, and the ones that
matter most are "over-signed" (listed once more than they occur), so nobody can
add a second From, Subject or List-Unsubscribe to a signed message without
breaking the signature.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

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
    domain: str
    selector: str
    private_key: bytes

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front of it."""
        present = _header_names(message)
        include = [name.encode() for name in SIGNED_HEADERS if name.lower() in present]
        include += [name.encode() for name in OVERSIGNED_HEADERS]
        try:
            signature = dkim.sign(
                message,
                self.selector.encode("ascii"),
                self.domain.encode("ascii"),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=b"rsa-sha256",
                include_headers=include,
                linesep=b"\r\n",
            )
        except dkim.DKIMException as exc:
            raise DkimError(f"DKIM signing failed: {exc}") from None
        return signature + message


def _header_names(message: bytes) -> set[str]:
    head = message.split(b"\r\n\r\n", 1)[0]
    names = set()
    for line in head.split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t"):
            names.add(line.split(b":", 1)[0].decode("ascii", "replace").strip().lower())
    return names


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
