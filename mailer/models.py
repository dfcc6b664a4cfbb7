"""Tables. The schema itself lives in the Alembic migrations under db/versions;
``tests/test_migrations.py`` fails when these models and the migrations disagree."""

from __future__ import annotations

import enum
import re
import secrets
import unicodedata
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a timezone-aware one is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings (no native enum type) so migrations stay simple.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        length=20,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


# --- subscribers ----------------------------------------------------------------


class SubscriberStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"


class Frequency(enum.StrEnum):
    """How often a reader wants their digest."""

    IMMEDIATELY = "immediately"
    DAILY = "daily"
    WEEKLY = "weekly"


class Audience(enum.StrEnum):
    """Who a send goes to: every confirmed reader, or the readers of one frequency.
    The CLI's --frequency, the admin's forms and the API's ``frequency`` take these."""

    ALL = "all"
    IMMEDIATELY = Frequency.IMMEDIATELY.value
    DAILY = Frequency.DAILY.value
    WEEKLY = Frequency.WEEKLY.value

    @property
    def description(self) -> str:
        return _AUDIENCE_DESCRIPTIONS[self]


_AUDIENCE_DESCRIPTIONS = {
    Audience.ALL: "Every confirmed subscriber, whatever their frequency",
    Audience.IMMEDIATELY: "Subscribers who chose “as soon as published”",
    Audience.DAILY: "Daily subscribers",
    Audience.WEEKLY: "Weekly subscribers",
}


# Tables whose ids travel outside the database (in links, tokens, VERP addresses,
# Message-IDs or admin URLs) never reuse an id on SQLite: AUTOINCREMENT stops a
# deleted row's id from being handed to the next insert.
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


def new_link_key() -> str:
    """The random value every preferences and unsubscribe link of one subscription
    is signed with; a new subscription row gets a new one, so old links die."""
    return secrets.token_urlsafe(16)


_NOT_WORD = re.compile(r"[\W_]+")


def search_key(text: str | None) -> str | None:
    """Text as searched: its words with case and accents folded, one space apart
    ("Petras ŠIMONYTĖ-Kairė" -> "petras simonyte kaire"). Computed here, not by the
    database, so SQLite and PostgreSQL find the same readers."""
    if not text:
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(_NOT_WORD.sub(" ", bare.casefold()).split()) or None


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (
        # Few readers have unsubscribed: a send's unsubscribe count starts from them.
        Index(
            "ix_subscribers_unsubscribed_at",
            "unsubscribed_at",
            postgresql_where=text("unsubscribed_at IS NOT NULL"),
            sqlite_where=text("unsubscribed_at IS NOT NULL"),
        ),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    # Lower-cased address: the identity used for uniqueness and suppression.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    # search_key(name), kept by the validator below (bulk writes set it themselves).
    name_key: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[SubscriberStatus] = mapped_column(
        _enum(SubscriberStatus, "subscriber_status"), default=SubscriberStatus.PENDING, index=True
    )
    frequency: Mapped[Frequency] = mapped_column(
        _enum(Frequency, "frequency"), default=Frequency.DAILY
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    # Changing this invalidates every confirmation link issued before.
    confirm_nonce: Mapped[str | None] = mapped_column(String(64))
    confirmation_sent_at: Mapped[datetime | None]
    # A notice owed to this subscriber and not sent yet ("already-subscribed"): the
    # queue of mailer.subscribers.mail, beside a pending row's unsent confirmation.
    notice_due: Mapped[str | None] = mapped_column(String(40))
    # Releases published before this time are never sent (first digest starts here).
    digest_since: Mapped[datetime | None]
    soft_bounces: Mapped[int] = mapped_column(default=0)
    # Bound into every preferences and unsubscribe link (see mailer.tokens).
    link_key: Mapped[str] = mapped_column(String(32), default=new_link_key)

    topics: Mapped[list[Topic]] = relationship(secondary="subscriber_topics", lazy="selectin")
    consents: Mapped[list[ConsentEvent]] = relationship(
        back_populates="subscriber", order_by="ConsentEvent.id", passive_deletes=True
    )

    @validates("name")
    def _keep_name_key(self, _key: str, name: str | None) -> str | None:
        self.name_key = search_key(name)
        return name


class Topic(Base):
    __tablename__ = "topics"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    keywords: Mapped[list[Any]] = mapped_column(default=list)
    # False once the topic was removed from the configuration; kept for history.
    active: Mapped[bool] = mapped_column(default=True)


class SubscriberTopic(Base):
    __tablename__ = "subscriber_topics"

    subscriber_id: Mapped[int] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), primary_key=True
    )
    topic_id: Mapped[int] = mapped_column(
        ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True
    )


