"""Engagement: which releases readers follow, without tracking readers by default.

Clicks (``tracking.clicks``)
    A release's link in a digest becomes ``/r/<token>``: the token is signed with the
    site's key (itsdangerous, its own salt) and names only the send and the release,
    so every reader of a content gets the same URL and the composer renders it once
    per content. The redirect goes to the release's own link and only for a release
    that was in that send: the target never comes from the request, so ``/r/`` is no
    open redirect, and an unknown or tampered token is a 404.
Opens (``tracking.opens``)
    A 1x1 image ``/o/<token>`` naming the send. Image proxies and Apple Mail Privacy
    Protection load it whether or not anyone reads, so opens are shown as
    approximate and nothing automatic uses them.
Readers (``tracking.individual``, opt-in)
    Each message's links and image get a second path segment, a keyed MAC of the
    delivery, and clicks and opens are stored with the subscriber. Without it nothing
    stored points to a reader: no subscriber, no IP address, no browser.

Scanner filtering
    Security gateways fetch links before (or instead of) the reader. A request does
    not count as a click when it is a HEAD, when its user agent is a known gateway's,
    when the same browser (or, with individual tracking, the same message) fetched a
    different release of the send within ``tracking.scanner_window`` (a burst: every
    click of it is discarded, the earlier ones too), or, with individual tracking,
    when it came within that window of the delivery. Discarded clicks are kept and
    shown separately.

    "The same browser" is a keyed hash of the client's address and user agent with a
    key made at process start and never stored; the recent hashes are kept in memory
    for the burst window and for a day to count a browser's repeated clicks on one
    release once ("unique clicks"). Several web processes each keep their own, so
    without individual tracking unique clicks are approximate.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import hmac
import io
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from prometheus_client.core import CounterMetricFamily, Metric
from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from mailer.config import Settings
from mailer.db import Database, day_of
from mailer.models import (
    Click,
    ConsentEvent,
    ContentGroup,
    Delivery,
    DeliveryStatus,
    Digest,
    Open,
    Release,
    ReleaseTopic,
    Subscriber,
    Topic,
    utcnow,
)
from mailer.retention import send_counts

log = logging.getLogger(__name__)

# User-agent substrings (lower case) of link scanners, security gateways and link
# previewers: their requests never count as clicks.
SCANNER_AGENTS = (
    "barracuda",
    "mimecast",
    "proofpoint",
    "ppops",
    "symantec",
    "messagelabs",
    "trendmicro",
    "fortiguard",
    "forcepoint",
    "sophos",
    "ironport",
    "bitdefender",
    "checkpoint",
    "zscaler",
    "safelinks",
    "microsoft office",
    "ms-office",
    "google-safety",
    "googleimageproxy",
    "yahoomailproxy",
    "slurp",
    "bot",
    "crawler",
    "spider",
    "preview",
    "python-requests",
    "python-httpx",
    "go-http-client",
    "curl/",
    "wget/",
    "java/",
    "okhttp",
)
# How long a browser's click on a release is remembered, to count it once.
REPEAT_MEMORY = timedelta(days=1)
MEMORY_SIZE = 100_000
SEND_CACHE_SIZE = 256
# A transparent 1x1 GIF (the smallest image every client shows).
PIXEL_GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
_READER = re.compile(r"^(\d{1,19})\.([0-9a-f]{16})$")


class Discard(enum.StrEnum):
    """Why a request to a tracked link was not counted as a reader's click."""

    HEAD = "head"  # a HEAD request: link checkers, never a person
    AGENT = "agent"  # a security gateway's or previewer's user agent
    BURST = "burst"  # several releases of one send within the scanner window
    EARLY = "early"  # within the scanner window of the delivery (individual tracking)


class UnknownLink(Exception):
    """The token is not one this site made for a release of that send (404)."""


# --- tokens ----------------------------------------------------------------------------


