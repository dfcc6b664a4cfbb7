"""`mailer dkim`: DKIM keys for signing the mail."""

from __future__ import annotations

import re
from pathlib import Path

import click

from mailer.cli import BadInput, OperationalError
from mailer.dkim import (
    ED25519_SHA256,
    RSA_SHA256,
    DkimError,
    dns_record,
    generate_key,
    write_private_key,
)

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$", re.I)
_SELECTOR = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I
)


@click.group()
def dkim() -> None:
    """DKIM signing keys."""


@dkim.command("keygen")
@click.option("--domain", required=True, help="The signing domain (d=), e.g. example.org.")
@click.option("--selector", required=True, help="The selector (s=), e.g. mailer2025.")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the private key (PEM, readable by the owner only).",
)
@click.option(
    "--algorithm",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="rsa: the 2048-bit key every receiver verifies. ed25519: a second key for "
    "an additional ed25519-sha256 signature (RFC 8463), under its own selector.",
)
@click.option("--force", is_flag=True, help="Replace an existing key file.")
def dkim_keygen(domain: str, selector: str, out_path: Path, algorithm: str, force: bool) -> None:
    """Make a DKIM key (RSA-2048 or Ed25519) and print the DNS TXT record to publish."""
    domain = domain.strip().rstrip(".").lower()
    if not _DOMAIN.match(domain):
        raise BadInput(f"--domain: {domain!r} is not a domain name")
    if not _SELECTOR.match(selector):
        raise BadInput(f"--selector: {selector!r} is not a valid selector (letters, digits, -)")
    dkim_algorithm = ED25519_SHA256 if algorithm == "ed25519" else RSA_SHA256
    private_pem, public_key = generate_key(dkim_algorithm)
    try:
        write_private_key(out_path, private_pem, overwrite=force)
    except DkimError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:
        raise OperationalError(f"cannot write {out_path}: {exc.strerror}") from None
    click.echo(f"Wrote the private key to {out_path} (keep it secret).")
    click.echo("")
    click.echo("Publish this DNS TXT record:")
    click.echo("")
    click.echo(dns_record(domain, selector, public_key, dkim_algorithm))
    click.echo("")
    click.echo("Then add to the configuration:")
    click.echo("")
    click.echo("dkim:")
    click.echo(f"  domain: {domain}")
    if dkim_algorithm == RSA_SHA256:
        click.echo(f"  selector: {selector}")
        click.echo(f"  private_key_file: {out_path}")
    else:
        click.echo("  # beside the RSA key's selector and private_key_file:")
        click.echo("  algorithms: [rsa-sha256, ed25519-sha256]")
        click.echo(f"  ed25519_selector: {selector}")
        click.echo(f"  ed25519_private_key_file: {out_path}")