class ConsentEvent(Base):
    """What a subscriber agreed to, when, and from where. Kept for proof of consent."""

    __tablename__ = "consent_events"
    # The dashboard's signups per day read one action over a month.
    __table_args__ = (Index("ix_consent_events_action_at", "action", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )
    # signup, confirm, preferences, unsubscribe, import, admin-add, erase
    action: Mapped[str] = mapped_column(String(30))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    form_url: Mapped[str | None] = mapped_column(String(500))
    wording_version: Mapped[str | None] = mapped_column(String(40))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    subscriber: Mapped[Subscriber | None] = relationship(back_populates="consents")


class Suppression(Base):
    """Addresses never to be mailed, stored only as a keyed hash (see suppression_key)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # unsubscribed, erased, hard-bounce, soft-bounce, complaint, admin
    reason: Mapped[str] = mapped_column(String(30))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    details: Mapped[str | None] = mapped_column(Text)


# --- sources and releases ---------------------------------------------------------


class SourceStatus(enum.StrEnum):
    NEW = "new"
    OK = "ok"
    FAILING = "failing"
    DISABLED = "disabled"


class SourceKind(enum.StrEnum):
    FEED = "feed"
    PAGE = "page"
    FOLDER = "folder"
    # Labels the releases editors add by hand (ingest, admin, API); never collected.
    INGEST = "ingest"

    @classmethod
    def collected(cls) -> tuple[SourceKind, ...]:
        return (cls.FEED, cls.PAGE, cls.FOLDER)


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[SourceKind] = mapped_column(_enum(SourceKind, "source_kind"))
    url: Mapped[str | None] = mapped_column(String(2000))
    path: Mapped[str | None] = mapped_column(String(2000))
    interval_seconds: Mapped[int] = mapped_column(default=1800)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # config: defined in config.yaml (the file wins on start); admin: added in the admin.
    origin: Mapped[str] = mapped_column(String(10), default="config")
    enabled: Mapped[bool] = mapped_column(default=True)
    status: Mapped[SourceStatus] = mapped_column(
        _enum(SourceStatus, "source_status"), default=SourceStatus.NEW
    )
    last_run_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None]
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    # Conditional GET validators of the last successful fetch.
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    # Folder sources: fingerprint of each file seen, so only new or changed ones are read.
    seen_files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Release(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(1000))
    # Always timezone-aware; when the source gave no date this is the first-seen time
    # and published_estimated is True.
    published_at: Mapped[datetime] = mapped_column(index=True)
    published_estimated: Mapped[bool] = mapped_column(default=False)
    # The source gave a calendar date without a time of day: published_at is that
    # date at 00:00 UTC and is shown as a date, never shifted by a timezone.
    published_date_only: Mapped[bool] = mapped_column(default=False)
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    canonical_url: Mapped[str | None] = mapped_column(String(2000), index=True)
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    image_url: Mapped[str | None] = mapped_column(String(2000))
    image_alt: Mapped[str | None] = mapped_column(String(500))
    photo_credit: Mapped[str | None] = mapped_column(String(500))
    publisher: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the normalised text, and a 64-bit SimHash of it for near-duplicates.
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    # Stored signed (BIGINT); the collector converts from the unsigned fingerprint.
    simhash: Mapped[int] = mapped_column(BigInteger, default=0)
    excluded: Mapped[bool] = mapped_column(default=False)
    # Set on a release that dedupe folded into another; such rows are never sent.
    merged_into_id: Mapped[int | None] = mapped_column(
        ForeignKey("releases.id", ondelete="SET NULL"), index=True
    )
    added_by: Mapped[str | None] = mapped_column(String(100))
    # Added by an editor (ingest, admin, API): eligible whatever its publication
    # date, so digest.max_age does not hold it back.
    exempt_from_max_age: Mapped[bool] = mapped_column(default=False)
    # Withdrawn: hidden from the archive (its page answers 410) and never mailed again.
    withdrawn_at: Mapped[datetime | None] = mapped_column(index=True)
    withdrawn_note: Mapped[str | None] = mapped_column(String(500))
    # Neither mailed nor shown in the archive before this time.
    embargo_until: Mapped[datetime | None] = mapped_column(index=True)

    links: Mapped[list[ReleaseLink]] = relationship(
        back_populates="release",
        order_by="ReleaseLink.id",
        lazy="selectin",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    topics: Mapped[list[Topic]] = relationship(secondary="release_topics", lazy="selectin")


class ReleaseLink(Base):
    """One source's copy of a release: where it was found and under which id."""

    __tablename__ = "release_links"
    __table_args__ = (
        UniqueConstraint("source_id", "guid"),
        Index("ix_release_links_url", "url"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), index=True
    )
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"))
    # Shown to readers; kept even if the source row is later deleted.
    source_name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str | None] = mapped_column(String(2000))
    guid: Mapped[str] = mapped_column(String(2000))
    title: Mapped[str | None] = mapped_column(String(1000))
    published_at: Mapped[datetime | None]
    content_hash: Mapped[str | None] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    release: Mapped[Release] = relationship(back_populates="links")


