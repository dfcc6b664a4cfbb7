"""never twice in O(readers): watermarks and content groups instead of subscriber_releases

Revision ID: 0008
Revises: 0009
Create Date: 2026-12-02 00:30:00

See mailer/digest.py for the design. Existing data is carried over without losing
who received what:

* every distinct release list of a send becomes a content group (with its number
  of deliveries), and each delivery points at it instead of carrying the list;
* a reader who was queued releases gets a row in ``watermarks``: the largest
  release id queued to them (``through_release_id``), their ``last_digest_at``
  (moved from subscribers), and as owed releases those below it that were neither queued to
  them nor decided otherwise: collected after they confirmed, live, not excluded,
  not withdrawn, matching their topics, collected in the last 90 days (older ones
  are past any usual digest.max_age; planning drops what is too old anyway). Their
  owed set is kept in a content group of the send of their last delivery.
* a reader never queued anything keeps no watermark: their first plan starts at
  their confirmation, as before.

Downgrade rebuilds subscriber_releases from the deliveries and their groups (the
release lists of messages: what the old table recorded).
"""

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0008"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHUNK = 1000
_OPEN = "status IN ('pending', 'sending', 'deferred')"


def _key(release_ids: Sequence[int]) -> str:
    # Same as mailer.message.content_key (kept here: migrations do not follow code).
    return hashlib.sha256(",".join(map(str, sorted(set(release_ids)))).encode()).hexdigest()


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _aware(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


_deliveries = sa.table(
    "deliveries",
    sa.column("id", sa.Integer),
    sa.column("digest_id", sa.Integer),
    sa.column("subscriber_id", sa.Integer),
    sa.column("release_ids", sa.JSON),
    sa.column("content_key", sa.String),
    sa.column("content_group_id", sa.Integer),
)
_groups = sa.table(
    "content_groups",
    sa.column("id", sa.Integer),
    sa.column("digest_id", sa.Integer),
    sa.column("release_ids", sa.JSON),
    sa.column("content_key", sa.String),
    sa.column("held_ids", sa.JSON),
    sa.column("recipients", sa.Integer),
)
_subscribers = sa.table(
    "subscribers",
    sa.column("id", sa.Integer),
    sa.column("digest_since", mailer.models.UTCDateTime()),
    sa.column("confirmed_at", mailer.models.UTCDateTime()),
    sa.column("created_at", mailer.models.UTCDateTime()),
    sa.column("last_digest_at", mailer.models.UTCDateTime()),
)
_watermarks = sa.table(
    "watermarks",
    sa.column("subscriber_id", sa.Integer),
    sa.column("through_release_id", sa.Integer),
    sa.column("owed_group_id", sa.Integer),
    sa.column("planned_at", mailer.models.UTCDateTime()),
    sa.column("last_digest_at", mailer.models.UTCDateTime()),
)
_pairs = sa.table(
    "subscriber_releases",
    sa.column("subscriber_id", sa.Integer),
    sa.column("release_id", sa.Integer),
    sa.column("delivery_id", sa.Integer),
)


def _insert_group(
    connection: sa.Connection, digest_id: int, release_ids: list[int], held: list[int], n: int
) -> int:
    return connection.execute(
        _groups.insert()
        .values(
            digest_id=digest_id,
            release_ids=release_ids,
            content_key=_key(release_ids),
            held_ids=held,
            recipients=n,
        )
        .returning(_groups.c.id)
    ).scalar_one()


def _groups_from_deliveries(connection: sa.Connection) -> None:
    """One group per (send, release list); each delivery points at its group."""
    groups: dict[tuple[int, str], int] = {}
    counts: dict[int, int] = {}
    after = 0
    while True:
        rows = connection.execute(
            sa.select(_deliveries.c.id, _deliveries.c.digest_id, _deliveries.c.release_ids)
            .where(_deliveries.c.id > after)
            .order_by(_deliveries.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        updates = []
        for delivery_id, digest_id, release_ids in rows:
            ids = [int(i) for i in release_ids or []]
            key = (digest_id, ",".join(map(str, ids)))
            if key not in groups:
                groups[key] = _insert_group(connection, digest_id, ids, [], 0)
            group_id = groups[key]
            counts[group_id] = counts.get(group_id, 0) + 1
            updates.append({"row_id": delivery_id, "group_id": group_id})
        connection.execute(
            _deliveries.update()
            .where(_deliveries.c.id == sa.bindparam("row_id"))
            .values(content_group_id=sa.bindparam("group_id")),
            updates,
        )
    for group_id, n in counts.items():
        connection.execute(_groups.update().where(_groups.c.id == group_id).values(recipients=n))


def _watermarks_from_pairs(connection: sa.Connection) -> None:
    """Watermark and owed releases per reader from their subscriber_releases rows."""
    now = datetime.now(UTC)
    releases = sa.table(
        "releases",
        sa.column("id", sa.Integer),
        sa.column("first_seen_at", mailer.models.UTCDateTime()),
        sa.column("merged_into_id", sa.Integer),
        sa.column("excluded", sa.Boolean),
        sa.column("withdrawn_at", mailer.models.UTCDateTime()),
    )
    recent = connection.execute(
        sa.select(releases.c.id, releases.c.first_seen_at).where(
            releases.c.merged_into_id.is_(None),
            releases.c.excluded.is_(False),
            releases.c.withdrawn_at.is_(None),
            releases.c.first_seen_at >= now - timedelta(days=90),
        )
    ).all()
    recent_seen = {i: _aware(seen) for i, seen in recent}
    release_topics: dict[int, set[int]] = {}
    for release_id, topic_id in connection.execute(
        sa.text("SELECT release_id, topic_id FROM release_topics")
    ):
        if release_id in recent_seen:
            release_topics.setdefault(release_id, set()).add(topic_id)
    chosen: dict[int, set[int]] = {}
    for subscriber_id, topic_id in connection.execute(
        sa.text(
            "SELECT st.subscriber_id, st.topic_id FROM subscriber_topics st "
            "JOIN topics t ON t.id = st.topic_id WHERE t.active"
        )
    ):
        chosen.setdefault(subscriber_id, set()).add(topic_id)

    # Per reader: the releases queued to them and the send of their last delivery.
    queued: dict[int, set[int]] = {}
    last_delivery: dict[int, int] = {}
    for subscriber_id, release_id, delivery_id in connection.execute(
        sa.select(_pairs.c.subscriber_id, _pairs.c.release_id, _pairs.c.delivery_id)
    ):
        queued.setdefault(subscriber_id, set()).add(release_id)
        if delivery_id is not None:
            last_delivery[subscriber_id] = max(last_delivery.get(subscriber_id, 0), delivery_id)
    if not queued:
        return
    digest_of = (
        dict(
            connection.execute(
                sa.select(_deliveries.c.id, _deliveries.c.digest_id).where(
                    _deliveries.c.id.in_(sorted(set(last_delivery.values())))
                )
            ).all()
        )
        if last_delivery
        else {}
    )
    fallback_digest = connection.execute(sa.text("SELECT max(id) FROM digests")).scalar()
    since_of: dict[int, datetime | None] = {}
    last_digest_of: dict[int, datetime | None] = {}
    for row in connection.execute(
        sa.select(
            _subscribers.c.id,
            _subscribers.c.digest_since,
            _subscribers.c.confirmed_at,
            _subscribers.c.created_at,
            _subscribers.c.last_digest_at,
        ).where(_subscribers.c.id.in_(sorted(queued)))
    ):
        since_of[row.id] = _aware(row.digest_since or row.confirmed_at or row.created_at)
        last_digest_of[row.id] = _aware(row.last_digest_at)
    held_groups: dict[tuple[int, tuple[int, ...]], int] = {}
    updates = []
    for subscriber_id, sent in queued.items():
        if subscriber_id not in since_of:
            continue  # an erased reader's leftover rows
        watermark = max(sent)
        since = since_of[subscriber_id]
        topics = chosen.get(subscriber_id)
        held = tuple(
            sorted(
                i
                for i, seen in recent_seen.items()
                if i < watermark
                and i not in sent
                and (since is None or seen >= since)
                and (not topics or topics & release_topics.get(i, set()))
            )
        )
        group_id = None
        digest_id = digest_of.get(last_delivery.get(subscriber_id, 0), fallback_digest)
        if held and digest_id is not None:
            key = (digest_id, held)
            if key not in held_groups:
                held_groups[key] = _insert_group(connection, digest_id, [], list(held), 0)
            group_id = held_groups[key]
        updates.append(
            {
                "subscriber_id": subscriber_id,
                "through_release_id": watermark,
                "owed_group_id": group_id,
                "planned_at": now,
                "last_digest_at": last_digest_of[subscriber_id],
            }
        )
    for start in range(0, len(updates), _CHUNK):
        connection.execute(_watermarks.insert(), updates[start : start + _CHUNK])


def upgrade() -> None:
    op.create_table(
        "content_groups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("release_ids", sa.JSON(), nullable=False),
        sa.Column("content_key", sa.String(length=64), nullable=False),
        sa.Column("held_ids", sa.JSON(), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_content_groups_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_groups")),
    )
    with op.batch_alter_table("content_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_content_groups_digest_id"), ["digest_id"], unique=False
        )
    op.create_table(
        "watermarks",
        sa.Column("subscriber_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("through_release_id", sa.Integer(), nullable=False),
        sa.Column("owed_group_id", sa.Integer(), nullable=True),
        sa.Column("planned_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_digest_at", mailer.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("subscriber_id", name=op.f("pk_watermarks")),
    )
    if not _is_sqlite():
        # Every send rewrites every planned reader's row: room on the page keeps
        # the new version beside the old one (a HOT update, no index write).
        op.execute("ALTER TABLE watermarks SET (fillfactor = 50)")
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_counts", sa.JSON(), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_group_id", sa.Integer(), nullable=True))

    connection = op.get_bind()
    _groups_from_deliveries(connection)
    _watermarks_from_pairs(connection)

    sqlite = _is_sqlite()
    with op.batch_alter_table(
        "deliveries",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.alter_column("content_group_id", existing_type=sa.Integer(), nullable=False)
        # A foreign key costs a locking lookup per inserted row on PostgreSQL (see
        # models.Delivery); erasure clears subscriber_id itself, and deliveries of
        # finished sends are pruned (mailer.retention) rather than cascaded.
        batch_op.drop_constraint("fk_deliveries_subscriber_id_subscribers", type_="foreignkey")
        batch_op.drop_constraint("fk_deliveries_digest_id_digests", type_="foreignkey")
        # Only rows still to send are looked up by status: sent ones leave the index.
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index(
            "ix_deliveries_due",
            ["status", "next_attempt_at"],
            unique=False,
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )
        batch_op.drop_column("release_ids")
        batch_op.drop_column("content_key")
    with op.batch_alter_table(
        "subscribers",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.drop_column("last_digest_at")
    op.drop_table("subscriber_releases")


def downgrade() -> None:
    op.create_table(
        "subscriber_releases",
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("subscriber_id", "release_id", name=op.f("pk_subscriber_releases")),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("release_ids", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("content_key", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    groups = {
        group_id: ([int(i) for i in ids], key)
        for group_id, ids, key in connection.execute(
            sa.select(_groups.c.id, _groups.c.release_ids, _groups.c.content_key)
        )
    }
    after = 0
    while True:
        rows = connection.execute(
            sa.select(_deliveries.c.id, _deliveries.c.subscriber_id, _deliveries.c.content_group_id)
            .where(_deliveries.c.id > after)
            .order_by(_deliveries.c.id)
            .limit(_CHUNK)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        connection.execute(
            _deliveries.update()
            .where(_deliveries.c.id == sa.bindparam("row_id"))
            .values(release_ids=sa.bindparam("ids"), content_key=sa.bindparam("key")),
            [{"row_id": d, "ids": groups[g][0], "key": groups[g][1]} for d, _, g in rows],
        )
        pairs = {(s, r): d for d, s, g in rows if s is not None for r in groups[g][0]}
        existing = (
            set(
                connection.execute(
                    sa.select(_pairs.c.subscriber_id, _pairs.c.release_id).where(
                        _pairs.c.subscriber_id.in_(sorted({s for s, _ in pairs}))
                    )
                ).tuples()
            )
            if pairs
            else set()
        )
        fresh = [
            {"subscriber_id": s, "release_id": r, "delivery_id": d}
            for (s, r), d in pairs.items()
            if (s, r) not in existing
        ]
        if fresh:
            connection.execute(_pairs.insert(), fresh)
    sqlite = _is_sqlite()
    with op.batch_alter_table(
        "deliveries",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.alter_column("release_ids", existing_type=sa.JSON(), nullable=False)
        batch_op.alter_column("content_key", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index("ix_deliveries_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_foreign_key(
            "fk_deliveries_digest_id_digests",
            "digests",
            ["digest_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            "fk_deliveries_subscriber_id_subscribers",
            "subscribers",
            ["subscriber_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.drop_column("content_group_id")
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.drop_column("delivery_counts")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_digest_at", mailer.models.UTCDateTime(timezone=True), nullable=True)
        )
    for subscriber_id, last in connection.execute(
        sa.select(_watermarks.c.subscriber_id, _watermarks.c.last_digest_at).where(
            _watermarks.c.last_digest_at.is_not(None)
        )
    ).all():
        connection.execute(
            _subscribers.update()
            .where(_subscribers.c.id == subscriber_id)
            .values(last_digest_at=last)
        )
    op.drop_table("watermarks")
    with op.batch_alter_table("content_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_content_groups_digest_id"))
    op.drop_table("content_groups")
