"""Settings: one YAML file, a few MAILER_* environment overrides, validated at start.

Which file: ``--config PATH``, else ``$MAILER_CONFIG``, else ``./config.yaml``.
Relative paths in the file (the data folder, a SQLite database, folder sources,
template overrides, DKIM keys) are resolved against the file's own directory so
that the same configuration works from any working directory.
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import secrets
import unicodedata
from datetime import timedelta
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from apscheduler.triggers.cron import CronTrigger
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "MAILER_DATABASE_URL": ("database", "url"),
    "MAILER_SMTP_HOST": ("smtp", "host"),
    "MAILER_SMTP_PORT": ("smtp", "port"),
    "MAILER_SMTP_EMBEDDED": ("smtp", "embedded"),
    "MAILER_SMTP_USERNAME": ("smtp", "username"),
    "MAILER_SMTP_PASSWORD": ("smtp", "password"),
    "MAILER_BASE_URL": ("site", "base_url"),
    "MAILER_SECRET_KEY": ("secret_key",),
    "MAILER_BOUNCE_WEBHOOK_SECRET": ("bounces", "webhook_secret"),
    "MAILER_METRICS_TOKEN": ("admin", "metrics_token"),
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


# Appended to signup.consent_version while tracking.individual is on.
INDIVIDUAL_TRACKING_VERSION = "+individual-tracking"


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line a user should read."""