class ReleaseTopic(Base):
    __tablename__ = "release_topics"

    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True
    )
    topic_id: Mapped[int] = mapped_column(
        ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True
    )


# --- digests and delivery ---------------------------------------------------------


def new_public_id() -> str:
    """The unguessable id of a digest's web version (no sequence to walk through)."""
    return secrets.token_urlsafe(12)


class DigestStatus(enum.StrEnum):
    QUEUED = "queued"  # created, recipients not yet written
    SENDING = "sending"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"


class DigestKind(enum.StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"
    TEST = "test"
    # Never committed: previews and dry runs plan inside a rolled-back transaction.
    PREVIEW = "preview"


class Digest(Base):
    """One send: a set of deliveries started together (scheduled, manual or test)."""

    __tablename__ = "digests"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The web version's address: /digests/<public_id>.
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    kind: Mapped[DigestKind] = mapped_column(
        _enum(DigestKind, "digest_kind"), default=DigestKind.MANUAL
    )
    # Who it goes to (the column keeps its old name).
    frequency: Mapped[Audience] = mapped_column(_enum(Audience, "audience"), default=Audience.ALL)
    status: Mapped[DigestStatus] = mapped_column(
        _enum(DigestStatus, "digest_status"), default=DigestStatus.QUEUED, index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheduled_for: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(String(100))
    recipient_count: Mapped[int] = mapped_column(default=0)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    # For test sends: the one address it goes to.
    test_address: Mapped[str | None] = mapped_column(String(320))
    # Delivery counts by status (plus "bounced"), kept when retention.deliveries
    # prunes the send's per-recipient rows; None while they are still there.
    delivery_counts: Mapped[dict[str, Any] | None]


class Watermark(Base):
    """How far a reader has been planned: never twice in O(readers) (mailer.digest).

    A table of its own, narrow, rather than columns of ``subscribers``: every send
    rewrites the row of every reader it plans, and a narrow row without secondary
    indexes is the cheapest thing to rewrite a million times (PostgreSQL keeps
    free room in its pages, fillfactor 50, so the rewrite stays on the page).
    No foreign key, on purpose: PostgreSQL checks one with a locking lookup per
    row; erasing a subscriber deletes their row (subscribers.privacy).
    """

    __tablename__ = "watermarks"

    subscriber_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    # Every release with an id up to this one was decided for the reader.
    through_release_id: Mapped[int]
    # The content group whose held_ids are still owed to them (None: nothing).
    owed_group_id: Mapped[int | None]
    planned_at: Mapped[datetime]
    # When a send last queued them a message (moved here from subscribers in 0008).
    last_digest_at: Mapped[datetime | None]


class ContentGroup(Base):
    """What one class of readers of a send gets, and what they are still owed.

    Readers with the same topics, watermark and previous group get the same
    releases, so a send stores one row per such class instead of one per reader and
    release (see mailer.digest).
    """

    __tablename__ = "content_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"), index=True)
    # The releases of the message, in the order of the message (newest first).
    release_ids: Mapped[list[Any]] = mapped_column(default=list)
    # Hash of release_ids: deliveries with the same key share one rendered body.
    content_key: Mapped[str] = mapped_column(String(64))
    # Releases still owed to the readers of this group: under embargo, not yet
    # collected at planning time, or left out by digest.max_items.
    held_ids: Mapped[list[Any]] = mapped_column(default=list)
    # Deliveries planned with this content (kept when deliveries are pruned).
    recipients: Mapped[int] = mapped_column(default=0)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Every status but "sent": nearly all rows end sent, so indexes restricted to the
# rest stay small, and a row that becomes sent adds no entry to them.
UNSENT_DELIVERIES = "status <> 'sent'"


