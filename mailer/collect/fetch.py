"""HTTP fetching for sources: bounded in time, size and redirects; polite per host;
retrying what is worth retrying; conditional so that an unchanged source costs a 304."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import weakref
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import httpx

from mailer.collect.guard import AddressPolicy, BlockedAddress, GuardedTransport

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {500, 502, 503, 504, 429}
_RETRY_AFTER_CAP = 30.0


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout: float = 10.0
    # Longest silence while reading; a server that stalls longer fails the fetch.
    read_timeout: float = 20.0
    # The whole response, however slowly it trickles in.
    total_timeout: float = 60.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    # Extra attempts after a 5xx or a network error, with exponential backoff.
    retries: int = 2
    backoff: float = 0.5
    per_host: int = 2

    def with_options(self, options: dict[str, object]) -> FetchPolicy:
        """This policy overridden by a source's own options (timeout, max_bytes, retries)."""
        changes: dict[str, object] = {}
        if options.get("timeout") is not None:
            timeout = float(options["timeout"])  # type: ignore[arg-type]
            changes.update(
                read_timeout=timeout,
                connect_timeout=min(self.connect_timeout, timeout),
                total_timeout=max(timeout, min(self.total_timeout, timeout * 3)),
            )
        if options.get("max_bytes") is not None:
            changes["max_bytes"] = int(options["max_bytes"])  # type: ignore[arg-type]
        if options.get("retries") is not None:
            changes["retries"] = int(options["retries"])  # type: ignore[arg-type]
        return replace(self, **changes) if changes else self


class FetchError(Exception):
    """A fetch that failed; ``gone`` means HTTP 410 (the source should be disabled)."""

    def __init__(self, message: str, *, status: int | None = None, gone: bool = False):
        super().__init__(message)
        self.status = status
        self.gone = gone


@dataclass
class FetchResult:
    url: str
    status: int
    content: bytes
    headers: httpx.Headers

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def charset(self) -> str | None:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip("\"' ").lower()
        return None


def user_agent(base_url: str | None = None) -> str:
    try:
        release = version("mailer")
    except PackageNotFoundError:
        release = "dev"
    contact = f"; +{base_url}" if base_url else ""
    return f"mailer/{release} (press-release collector{contact})"


# Per-host slots are shared by every fetcher on one event loop, so that scheduler
# jobs collecting different sources of one site still take turns.
_HOST_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]]
_HOST_SLOTS = weakref.WeakKeyDictionary()


def _host_slot(host: str, limit: int) -> asyncio.Semaphore:
    slots = _HOST_SLOTS.setdefault(asyncio.get_running_loop(), {})
    if host not in slots:
        slots[host] = asyncio.Semaphore(limit)
    return slots[host]


class Fetcher:
    """One HTTP client for a collection run. Use as ``async with Fetcher(...) as f``."""

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        agent: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        addresses: AddressPolicy | None = None,
    ) -> None:
        """``addresses``: which internal hosts may be reached (default: none; see
        mailer.collect.guard). A ``transport`` given by a test replaces the guard."""
        self.policy = policy or FetchPolicy()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self._client = httpx.AsyncClient(
            follow_redirects=True,
            max_redirects=self.policy.max_redirects,
            headers={"User-Agent": agent or user_agent()},
            limits=limits,
            transport=transport or GuardedTransport(addresses or AddressPolicy(), limits=limits),
        )

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        accept: str | None = None,
        policy: FetchPolicy | None = None,
    ) -> FetchResult:
        """GET with retries. Raises FetchError with a message fit for an operator."""
        policy = policy or self.policy
        headers = {"Accept": accept or "*/*"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        host = urlsplit(url).netloc.lower()
        attempts = policy.retries + 1
        for attempt in range(attempts):
            final = attempt == attempts - 1
            try:
                async with _host_slot(host, policy.per_host):
                    result = await self._get_once(url, headers, policy)
            except _Retryable as exc:
                if final:
                    suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
                    raise FetchError(f"{exc}{suffix}", status=exc.status) from None
                await asyncio.sleep(exc.retry_after or self._backoff(policy, attempt))
                continue
            return result
        raise AssertionError("unreachable")

    @staticmethod
    def _backoff(policy: FetchPolicy, attempt: int) -> float:
        base = policy.backoff * (2**attempt)
        return base + random.uniform(0, policy.backoff)

    async def _get_once(
        self, url: str, headers: dict[str, str], policy: FetchPolicy
    ) -> FetchResult:
        timeout = httpx.Timeout(
            connect=policy.connect_timeout,
            read=policy.read_timeout,
            write=policy.read_timeout,
            pool=policy.total_timeout,
        )
        try:
            async with (
                asyncio.timeout(policy.total_timeout),
                self._client.stream("GET", url, headers=headers, timeout=timeout) as response,
            ):
                return await self._read(response, url, policy)
        except TimeoutError:
            raise _Retryable(
                f"gave up after {policy.total_timeout:g}s: the server sends too slowly"
            ) from None
        except BlockedAddress as exc:
            raise FetchError(str(exc)) from None
        except httpx.TooManyRedirects:
            raise FetchError(
                f"too many redirects (more than {policy.max_redirects}); is there a redirect loop?"
            ) from None
        except httpx.ConnectTimeout:
            raise _Retryable(f"could not connect within {policy.connect_timeout:g}s") from None
        except httpx.ReadTimeout:
            raise _Retryable(f"no data for {policy.read_timeout:g}s (read timeout)") from None
        except httpx.UnsupportedProtocol as exc:
            raise FetchError(f"unsupported URL: {exc}") from None
        except httpx.InvalidURL as exc:
            raise FetchError(f"invalid URL: {exc}") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            description = str(exc) or type(exc).__name__
            raise _Retryable(f"network error: {description}") from None

    async def _read(self, response: httpx.Response, url: str, policy: FetchPolicy) -> FetchResult:
        status = response.status_code
        final_url = str(response.url)
        if status == 304:
            return FetchResult(final_url, status, b"", response.headers)
        if status == 410:
            raise FetchError(
                "HTTP 410 Gone: the publisher removed this address", status=410, gone=True
            )
        if status in RETRYABLE_STATUS:
            raise _Retryable(
                f"HTTP {status} {response.reason_phrase}".strip(),
                status=status,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        if status >= 400:
            raise FetchError(f"HTTP {status} {response.reason_phrase}".strip(), status=status)
        if status != 200:
            reason = f"unexpected HTTP {status} {response.reason_phrase}".strip()
            raise FetchError(reason, status=status)
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > policy.max_bytes:
            raise FetchError(_too_big(policy.max_bytes, declared))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > policy.max_bytes:
                raise FetchError(_too_big(policy.max_bytes))
            chunks.append(chunk)
        return FetchResult(final_url, status, b"".join(chunks), response.headers)


class _Retryable(Exception):
    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _too_big(limit: int, declared: str | None = None) -> str:
    size = f" ({int(declared):,} bytes declared)" if declared else ""
    return f"response larger than the {limit:,}-byte limit{size}; stopped reading"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), _RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None

    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), _RETRY_AFTER_CAP))