def parse_duration(value: Any) -> timedelta:
    """Accept seconds as a number or strings like ``90s``, ``15m``, ``6h``, ``2d``, ``1w``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 15m, 6h or 900")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration such as 15m, 6h or 900")
        seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def format_duration(value: timedelta) -> str:
    """A duration the way config.yaml writes it (``30s``, ``15m``, ``2000d``): the
    largest of s, m, h, d that divides it exactly; the inverse of parse_duration.
    Weeks are left out: ``14d`` is how people write a fortnight in this file."""
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _no_header_breaks(value: str | None) -> str | None:
    if value is not None and _HEADER_UNSAFE.search(value):
        raise ValueError("must not contain line breaks or control characters")
    return value


HeaderSafe = Annotated[str, BeforeValidator(lambda v: _no_header_breaks(str(v)))]


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {value!r}") from exc
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SiteConfig(Section):
    name: HeaderSafe = "Press releases"
    base_url: str = "http://127.0.0.1:8000"
    postal_address: str = ""
    # A folder whose templates take precedence over the shipped ones (same names).
    templates_dir: Path | None = None
    # Reverse proxies whose X-Forwarded-For names the client (addresses or networks).
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return values

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback_url(base_url: str) -> bool:
    """True for a base URL on this machine with no path (the shipped default)."""
    parsed = urlsplit(base_url)
    return parsed.hostname in {h.strip("[]") for h in LOOPBACK_HOSTS} and not parsed.path


def served_base_url(base_url: str, host: str, port: int) -> str | None:
    """The base URL links should use when ``mailer serve`` binds ``host:port``.

    A base_url on this machine (loopback, no path: the shipped default) only makes
    sense if it names the port the server listens on, so it follows the bound port,
    and the bound host when that is a loopback address too. Any other base_url is
    the public address (a reverse proxy) and stays as configured. Returns None when
    the base_url stays as it is; raises ValueError when no right URL exists."""
    if not is_loopback_url(base_url):
        return None
    parsed = urlsplit(base_url)
    if port == 0:
        raise ValueError(
            f"site.base_url is {base_url}, on this machine, so the links in every mail "
            "must name the port mailer serves on; choose one with --port, or set "
            "site.base_url to the public address"
        )
    link_host = parsed.hostname or "127.0.0.1"
    if host in LOOPBACK_HOSTS:
        link_host = host.strip("[]")
    netloc = f"[{link_host}]" if ":" in link_host else link_host
    followed = f"{parsed.scheme}://{netloc}:{port}"
    return None if followed == base_url else followed


class DatabaseConfig(Section):
    url: str = "sqlite:///data/mailer.db"


class SmtpConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: str | None = None
    # CA bundle that signs the server's certificate, for a relay with a private CA;
    # null trusts the system's CAs. The certificate and host name are always checked.
    ca_file: Path | None = None
    timeout: Duration = timedelta(seconds=30)
    connections: int = Field(4, ge=1, le=200)
    rate_limit: float = Field(0, ge=0)
    # At most this many connections are open for one recipient domain at once, for
    # all processes of one machine sharing data_dir (see destinations.py).
    per_domain_connections: int = Field(4, ge=1, le=200)
    # 4xx replies and unreachable servers: retry with exponential backoff and jitter,
    # starting at retry_base, at most retry_max_interval apart, for up to retry_for.
    retry_base: Duration = timedelta(minutes=1)
    retry_max_interval: Duration = timedelta(hours=1)
    retry_for: Duration = timedelta(days=3)
    # This many permanent failures in a row pause the send (a sign of a blocked sender).
    pause_after_failures: int = Field(50, ge=1)
    # True: mail goes to a loopback catcher started inside the sending process,
    # which writes each message as an .eml file under <data_dir>/mail/.
    embedded: bool = True


class SenderConfig(Section):
    from_: HeaderSafe = Field("Press Office <press@localhost>", alias="from")
    reply_to: HeaderSafe | None = None
    list_id: HeaderSafe = "press-releases.localhost"

    @field_validator("from_", "reply_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _, address = parseaddr(value)
        if "@" not in address:
            raise ValueError(f"{value!r} is not an email address")
        return value

    @property
    def from_address(self) -> str:
        return parseaddr(self.from_)[1]

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2]


class DigestSchedule(Section):
    frequency: Literal["daily", "weekly"]
    cron: str
    timezone: TimeZoneName = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a crontab expression: {exc}") from exc
        return value


class DigestConfig(Section):
    # {site}, {count} and {title} (the newest release's title) are filled in.
    subject: HeaderSafe = "{site} — {count} new press releases"
    # Used instead of subject when a digest holds a single release.
    subject_single: HeaderSafe | None = "{site}: {title}"
    max_items: int = Field(50, ge=1, le=500)
    # Releases published longer ago than this are never sent (say, an archive a
    # newly added source brings in), however recently they were collected.
    max_age: Duration = timedelta(days=14)
    # Dates in emails are shown in this timezone.
    timezone: TimeZoneName = "UTC"
    schedules: list[DigestSchedule] = Field(
        default_factory=lambda: [
            DigestSchedule(frequency="daily", cron="0 7 * * *", timezone="UTC"),
            DigestSchedule(frequency="weekly", cron="0 7 * * mon", timezone="UTC"),
        ]
    )

    @field_validator("subject", "subject_single")
    @classmethod
    def _subject_fields(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.format_map({"site": "", "count": 0, "title": ""})
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"{value!r}: only {{site}}, {{count}} and {{title}} can be filled in ({exc})"
                ) from None
        return value


class SourceConfig(Section):
    name: str = Field(min_length=1, max_length=100)
    kind: Literal["feed", "page", "folder"]
    url: str | None = None
    path: Path | None = None
    interval: Duration = timedelta(minutes=30)
    enabled: bool = True
    # page sources: CSS selector for the links to release pages on the listing page.
    link_selector: str | None = None
    # page sources: at most this many new release pages are fetched per run.
    max_pages: int = Field(30, ge=1, le=1000)
    # HTTP: longest wait for the server to answer or send more (the whole response
    # may take three times this), largest response, extra attempts after 5xx/network errors.
    timeout: Duration = timedelta(seconds=20)
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    retries: int = Field(2, ge=0, le=10)
    # Zone for dates the source writes without one ("2023 07 12", "12.07.2023 14:00").
    timezone: TimeZoneName = "UTC"
    # The character encoding to read the source in, when it declares a wrong one.
    encoding: str | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown character encoding {value!r}") from None
        return value

    @field_validator("url")
    @classmethod
    def _source_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    def collector_options(self) -> dict[str, Any]:
        """What the collector reads from Source.options (admin-added sources have the same)."""
        options: dict[str, Any] = {
            "timeout": self.timeout.total_seconds(),
            "max_bytes": self.max_bytes,
            "retries": self.retries,
            "timezone": self.timezone,
            "encoding": self.encoding,
        }
        if self.kind == "page":
            options.update(link_selector=self.link_selector, max_pages=self.max_pages)
        return options

    @model_validator(mode="after")
    def _location(self) -> SourceConfig:
        if self.kind == "folder" and self.path is None:
            raise ValueError(f"source {self.name!r}: a folder source needs a path")
        if self.kind == "page" and not self.url:
            raise ValueError(f"source {self.name!r}: a page source needs a url")
        if self.kind == "page" and not self.link_selector:
            raise ValueError(f"source {self.name!r}: a page source needs a link_selector")
        if self.kind == "feed" and not (self.url or self.path):
            raise ValueError(f"source {self.name!r}: a feed source needs a url or a path")
        return self


class TopicConfig(Section):
    name: str = Field(min_length=1, max_length=100)
    slug: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    # Words or phrases; matched case- and diacritics-insensitively on word boundaries.
    keywords: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return self.slug or slugify(self.name)


class SignupConfig(Section):
    # How long a confirmation link works.
    confirm_ttl: Duration = timedelta(hours=48)
    # At most one confirmation email per address within this time.
    confirmation_interval: Duration = timedelta(minutes=10)
    # Shown next to the form's submit button; {site} is filled in. Change the version
    # whenever the wording changes: each consent record stores the version agreed to.
    consent_text: str = Field(
        "I agree to receive press releases from {site} by email. I can unsubscribe at any "
        "time with the link in every email.",
        min_length=1,
        max_length=2000,
    )
    consent_version: str = Field("1", min_length=1, max_length=40)
    # Link the consent wording points to; null serves privacy_notice at /privacy.
    privacy_url: str | None = None
    privacy_notice: str = Field(
        "We keep your email address, your name if you give it, the topics and frequency "
        "you chose, and a record of your consent (time, IP address, browser and the "
        "wording you agreed to). We use them only to send you the press releases you "
        "asked for. You can change your choices, download everything we hold about you "
        "or erase it from the preferences link in every email. After erasure only a "
        "keyed hash of your address is kept, so that we never write to you again.",
        min_length=1,
    )
    # Accept addresses at special-use domains (.test, .example, .invalid, .localhost,
    # example.com, ...). Only for staging and test setups: mail to them goes nowhere.
    allow_special_use_domains: bool = False
    # Form posts allowed per client IP and per address within rate_limit_window.
    rate_limit_per_ip: int = Field(20, ge=1)
    rate_limit_per_address: int = Field(5, ge=1)
    rate_limit_window: Duration = timedelta(hours=1)

    @field_validator("privacy_url")
    @classmethod
    def _link(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(https?://[^\s/]+|/)[^\s]*$", value):
            raise ValueError("must be an http:// or https:// URL or a path starting with /")
        return value


class MailboxConfig(Section):
    host: str
    port: int = Field(993, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "tls"
    username: str
    password: str
    folder: str = "INBOX"


class BounceConfig(Section):
    # The envelope sender (Return-Path) of every message, e.g. bounces@news.example.org.
    # Each message leaves as bounces+<signed token>@..., so a bounce names its delivery;
    # with a polled mailbox, List-Unsubscribe's mailto uses it too. Recommended: an
    # address of its own, so that the From address stays a mailbox for people.
    # null: the From address (press+<token>@...).
    address: str | None = None
    # A Maildir the MTA delivers bounces (and mailto unsubscribes) to.
    maildir: Path | None = None
    # Or a mailbox polled over IMAP or POP3. Bounces and unsubscribe requests are
    # deleted once handled; anything else is never deleted (see other_mail_folder).
    imap: MailboxConfig | None = None
    pop3: MailboxConfig | None = None
    # Mail in the polled mailbox that is neither a bounce of mailer's own mail nor an
    # unsubscribe request (replies, auto-replies, forged bounces) is moved to this
    # folder for people to read (a Maildir++ sub-folder or an IMAP folder). POP3 has
    # no folders: such mail stays in the mailbox.
    other_mail_folder: str = Field("Other mail", min_length=1, max_length=100)
    poll_interval: Duration = timedelta(minutes=5)
    # Bearer secret for POST /webhooks/bounce; without it the endpoint answers 404.
    webhook_secret: str | None = Field(None, min_length=16)
    # This many soft bounces within soft_window suppress an address.
    soft_limit: int = Field(3, ge=1)
    soft_window: Duration = timedelta(days=30)

    @field_validator("address")
    @classmethod
    def _plain_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(
            r"[^\s@<>()+\"]+@[^\s@<>()\"]+\.[^\s@<>()\"]+", value
        ):
            raise ValueError(f"{value!r} is not a plain address such as bounces@news.example.org")
        if value is not None and len(value.partition("@")[0]) > 30:
            # The token (up to 30 characters) must fit into SMTP's 64-character local part.
            raise ValueError("the part before the @ must be at most 30 characters")
        return value

    @field_validator("other_mail_folder")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if value.startswith(".") or re.search(r"[/\\\x00-\x1f\x7f]", value):
            raise ValueError("must be a folder name without '/', '\\' or a leading '.'")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.maildir or self.imap or self.pop3)


class AdminConfig(Section):
    # A signed-in session ends this long after the login, whatever happens in between.
    session_lifetime: Duration = timedelta(hours=12)
    # ... and after this long without a request.
    session_idle: Duration = timedelta(hours=2)
    # This many wrong passwords in a row lock the account for lockout_duration.
    lockout_threshold: int = Field(5, ge=1, le=100)
    lockout_duration: Duration = timedelta(minutes=15)
    # Login attempts accepted per client IP address within login_rate_window.
    login_rate_limit: int = Field(20, ge=1)
    login_rate_window: Duration = timedelta(minutes=15)
    # Bearer token for GET /metrics; null leaves the metrics open (bind to a private network).
    metrics_token: str | None = Field(None, min_length=16)


class CollectorConfig(Section):
    # Hosts (names, addresses or networks such as 10.0.0.0/8) the collector may fetch
    # from although they are loopback, private, link-local or otherwise internal.
    allow_private_hosts: list[str] = Field(default_factory=list)
    # Folder and feed-file sources must lie under one of these folders; null means
    # the configuration file's folder and data_dir.
    folder_roots: list[Path] | None = None

    @field_validator("allow_private_hosts")
    @classmethod
    def _hosts(cls, values: list[str]) -> list[str]:
        for value in values:
            text = value.strip()
            if "/" in text:
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise ValueError(f"{value!r} is not a network such as 10.0.0.0/8") from None
            elif not re.match(r"^[A-Za-z0-9.:\[\]_-]+$", text):
                raise ValueError(f"{value!r} is not a host name or address")
        return values


class ArchiveConfig(Section):
    # The public archive: /releases, release pages, /digests/<id> (the "View in browser"
    # link of every digest), feeds, sitemap and robots.txt. False answers 404 on all of
    # them and leaves the link out of the digests, for a private list.
    public: bool = True
    # Releases on one page of /releases.
    page_size: int = Field(20, ge=5, le=100)
    # Newest releases in each Atom and JSON feed.
    feed_items: int = Field(50, ge=1, le=500)


class TrackingConfig(Section):
    # What mailer records about what readers do with a digest (docs/deliverability.md,
    # "Engagement", says exactly what each setting stores; so does /privacy).
    # Links to releases go through /r/<signed token>, which counts a click per send
    # and release and redirects to the release.
    clicks: bool = False
    # A 1x1 image counts openings of the HTML part. Image proxies and Apple Mail
    # Privacy Protection fetch it without anyone reading: shown as approximate only.
    opens: bool = False
    # Opt-in: tie clicks and opens to the reader (their data export lists them,
    # erasure removes the link). Only where the consent wording covers it; switching
    # it on adds "+individual-tracking" to signup.consent_version.
    individual: bool = False
    # A link scanner fetches every link of a message within seconds: several releases
    # of one send within this window from one browser (or one reader's message), or a
    # click this soon after the message was delivered, is counted as a scanner's.
    scanner_window: Duration = Field(timedelta(seconds=10), ge=timedelta(seconds=1))
    # Added to the built-in list of security gateways' user agents (case-insensitive
    # substrings) whose requests are never counted as clicks.
    scanner_agents: list[str] = Field(default_factory=list)


class RetentionConfig(Section):
    # Finished sends keep their per-recipient rows (deliveries) this long after they
    # finished, then only their counts (mailer.retention). null keeps them forever.
    deliveries: Duration | None = timedelta(days=90)


class DkimConfig(Section):
    domain: str
    selector: str
    private_key_file: Path
    # rsa-sha256 always; ed25519-sha256 (RFC 8463) adds a second signature with
    # its own key and selector.
    algorithms: list[Literal["rsa-sha256", "ed25519-sha256"]] = Field(
        default_factory=lambda: ["rsa-sha256"], min_length=1
    )
    ed25519_selector: str | None = None
    ed25519_private_key_file: Path | None = None

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> DkimConfig:
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("dkim.algorithms: an algorithm is listed twice")
        if "rsa-sha256" not in self.algorithms:
            raise ValueError(
                "dkim.algorithms must include rsa-sha256: most receivers (Gmail, Outlook) "
                "cannot verify ed25519-sha256 alone"
            )
        wants_ed25519 = "ed25519-sha256" in self.algorithms
        has_ed25519 = self.ed25519_selector is not None or self.ed25519_private_key_file is not None
        if wants_ed25519 and (
            self.ed25519_selector is None or self.ed25519_private_key_file is None
        ):
            raise ValueError(
                "dkim.algorithms has ed25519-sha256: set dkim.ed25519_selector and "
                "dkim.ed25519_private_key_file (make them with `mailer dkim keygen "
                "--algorithm ed25519`)"
            )
        if has_ed25519 and not wants_ed25519:
            raise ValueError(
                "dkim.ed25519_selector/ed25519_private_key_file are set but dkim.algorithms "
                "does not include ed25519-sha256"
            )
        if wants_ed25519 and self.ed25519_selector == self.selector:
            raise ValueError(
                "dkim.ed25519_selector must differ from dkim.selector: each key is "
                "published under its own selector"
            )
        return self


class Settings(Section):
    site: SiteConfig = SiteConfig()
    database: DatabaseConfig = DatabaseConfig()
    smtp: SmtpConfig = SmtpConfig()
    sender: SenderConfig = SenderConfig()
    digest: DigestConfig = DigestConfig()
    sources: list[SourceConfig] = Field(default_factory=list)
    topics: list[TopicConfig] = Field(default_factory=list)
    dkim: DkimConfig | None = None
    bounces: BounceConfig = BounceConfig()
    signup: SignupConfig = SignupConfig()
    admin: AdminConfig = AdminConfig()
    collector: CollectorConfig = CollectorConfig()
    archive: ArchiveConfig = ArchiveConfig()
    tracking: TrackingConfig = TrackingConfig()
    retention: RetentionConfig = RetentionConfig()
    # Holds the SQLite database, the generated secret key and the caught mail.
    data_dir: Path = Path("data")
    # Prefer MAILER_SECRET_KEY; if neither is set one is generated into data_dir.
    secret_key: str | None = Field(None, min_length=16)
    # Where the file was read from; relative paths above are resolved against it.
    config_path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        for label, names in (
            ("sources", [s.name for s in self.sources]),
            ("topics", [t.key for t in self.topics]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    raise ValueError(f"{label}: {name!r} is listed twice")
                seen.add(name)
        return self

    @model_validator(mode="after")
    def _consent_covers_tracking(self) -> Settings:
        # Consent given before individual tracking was switched on did not cover it:
        # a new wording version tells those records apart from the new ones.
        version = self.signup.consent_version
        if self.tracking.individual and not version.endswith(INDIVIDUAL_TRACKING_VERSION):
            signup = self.signup.model_copy(
                update={"consent_version": version + INDIVIDUAL_TRACKING_VERSION}
            )
            object.__setattr__(self, "signup", signup)
        return self

    @property
    def base_dir(self) -> Path:
        return self.config_path.parent if self.config_path else Path.cwd()

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def folder_roots(self) -> list[Path]:
        """The folders folder and feed-file sources may read from."""
        if self.collector.folder_roots is not None:
            return [self.resolve(root) for root in self.collector.folder_roots]
        return [self.base_dir.resolve(), self.data_path]

    @property
    def mail_dir(self) -> Path:
        """Where the embedded catcher writes each caught message as an .eml file."""
        return self.data_path / "mail"

    def get_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        key_file = self.data_path / "secret_key"
        if key_file.exists():
            return key_file.read_text().strip()
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # O_EXCL: two processes starting at once must agree on one key.
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return key_file.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:63] or "topic"


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("MAILER_CONFIG"):
        return Path(os.environ["MAILER_CONFIG"])
    return Path("config.yaml")


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, override from the environment and validate. Raises ConfigError with one line."""
    config_path = find_config_path(path)
    shown = str(config_path)
    try:
        raw_text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory, not a configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read: {exc}") from None
    try:
        raw = yaml.safe_load(raw_text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{shown}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: the top level must be a mapping of sections")
    return settings_from_mapping(raw, config_path=config_path.resolve(), shown=shown)


def settings_from_mapping(
    raw: dict[str, Any],
    *,
    config_path: Path | None = None,
    shown: str = "configuration",
    environ: dict[str, str] | None = None,
) -> Settings:
    environ = dict(os.environ) if environ is None else environ
    raw = _apply_environment(raw, environ)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, shown, environ)) from None
    settings = settings.model_copy(update={"config_path": config_path})
    _check_folders(settings, shown)
    return settings