class LinkSigner:
    """The tracked URLs of a site; build once, use for many links."""

    def __init__(self, settings: Settings) -> None:
        secret = settings.get_secret_key()
        self._click = URLSafeSerializer(secret, salt="mailer.click")
        self._open = URLSafeSerializer(secret, salt="mailer.open")
        self._reader_key = hashlib.sha256(b"mailer.reader-token:" + secret.encode()).digest()
        self._base = settings.site.base_url

    def click_url(self, digest_id: int, release_id: int) -> str:
        return f"{self._base}/r/{self._click.dumps([digest_id, release_id])}"

    def open_url(self, digest_id: int) -> str:
        return f"{self._base}/o/{self._open.dumps([digest_id])}"

    def read_click(self, token: str) -> tuple[int, int]:
        payload = _loads(self._click, token)
        if len(payload) != 2:
            raise UnknownLink("not a link token")
        return payload[0], payload[1]

    def read_open(self, token: str) -> int:
        payload = _loads(self._open, token)
        if len(payload) != 1:
            raise UnknownLink("not an image token")
        return payload[0]

    def reader(self, delivery_id: int) -> str:
        """The path segment that names one message (individual tracking only)."""
        return f"{delivery_id}.{self._mac(delivery_id)}"

    def read_reader(self, segment: str) -> int:
        match = _READER.match(segment)
        if match is None or not hmac.compare_digest(match.group(2), self._mac(int(match.group(1)))):
            raise UnknownLink("not a reader token")
        return int(match.group(1))

    def _mac(self, delivery_id: int) -> str:
        return hashlib.blake2b(
            str(delivery_id).encode(), key=self._reader_key, digest_size=8
        ).hexdigest()


def _loads(serializer: URLSafeSerializer, token: str) -> list[int]:
    if len(token) > 200:
        raise UnknownLink("token too long")
    try:
        payload = serializer.loads(token)
    except (BadSignature, ValueError, TypeError, UnicodeError):
        raise UnknownLink("bad signature") from None
    if not isinstance(payload, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n < 2**31 for n in payload
    ):
        raise UnknownLink("bad payload")
    return payload


# --- in-process memory: bursts and repeated clicks -----------------------------------------


@dataclass
class _Recent:
    at: datetime
    digest_id: int
    release_id: int
    click_id: int


class ClickMemory:
    """Recent clicks per browser (or message), in memory only: see the module doc."""

    def __init__(self, window: timedelta, size: int = MEMORY_SIZE) -> None:
        self.window = window
        self._key = secrets.token_bytes(32)
        self._size = size
        self._recent: OrderedDict[bytes, list[_Recent]] = OrderedDict()
        self._seen: OrderedDict[tuple[bytes, int, int], datetime] = OrderedDict()

    def browser(self, client: str, user_agent: str) -> bytes:
        return hashlib.blake2b(
            f"{client}\n{user_agent}".encode(), key=self._key, digest_size=16
        ).digest()

    @staticmethod
    def message(delivery_id: int) -> bytes:
        return b"d%d" % delivery_id

    def burst(self, who: bytes, digest_id: int, release_id: int, now: datetime) -> list[int]:
        """Click ids of the same send fetched by ``who`` within the window, when one of
        them was another release (a scanner's sweep); otherwise an empty list."""
        recent = [
            r
            for r in self._recent.get(who, [])
            if now - r.at <= self.window and r.digest_id == digest_id
        ]
        if any(r.release_id != release_id for r in recent):
            return [r.click_id for r in recent]
        return []

    def remember(
        self, who: bytes, digest_id: int, release_id: int, click_id: int, now: datetime
    ) -> None:
        recent = [r for r in self._recent.pop(who, []) if now - r.at <= self.window]
        recent.append(_Recent(now, digest_id, release_id, click_id))
        self._recent[who] = recent
        while len(self._recent) > self._size:
            self._recent.popitem(last=False)

    def first(self, who: bytes, digest_id: int, release_id: int, now: datetime) -> bool:
        """True the first time within REPEAT_MEMORY that ``who`` counts on this release."""
        key = (who, digest_id, release_id)
        seen = self._seen.pop(key, None)
        self._seen[key] = now if seen is None or now - seen > REPEAT_MEMORY else seen
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return seen is None or now - seen > REPEAT_MEMORY


