"""What the collector may reach: public internet hosts, and files under set folders.

An editor who adds a source chooses a URL the server itself will fetch, and the
answer ends up in the admin and in readers' mail. Without a fence that is a way
into the internal network (the app's own /metrics, a database's HTTP port, a cloud
metadata service) and, for folder sources, onto the server's disk.

Network: every connection the collector opens goes through :class:`GuardedBackend`,
which resolves the host itself, checks every address it got and connects to a
checked address, never to the name again. So numeric spellings (``2130706433``,
``0177.0.0.1``, ``0x7f.1``), IPv6 forms that embed an IPv4 address (mapped,
compatible, NAT64, 6to4, Teredo), a public name that resolves to 127.0.0.1, a DNS
answer that changes between a check and the connect, and a redirect to an
internal host (each hop opens its own connection) all meet the same check.
``collector.allow_private_hosts`` lets a site collect from its intranet on purpose.

Files: a folder or feed-file source must lie under one of the folders in
``collector.folder_roots`` (default: the configuration file's folder and the data
folder), after symlinks are resolved, and so must every file read from it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(Exception):
    """The collector refused to connect; the message names the host and the reason."""


class OutsideFolderRoots(Exception):
    """A folder source, or a file in one, lies outside ``collector.folder_roots``."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and may be routed to)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    as_int = int(address)
    if as_int >> 32 == 0 and as_int > 1:
        # Deprecated IPv4-compatible form ::a.b.c.d; Python calls it global.
        found.append(ipaddress.IPv4Address(as_int))
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(as_int & 0xFFFFFFFF))
    return found


def internal_reason(address: IPAddress) -> str | None:
    """Why an address is not on the public internet (None when it is)."""
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            reason = internal_reason(inner)
            if reason:
                return f"{reason} (inside the IPv6 address {address})"
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private or reserved address"),
        ("is_reserved", "a reserved address"),
    )
    for attribute, reason in checks:
        if getattr(address, attribute):
            return reason
    if isinstance(address, ipaddress.IPv6Address) and address in ipaddress.ip_network("fc00::/7"):
        return "a unique-local address"
    if not address.is_global:
        return "not a public internet address"
    return None


def _parse_entry(entry: str) -> IPNetwork | str:
    entry = entry.strip().lower()
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return entry.rstrip(".")


@dataclass(frozen=True)
class AddressPolicy:
    """Which internal hosts the collector may reach anyway (names or networks)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> AddressPolicy:
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for entry in entries:
            parsed = _parse_entry(entry)
            if isinstance(parsed, str):
                names.add(parsed)
            else:
                networks.append(parsed)
        return cls(tuple(networks), frozenset(names))

    def refusal(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to ``address`` (resolved from ``host``) is refused, or None."""
        if host.lower().rstrip(".") in self.allowed_names:
            return None
        reason = internal_reason(address)
        if reason is None:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return None
        shown = host if host == str(address) else f"{host} ({address})"
        return (
            f"refused to connect to {shown}: {reason}. Sources must be on the public "
            "internet; list the host in collector.allow_private_hosts to collect from it"
        )


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        # Scope ids ("fe80::1%eth0") are dropped: the address itself is what is checked.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the address check in front of every connect."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        # One refused address refuses the host: a name that answers with both a
        # public and an internal address is exactly what a rebinding attack serves.
        for address in addresses:
            refusal = self.policy.refusal(host, address)
            if refusal:
                raise BlockedAddress(refusal)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("the collector does not connect to local sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for the process, shared by every collection run's
    pool (httpcore shares one across a pool's connections already). Loading the CA
    bundle costs about 70 ms of CPU with OpenSSL 3, and a Fetcher used to load it
    twice (httpx's transport built a context of its own, then replaced here): a
    tenth of the CPU of a run where every feed answers 304."""
    return httpx.create_ssl_context()


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, with its connection pool built on :class:`GuardedBackend`.

    httpx offers no public way to hand a network backend to its pool, so the pool it
    built is replaced by an identical one that has the backend (httpx 0.28)."""

    def __init__(self, policy: AddressPolicy, *, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, verify=_tls_context())
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=_tls_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy),
        )


# --- folders -----------------------------------------------------------------------------


def inside_roots(path: Path, roots: Iterable[Path]) -> Path:
    """``path`` with symlinks resolved; OutsideFolderRoots unless it lies under a root."""
    resolved = path.resolve()
    resolved_roots = [root.resolve() for root in roots]
    for root in resolved_roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    shown = ", ".join(str(root) for root in resolved_roots) or "(none)"
    raise OutsideFolderRoots(
        f"{path} is outside the folders sources may read ({shown}); "
        "add its folder to collector.folder_roots to allow it"
    )