def _check_folders(settings: Settings, shown: str) -> None:
    """Folders the settings name must be usable folders: found out now, in one line,
    rather than as a 500 on every page or templates silently not overridden."""
    data = settings.data_path
    if data.exists() and not data.is_dir():
        raise ConfigError(f"{shown}: data_dir: {data} is a file, not a folder")
    templates = settings.site.templates_dir
    if templates is not None:
        folder = settings.resolve(templates)
        if not folder.is_dir():
            problem = "is not a folder" if folder.exists() else "does not exist"
            raise ConfigError(f"{shown}: site.templates_dir: {folder} {problem}")
    for root in settings.collector.folder_roots or []:
        folder = settings.resolve(root)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{shown}: collector.folder_roots: {folder} is not a folder")
    located = [(n, s) for n, s in enumerate(settings.sources) if s.path is not None]
    if located:
        # Lazy: mailer.collect imports this module (a cycle at the top), and would add
        # ~440 ms CPU to every command's start (bench/startup.py).
        from mailer.collect.guard import OutsideFolderRoots, inside_roots

        for number, source in located:
            assert source.path is not None
            try:
                inside_roots(settings.resolve(source.path), settings.folder_roots)
            except OutsideFolderRoots as exc:
                raise ConfigError(f"{shown}: sources[{number}].path: {exc}") from None


def _apply_environment(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    merged: dict[str, Any] = {**raw}
    for variable, keys in ENV_OVERRIDES.items():
        if variable not in environ:
            continue
        target = merged
        for key in keys[:-1]:
            section = target.get(key)
            target[key] = dict(section) if isinstance(section, dict) else {}
            target = target[key]
        target[keys[-1]] = environ[variable]
    return merged


def _describe(exc: ValidationError, shown: str, environ: dict[str, str]) -> str:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"]]
    # A failing override is reported under the variable's name, not the file's key.
    where = ".".join(location)
    for variable, keys in ENV_OVERRIDES.items():
        if tuple(location[: len(keys)]) == keys and variable in environ:
            where = f"{where} (from ${variable})"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    message = message.removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{shown}: {where or '(top level)'}: {message}{tail}"
