"""STARTTLS, implicit TLS and AUTH against a real server with its own CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailer.transport import Connection, Outcome, send_now, smtp_target
from tests.conftest import make_settings
from tests.support.smtp import RecordingHandler, free_port

USER, PASSWORD = "mailer", "s3cret-Žodis"

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def _certificate(subject: str, issuer_key, issuer_name, key, *, ca: bool) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for "localhost" that it signed."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test relay CA")])
    ca_cert = _certificate("Test relay CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("localhost", ca_key, ca_name, key, ca=False)
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def _authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(),
        auth_data.password.decode(),
    ) == (USER, PASSWORD)
    # handled=False: let aiosmtpd answer 535 itself on failure.
    return AuthResult(success=ok, handled=False)


def _server_context(pki: tuple[Path, Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki[1], pki[2])
    return context


@pytest.fixture
def starttls_server(pki) -> Iterator[tuple[Controller, RecordingHandler]]:
    handler = RecordingHandler()
    controller = Controller(
        handler,
        hostname="localhost",
        port=free_port(),
        tls_context=_server_context(pki),
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    )
    controller.start()
    yield controller, handler
    controller.stop()


@pytest.fixture
def implicit_tls_server(pki) -> Iterator[tuple[Controller, RecordingHandler]]:
    handler = RecordingHandler()
    controller = Controller(
        handler,
        hostname="localhost",
        port=free_port(),
        ssl_context=_server_context(pki),
        authenticator=_authenticator,
        auth_required=True,
        # aiosmtpd only counts STARTTLS as TLS; this whole session is TLS already.
        auth_require_tls=False,
    )
    controller.start()
    yield controller, handler
    controller.stop()


MESSAGE = b"From: press@example.org\r\nTo: reader@example.net\r\nSubject: TLS\r\n\r\nhello\r\n"


def _settings(tmp_path: Path, port: int, security: str, pki, password: str = PASSWORD):
    return make_settings(
        tmp_path,
        f"sqlite:///{tmp_path}/unused.db",
        smtp={
            "embedded": False,
            "host": "localhost",
            "port": port,
            "security": security,
            "username": USER,
            "password": password,
            "ca_file": str(pki[0]),
        },
    )


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_and_auth_as_configured(
    tmp_path: Path, pki, starttls_server, implicit_tls_server, security: str
) -> None:
    controller, handler = starttls_server if security == "starttls" else implicit_tls_server
    settings = _settings(tmp_path, controller.port, security, pki)
    async with smtp_target(settings) as target:
        connection = Connection(target)
        try:
            for _ in range(3):  # one session, reused
                result = await connection.send("press@example.org", ["reader@example.net"], MESSAGE)
                assert result.outcome is Outcome.SENT, result.reason
        finally:
            await connection.close()
    assert len(handler.messages) == 3


async def test_wrong_password_is_not_sent_and_says_why(
    tmp_path: Path, pki, starttls_server
) -> None:
    controller, handler = starttls_server
    settings = _settings(tmp_path, controller.port, "starttls", pki, password="wrong")
    async with smtp_target(settings) as target:
        connection = Connection(target)
        result = await connection.send("press@example.org", ["reader@example.net"], MESSAGE)
        await connection.close()
    # Bad credentials are the sender's problem, not the reader's: the message is
    # held for a retry (and the queue waits), never failed for good.
    assert result.outcome is Outcome.DEFERRED and result.connection_error
    assert "535" in result.reason
    assert handler.messages == []


async def test_an_untrusted_certificate_is_refused(tmp_path: Path, pki, starttls_server) -> None:
    controller, handler = starttls_server
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path}/unused.db",
        smtp={
            "embedded": False,
            "host": "localhost",
            "port": controller.port,
            "security": "starttls",
            "username": USER,
            "password": PASSWORD,
        },
    )
    from mailer.transport import TransportError

    class Message:
        envelope_from, recipients, data = "press@example.org", ["reader@example.net"], MESSAGE

    with pytest.raises(TransportError, match=r"(?i)certificate"):
        await send_now(settings, Message())
    assert handler.messages == []