@dataclass
class Tracker:
    """What the /r/ and /o/ handlers of one process share."""

    settings: Settings
    signer: LinkSigner = field(init=False)
    memory: ClickMemory = field(init=False)
    _sends: OrderedDict[int, frozenset[int]] = field(init=False, default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.signer = LinkSigner(self.settings)
        self.memory = ClickMemory(self.settings.tracking.scanner_window)
        agents = (*SCANNER_AGENTS, *(a.lower() for a in self.settings.tracking.scanner_agents))
        self._agents = re.compile("|".join(re.escape(a) for a in agents if a))

    def is_scanner_agent(self, user_agent: str) -> bool:
        # No user agent at all is a program, not a browser.
        return not user_agent.strip() or self._agents.search(user_agent.lower()) is not None

    async def send_releases(self, session: AsyncSession, digest_id: int) -> frozenset[int]:
        """The releases of a send (from its content groups)."""
        cached = self._sends.get(digest_id)
        if cached is not None:
            self._sends.move_to_end(digest_id)
            return cached
        rows = await session.scalars(
            select(ContentGroup.release_ids).where(
                ContentGroup.digest_id == digest_id, ContentGroup.recipients > 0
            )
        )
        releases = frozenset(int(i) for row in rows.all() for i in row)
        if releases:  # a send's contents never change once it has deliveries
            self._sends[digest_id] = releases
            if len(self._sends) > SEND_CACHE_SIZE:
                self._sends.popitem(last=False)
        return releases


# --- recording ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    """What the handlers pass on from an HTTP request."""

    method: str
    client: str
    user_agent: str


async def _reader(
    session: AsyncSession, tracker: Tracker, reader: str | None, digest_id: int
) -> Delivery | None:
    """The delivery a reader segment names (None without one, or when the site does
    not track readers now: a link mailed while it did is then counted anonymously)."""
    if reader is None:
        return None
    delivery_id = tracker.signer.read_reader(reader)
    if not tracker.settings.tracking.individual:
        return None
    delivery = await session.get(Delivery, delivery_id)
    if delivery is None or delivery.digest_id != digest_id:
        raise UnknownLink("not a message of this send")
    return delivery


async def record_click(
    database: Database,
    tracker: Tracker,
    token: str,
    reader: str | None,
    visit: Visit,
    now: datetime | None = None,
) -> str:
    """Count a request to a tracked link and return where it leads.

    Raises UnknownLink (a 404) for a token this site did not make, a release that was
    not in that send or has no link; the destination is always the release's own."""
    # Lazy: mailer.message imports this module (LinkSigner), a cycle at the top.
    from mailer.message import DigestItem

    now = now or utcnow()
    digest_id, release_id = tracker.signer.read_click(token)
    async with database.session() as session:
        if release_id not in await tracker.send_releases(session, digest_id):
            raise UnknownLink("not a release of this send")
        release = await session.get(Release, release_id)
        target = DigestItem.from_release(release).url if release is not None else None
        if target is None:
            raise UnknownLink("the release has no link")
        if not tracker.settings.tracking.clicks:
            # Switched off since the send: the link still leads on, uncounted.
            return target
        delivery = await _reader(session, tracker, reader, digest_id)
        subscriber_id = delivery.subscriber_id if delivery is not None else None
        earlier = None
        if subscriber_id is not None:
            earlier = await session.scalar(
                select(Click.id)
                .where(
                    Click.subscriber_id == subscriber_id,
                    Click.digest_id == digest_id,
                    Click.release_id == release_id,
                    Click.discarded.is_(None),
                )
                .limit(1)
            )
    if delivery is not None:
        who = tracker.memory.message(delivery.id)
    else:
        who = tracker.memory.browser(visit.client, visit.user_agent)
    swept: list[int] = []
    discarded: Discard | None = None
    if visit.method == "HEAD":
        discarded = Discard.HEAD
    elif tracker.is_scanner_agent(visit.user_agent):
        discarded = Discard.AGENT
    elif (
        delivery is not None
        and delivery.sent_at is not None
        and now - delivery.sent_at < tracker.settings.tracking.scanner_window
    ):
        discarded = Discard.EARLY
    else:
        swept = tracker.memory.burst(who, digest_id, release_id, now)
        if swept:
            discarded = Discard.BURST
    if discarded is None:
        first = (
            earlier is None
            if delivery is not None
            else tracker.memory.first(who, digest_id, release_id, now)
        )
    else:
        first = False
    try:
        async with database.transaction() as session:
            click = Click(
                digest_id=digest_id,
                release_id=release_id,
                at=now,
                discarded=discarded.value if discarded else None,
                first=first,
                subscriber_id=subscriber_id,
            )
            session.add(click)
            await session.flush()
            if swept:
                await session.execute(
                    update(Click)
                    .where(Click.id.in_(swept), Click.discarded.is_(None))
                    .values(discarded=Discard.BURST.value)
                )
    except SQLAlchemyError as exc:
        # The reader still reaches the release; one click goes uncounted, and says so.
        log.warning("a click on send %d could not be recorded: %s", digest_id, exc)
        return target
    if discarded in (None, Discard.BURST):
        tracker.memory.remember(who, digest_id, release_id, click.id, now)
    return target


async def record_open(
    database: Database,
    tracker: Tracker,
    token: str,
    reader: str | None,
    visit: Visit,
    now: datetime | None = None,
) -> None:
    """Count a load of a digest's image (not for HEAD requests)."""
    now = now or utcnow()
    digest_id = tracker.signer.read_open(token)
    async with database.session() as session:
        if not await tracker.send_releases(session, digest_id):
            raise UnknownLink("no such send")
        delivery = await _reader(session, tracker, reader, digest_id)
    if visit.method == "HEAD" or not tracker.settings.tracking.opens:
        return
    async with database.transaction() as session:
        session.add(
            Open(
                digest_id=digest_id,
                at=now,
                subscriber_id=delivery.subscriber_id if delivery is not None else None,
            )
        )


# --- reports ------------------------------------------------------------------------------

_COUNTED = Click.discarded.is_(None)
# A send's delivery to a reader, beside other deliveries to the same reader.
_Last = aliased(Delivery)


@dataclass(frozen=True)
class ReleaseClicks:
    release_id: int
    title: str
    clicks: int
    unique_clicks: int
    # Clicks on this release that were discarded as a scanner's.
    discarded: int
    # Sends the release was clicked in (in reports across sends).
    sends: int = 1


@dataclass(frozen=True)
class SendReport:
    digest_id: int
    kind: str
    started_at: datetime | None
    delivered: int
    bounced: int
    # Unsubscribes with this send's link (or, naming no send, after it as the
    # reader's last message): see unsubscribes_per_send.
    unsubscribed: int
    clicks: int
    unique_clicks: int
    discarded: int
    opens_approximate: int
    # Readers who opened, with individual tracking (None otherwise).
    readers_opened: int | None
    releases: list[ReleaseClicks]

    @property
    def click_rate(self) -> float | None:
        """Unique clicks per delivered message."""
        return self.unique_clicks / self.delivered if self.delivered else None


def _click_counts() -> tuple[Any, Any, Any]:
    counted = func.count(Click.id).filter(_COUNTED)
    unique = func.count(Click.id).filter(and_(_COUNTED, Click.first.is_(True)))
    discarded = func.count(Click.id).filter(Click.discarded.is_not(None))
    return counted, unique, discarded


def _ranked(rows: Iterable[ReleaseClicks]) -> list[ReleaseClicks]:
    return sorted(rows, key=lambda r: (-r.unique_clicks, -r.clicks, r.release_id))


async def unsubscribes_per_send(session: AsyncSession, digest_ids: Sequence[int]) -> dict[int, int]:
    """Per send: the unsubscribes made with its link (digests' unsubscribe links name
    their send), plus those that name none (the mailto address, the preferences page,
    links mailed before sends were named): counted for the reader's last message
    before they unsubscribed."""
    if not digest_ids:
        return {}
    named_send = ConsentEvent.details["send"].as_integer()
    by_link = await session.execute(
        select(named_send, func.count())
        .where(ConsentEvent.action == "unsubscribe", named_send.in_(digest_ids))
        .group_by(named_send)
    )
    counts = {int(digest_id): number for digest_id, number in by_link}
    said_which = (
        select(ConsentEvent.id)
        .where(
            ConsentEvent.subscriber_id == Subscriber.id,
            ConsentEvent.action == "unsubscribe",
            ConsentEvent.at >= Subscriber.unsubscribed_at,
            named_send.is_not(None),
        )
        .exists()
    )
    later = (
        select(Delivery.id)
        .where(
            Delivery.subscriber_id == Subscriber.id,
            Delivery.status == DeliveryStatus.SENT,
            Delivery.sent_at > _Last.sent_at,
            Delivery.sent_at <= Subscriber.unsubscribed_at,
        )
        .exists()
    )
    by_last_message = await session.execute(
        select(_Last.digest_id, func.count())
        .join(Subscriber, Subscriber.id == _Last.subscriber_id)
        .where(
            _Last.digest_id.in_(digest_ids),
            _Last.status == DeliveryStatus.SENT,
            Subscriber.unsubscribed_at.is_not(None),
            Subscriber.unsubscribed_at >= _Last.sent_at,
            ~later,
            ~said_which,
        )
        .group_by(_Last.digest_id)
    )
    for digest_id, number in by_last_message:
        counts[digest_id] = counts.get(digest_id, 0) + number
    return counts


async def send_report(database: Database, settings: Settings, digest_id: int) -> SendReport | None:
    """One send's engagement, or None when there is no such send."""
    counted, unique, discarded = _click_counts()
    async with database.session() as session:
        digest = await session.get(Digest, digest_id)
        if digest is None or digest.kind == "preview":
            return None
        # Also once retention.deliveries pruned the send's rows.
        counts = (await send_counts(session, [digest]))[digest_id]
        delivered, bounced = counts.get("sent", 0), counts["bounced"]
        unsubscribed = (await unsubscribes_per_send(session, [digest_id])).get(digest_id, 0)
        rows = (
            await session.execute(
                select(Click.release_id, Release.title, counted, unique, discarded)
                .join(Release, Release.id == Click.release_id)
                .where(Click.digest_id == digest_id)
                .group_by(Click.release_id, Release.title)
            )
        ).all()
        opens = await session.scalar(select(func.count()).where(Open.digest_id == digest_id))
        readers_opened = None
        if settings.tracking.individual:
            readers_opened = await session.scalar(
                select(func.count(func.distinct(Open.subscriber_id))).where(
                    Open.digest_id == digest_id
                )
            )
    releases = _ranked(ReleaseClicks(r, t, c, u, d) for r, t, c, u, d in rows)
    return SendReport(
        digest_id=digest.id,
        kind=digest.kind,
        started_at=digest.started_at,
        delivered=delivered or 0,
        bounced=bounced or 0,
        unsubscribed=unsubscribed,
        clicks=sum(r.clicks for r in releases),
        unique_clicks=sum(r.unique_clicks for r in releases),
        discarded=sum(r.discarded for r in releases),
        opens_approximate=opens or 0,
        readers_opened=readers_opened,
        releases=releases,
    )


@dataclass(frozen=True)
class SendSummary:
    digest_id: int
    kind: str
    started_at: datetime | None
    delivered: int
    unsubscribed: int
    clicks: int
    unique_clicks: int
    discarded: int
    opens_approximate: int


async def recent_sends(database: Database, limit: int = 20) -> list[SendSummary]:
    """The latest sends that went out, newest first, with their totals."""
    counted, unique, discarded = _click_counts()
    async with database.session() as session:
        digests = (
            await session.scalars(
                select(Digest)
                .where(Digest.kind != "preview", Digest.started_at.is_not(None))
                .order_by(Digest.started_at.desc(), Digest.id.desc())
                .limit(limit)
            )
        ).all()
        ids = [d.id for d in digests]
        if not ids:
            return []
        delivered = {
            digest_id: counts.get("sent", 0)
            for digest_id, counts in (await send_counts(session, digests)).items()
        }
        clicks = {
            d: (c, u, x)
            for d, c, u, x in await session.execute(
                select(Click.digest_id, counted, unique, discarded)
                .where(Click.digest_id.in_(ids))
                .group_by(Click.digest_id)
            )
        }
        opens = dict(
            (
                await session.execute(
                    select(Open.digest_id, func.count())
                    .where(Open.digest_id.in_(ids))
                    .group_by(Open.digest_id)
                )
            ).all()
        )
        unsubscribed = await unsubscribes_per_send(session, ids)
    return [
        SendSummary(
            d.id,
            d.kind,
            d.started_at,
            delivered.get(d.id, 0),
            unsubscribed.get(d.id, 0),
            *clicks.get(d.id, (0, 0, 0)),
            opens.get(d.id, 0),
        )
        for d in digests
    ]


async def release_totals(database: Database, limit: int = 100) -> list[ReleaseClicks]:
    """Releases by clicks across every send, most followed first."""
    counted, unique, discarded = _click_counts()
    async with database.session() as session:
        rows = (
            await session.execute(
                select(
                    Click.release_id,
                    Release.title,
                    counted,
                    unique,
                    discarded,
                    func.count(func.distinct(Click.digest_id)),
                )
                .join(Release, Release.id == Click.release_id)
                .group_by(Click.release_id, Release.title)
                .order_by(unique.desc(), counted.desc(), Click.release_id)
                .limit(limit)
            )
        ).all()
    return [ReleaseClicks(*row) for row in rows]


@dataclass(frozen=True)
class TopicTrend:
    """Counted clicks per topic and week (weeks start on Monday, oldest first)."""

    weeks: list[date]
    # (topic name, clicks per week in the order of ``weeks``), busiest topic first.
    topics: list[tuple[str, list[int]]]


async def topic_trend(
    database: Database, now: datetime | None = None, weeks: int = 12
) -> TopicTrend:
    now = now or utcnow()
    this_week = now.date() - timedelta(days=now.date().weekday())
    starts = [this_week - timedelta(weeks=n) for n in range(weeks - 1, -1, -1)]
    since = datetime.combine(starts[0], datetime.min.time(), tzinfo=now.tzinfo)
    day = func.date(Click.at)
    async with database.session() as session:
        rows = (
            await session.execute(
                select(Topic.name, day, func.count(Click.id))
                .join(ReleaseTopic, ReleaseTopic.release_id == Click.release_id)
                .join(Topic, Topic.id == ReleaseTopic.topic_id)
                .where(_COUNTED, Click.at >= since)
                .group_by(Topic.name, day)
            )
        ).all()
    per_topic: dict[str, list[int]] = {}
    for name, clicked_on, number in rows:
        clicked = day_of(clicked_on)
        index = (clicked - starts[0]).days // 7
        if 0 <= index < weeks:
            per_topic.setdefault(name, [0] * weeks)[index] += number
    ranked = sorted(per_topic.items(), key=lambda item: (-sum(item[1]), item[0]))
    return TopicTrend(starts, ranked)


# --- CSV ---------------------------------------------------------------------------------


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def send_report_csv(report: SendReport) -> str:
    """Per release of the send, then the send's totals on a last line."""
    rows: list[Sequence[Any]] = [
        (report.digest_id, r.release_id, r.title, r.clicks, r.unique_clicks, r.discarded, "", "")
        for r in report.releases
    ]
    rate = f"{report.click_rate:.4f}" if report.click_rate is not None else ""
    rows.append(
        (
            report.digest_id,
            "total",
            f"delivered {report.delivered}, bounced {report.bounced}, "
            f"unsubscribed {report.unsubscribed}",
            report.clicks,
            report.unique_clicks,
            report.discarded,
            rate,
            report.opens_approximate,
        )
    )
    return _csv(
        (
            "send",
            "release",
            "title",
            "clicks",
            "unique_clicks",
            "discarded_scanner_clicks",
            "click_rate",
            "opens_approximate",
        ),
        rows,
    )


def release_totals_csv(totals: Sequence[ReleaseClicks]) -> str:
    return _csv(
        ("release", "title", "sends", "clicks", "unique_clicks", "discarded_scanner_clicks"),
        ((r.release_id, r.title, r.sends, r.clicks, r.unique_clicks, r.discarded) for r in totals),
    )


def topic_trend_csv(trend: TopicTrend) -> str:
    return _csv(
        ("week_starting", "topic", "clicks"),
        (
            (week.isoformat(), name, counts[index])
            for index, week in enumerate(trend.weeks)
            for name, counts in trend.topics
        ),
    )


# --- metrics and a reader's data ----------------------------------------------------------


async def engagement_metrics(session: AsyncSession) -> list[Metric]:
    counted, unique, discarded = _click_counts()
    row = (await session.execute(select(counted, unique, discarded))).one()
    opens = await session.scalar(select(func.count()).select_from(Open)) or 0
    clicks = CounterMetricFamily(
        "mailer_clicks",
        "Requests to tracked links: counted (a reader's) or discarded (a scanner's).",
        labels=["outcome"],
    )
    clicks.add_metric(["counted"], row[0])
    clicks.add_metric(["discarded"], row[2])
    unique_total = CounterMetricFamily(
        "mailer_unique_clicks", "Counted clicks that were a message's (or browser's) first."
    )
    unique_total.add_metric([], row[1])
    opened = CounterMetricFamily(
        "mailer_opens_approximate",
        "Loads of the digest image; image proxies make this approximate.",
    )
    opened.add_metric([], opens)
    return [clicks, unique_total, opened]


async def reader_activity(session: AsyncSession, subscriber_id: int) -> dict[str, Any]:
    """A reader's recorded clicks and opens (only ever stored under individual tracking)."""
    clicks = (
        await session.execute(
            select(Click.at, Click.digest_id, Click.release_id, Release.title, Click.discarded)
            .join(Release, Release.id == Click.release_id)
            .where(Click.subscriber_id == subscriber_id)
            .order_by(Click.at, Click.id)
        )
    ).all()
    opens = (
        await session.execute(
            select(Open.at, Open.digest_id)
            .where(Open.subscriber_id == subscriber_id)
            .order_by(Open.at, Open.id)
        )
    ).all()
    return {
        "clicks": [
            {
                "at": at.isoformat(),
                "send": digest_id,
                "release_id": release_id,
                "title": title,
                "counted": discarded is None,
            }
            for at, digest_id, release_id, title, discarded in clicks
        ],
        "opens": [{"at": at.isoformat(), "send": digest_id} for at, digest_id in opens],
    }


async def forget_reader(session: AsyncSession, subscriber_id: int) -> None:
    """Erasure: the reader's clicks and opens go. Keeping them as anonymous counts
    would be gentler on the reports, but the privacy page promises that erasing
    removes what individual tracking recorded about a reader, and readers take
    "removed" literally."""
    for table in (Click, Open):
        await session.execute(delete(table).where(table.subscriber_id == subscriber_id))