class Delivery(Base):
    """One message to one subscriber: the outbox row.

    A send writes one of these per reader, so every byte counts a million times
    (issue 12: growth per reader and send). What a row does not carry, on purpose:

    * the address: the subscriber's, read when the message is composed
      (``test_address`` is set only for a test send, which has no subscriber);
    * the claim: a worker claims rows in ``delivery_claims`` instead of rewriting
      them, so a row is written twice (planned, then its result), not three times;
    * the Message-ID: it carries the row's signed delivery token, as the return
      path does (mailer.message.delivery_of_message_id), so bounces are matched
      without storing it;
    * the queue time: the send's ``started_at``.

    Indexes: the primary key, one per reader (``subscriber_id``), and partial
    indexes that only hold unsent rows (claiming, progress, backlog) or bounced ones.
    Sent counts are the send's recipients less its unsent rows
    (mailer.retention.send_counts). On PostgreSQL, the send and the send time of the
    sent rows are found through BRIN indexes (a few pages for millions of rows),
    since a send writes its rows together and sends them in order.

    On PostgreSQL the table is partitioned by status (migration 0015): sent rows
    in ``deliveries_sent``, written once when their result is, and the rest in
    ``deliveries_unsent``, whose room VACUUM frees for the next send. A result
    rewrites its planned row: in one table that left a second index entry per row in
    every index. So the primary key is one per partition (the ids come from one
    sequence), and "one row per reader and send" is the planner's to keep, by
    construction (mailer.digest), not a unique key's.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_subscriber_id", "subscriber_id"),
        # (digest, status) without the id: a send's pending rows share one key, which
        # PostgreSQL stores once with a list of row addresses (a few bytes a row).
        Index(
            "ix_deliveries_unsent",
            "digest_id",
            "status",
            postgresql_where=text(UNSENT_DELIVERIES),
            sqlite_where=text(UNSENT_DELIVERIES),
        ),
        # Bounces are few: counted per send from a small partial index.
        Index(
            "ix_deliveries_bounced",
            "digest_id",
            postgresql_where=text("bounced"),
            sqlite_where=text("bounced"),
        ),
        Index("ix_deliveries_digest", "digest_id", postgresql_using="brin"),
        Index("ix_deliveries_sent_at", "sent_at", postgresql_using="brin"),
        NEVER_REUSE_IDS,
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign keys, on purpose: a send inserts a row per reader, and PostgreSQL
    # checks every foreign key with a locking lookup per row (at a million readers,
    # the key to digests alone tripled the planning's insert). The planner writes
    # these ids from rows it has just read; erasing a subscriber clears
    # subscriber_id itself (subscribers.privacy); digests are not deleted (their
    # deliveries are pruned by mailer.retention).
    digest_id: Mapped[int]
    subscriber_id: Mapped[int | None]
    # Only for a test send (no subscriber): readers' messages go to their address
    # (``email`` below). The column keeps its old name.
    test_address: Mapped[str | None] = mapped_column("email", String(320))
    # What the message carries: shared by every reader of the same content.
    content_group_id: Mapped[int]
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    bounced: Mapped[bool] = mapped_column(default=False)

    content_group: Mapped[ContentGroup] = relationship(
        lazy="joined",
        innerjoin=True,
        primaryjoin="foreign(Delivery.content_group_id) == ContentGroup.id",
    )
    digest: Mapped[Digest] = relationship(
        lazy="joined",
        innerjoin=True,
        viewonly=True,
        primaryjoin="foreign(Delivery.digest_id) == Digest.id",
    )

    subscriber: Mapped[Subscriber | None] = relationship(
        lazy="joined",
        viewonly=True,
        primaryjoin="foreign(Delivery.subscriber_id) == Subscriber.id",
    )

    @hybrid_property
    def email(self) -> str | None:
        """Where the message goes: the subscriber's address (a test send's own)."""
        if self.test_address is not None:
            return self.test_address
        return self.subscriber.email if self.subscriber is not None else None

    @email.inplace.expression
    @classmethod
    def _email_expression(cls) -> Any:
        return func.coalesce(
            cls.test_address,
            select(Subscriber.email).where(Subscriber.id == cls.subscriber_id).scalar_subquery(),
        )

    @property
    def queued_at(self) -> datetime:
        """When its send queued it (the row keeps no time of its own)."""
        return self.digest.started_at or self.digest.created_at

    @hybrid_property
    def release_ids(self) -> list[int]:
        return [int(i) for i in self.content_group.release_ids]

    @release_ids.inplace.expression
    @classmethod
    def _release_ids_expression(cls) -> Any:
        return (
            select(ContentGroup.release_ids)
            .where(ContentGroup.id == cls.content_group_id)
            .scalar_subquery()
        )

    @hybrid_property
    def content_key(self) -> str:
        return self.content_group.content_key

    @content_key.inplace.expression
    @classmethod
    def _content_key_expression(cls) -> Any:
        return (
            select(ContentGroup.content_key)
            .where(ContentGroup.id == cls.content_group_id)
            .scalar_subquery()
        )


class DeliveryClaim(Base):
    """Deliveries a worker has taken and not yet recorded all results for: one row
    per claim (up to a few hundred deliveries), not per delivery.

    Not columns of ``deliveries``: claiming by rewriting each delivery cost a third
    version of every row of a send, and a row per claimed delivery, inserted and
    deleted a million times a send, left as many dead rows for autovacuum. A claim
    row lives for about a second; a worker that dies leaves it behind, and
    mailer.send.worker's recovery (the dead worker's journal, then the lease)
    removes it. Claims are taken one at a time (mailer.send.worker), so two never
    name the same delivery.
    """

    __tablename__ = "delivery_claims"

    id: Mapped[int] = mapped_column(primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(100))
    claimed_at: Mapped[datetime]
    delivery_ids: Mapped[list[Any]]


class Bounce(Base):
    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(primary_key=True)
    # No foreign key: deliveries is partitioned on PostgreSQL, which cannot be the
    # target of one. Pruning a send's deliveries clears the ids (mailer.retention).
    delivery_id: Mapped[int | None] = mapped_column(index=True)
    email_hash: Mapped[str] = mapped_column(String(64), index=True)
    # hard, soft, policy or failed (mailer.smtpstatus.Verdict)
    kind: Mapped[str] = mapped_column(String(10))
    status_code: Mapped[str | None] = mapped_column(String(20))
    diagnostic: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- engagement (mailer.engagement) ------------------------------------------------


class Click(Base):
    """One request to a digest's tracked link (/r/<token>): a send and a release.

    ``subscriber_id`` is set only under ``tracking.individual``; with the defaults
    nothing here points to a reader (no subscriber, no IP address, no browser)."""

    __tablename__ = "clicks"
    __table_args__ = (Index("ix_clicks_digest_release", "digest_id", "release_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"))
    release_id: Mapped[int] = mapped_column(
        ForeignKey("releases.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Why it does not count (mailer.engagement.Discard), or None for a reader's click.
    discarded: Mapped[str | None] = mapped_column(String(20))
    # The first counted click on this release from this message (or browser).
    first: Mapped[bool] = mapped_column(default=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )


class Open(Base):
    """One load of a digest's 1x1 image: approximate by nature (image proxies)."""

    __tablename__ = "opens"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="SET NULL"), index=True
    )


# --- administration ---------------------------------------------------------------


class AdminUser(Base):
    __tablename__ = "admin_users"
    __table_args__ = NEVER_REUSE_IDS

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    # admin or editor
    role: Mapped[str] = mapped_column(String(20), default="editor")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class AdminSession(Base):
    """A signed-in admin browser. The cookie holds a random id whose hash is the key;
    deleting the row ends the session however the cookie was copied."""

    __tablename__ = "admin_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("admin_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # sha256 of the token; the token itself is shown once, at creation.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(20), default="admin")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(default=False)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # "user:alice", "token:ci", "cli", "scheduler", "subscriber"
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(60))
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(60))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Lock(Base):
    """Lease-based locks (scheduler leadership on SQLite, one run per source)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime]


# --- full-text search ---------------------------------------------------------------

# SQLite: an FTS5 table over releases (plus the shadow tables FTS5 keeps beside it),
# kept current by triggers; PostgreSQL: a generated tsvector column with a GIN index.
# Both are made by migration 0006 and are not mapped, so schema comparisons leave
# them out.
SEARCH_TABLE = "releases_search"
SEARCH_INDEX = "ix_releases_search"
SEARCH_COLUMN = "search_vector"


# PostgreSQL only (migration 0009): address prefixes and the words of names.
SUBSCRIBER_SEARCH_INDEXES = ("ix_subscribers_email_prefix", "ix_subscribers_name_words")


# PostgreSQL only (migration 0015): the partitions of deliveries (see Delivery).
DELIVERY_PARTITIONS = ("deliveries_sent", "deliveries_unsent")


def is_unmapped_object(name: str | None) -> bool:
    """Made by a migration by hand and not mapped: schema comparisons leave it out."""
    return bool(name) and (
        name in (SEARCH_INDEX, SEARCH_COLUMN, *SUBSCRIBER_SEARCH_INDEXES, *DELIVERY_PARTITIONS)
        or str(name).startswith(SEARCH_TABLE)
    )
