"""slim deliveries: claims in their own table, no stored address, Message-ID or queue time

Revision ID: 0014
Revises: 0008
Create Date: 2026-12-02 03:40:00

A send writes a row per reader (issue 12: at most 150 bytes a reader a send). What
each delivery row stops carrying, and where it comes from instead:

* ``claimed_by``, ``claimed_at``: a claim is a row of ``delivery_claims``, so
  claiming no longer writes a new version of the delivery. Rows left "sending" by
  a worker stopped for the upgrade go back to "pending": the worker's journal,
  applied when a worker starts, still marks the ones it sent.
* ``email``: the subscriber's address is read when the message is composed; the
  column stays for test sends only (they have no subscriber) and is emptied where a
  subscriber is named.
* ``message_id``: derived from the row id and a keyed hash (bounces are matched by
  checking the hash, not by looking the text up).
* ``created_at``: the send's ``started_at``.

Emptying the stored addresses rewrites every row with one once: on a large
PostgreSQL table run the upgrade at a quiet hour (dropping the columns is instant).

Indexes: the per-reader unique key becomes ``(subscriber_id, digest_id)`` and
replaces the subscriber index; the due and per-send status indexes become one
partial index of unsent rows; on PostgreSQL the send and the send time are BRIN
indexes. Downgrade restores the columns (the Message-IDs of past messages are not
recoverable and stay empty; addresses come back from the subscribers).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0014"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNSENT = "status <> 'sent'"
_OPEN = "status IN ('pending', 'sending', 'deferred')"


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    op.create_table(
        "delivery_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=100), nullable=False),
        sa.Column("claimed_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivery_ids", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_claims")),
    )
    op.execute("UPDATE deliveries SET status = 'pending' WHERE status = 'sending'")
    sqlite = _is_sqlite()
    with op.batch_alter_table(
        "deliveries",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(length=320), nullable=True)
        batch_op.drop_constraint("uq_deliveries_digest_id_subscriber_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_deliveries_subscriber_id_digest_id", ["subscriber_id", "digest_id"]
        )
        batch_op.drop_index("ix_deliveries_subscriber_id")
        batch_op.drop_index("ix_deliveries_due")
        batch_op.drop_index("ix_deliveries_digest_status")
        batch_op.create_index(
            "ix_deliveries_unsent",
            ["digest_id", "status"],
            unique=False,
            postgresql_where=sa.text(_UNSENT),
            sqlite_where=sa.text(_UNSENT),
        )
        batch_op.create_index(
            "ix_deliveries_digest", ["digest_id"], unique=False, postgresql_using="brin"
        )
        batch_op.create_index(
            "ix_deliveries_sent_at", ["sent_at"], unique=False, postgresql_using="brin"
        )
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("message_id")
        batch_op.drop_column("created_at")
    op.execute("UPDATE deliveries SET email = NULL WHERE subscriber_id IS NOT NULL")


def downgrade() -> None:
    sqlite = _is_sqlite()
    with op.batch_alter_table(
        "deliveries",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.add_column(
            sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("message_id", sa.String(length=300), nullable=True))
        batch_op.add_column(
            sa.Column("claimed_at", mailer.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))
        batch_op.drop_index("ix_deliveries_sent_at")
        batch_op.drop_index("ix_deliveries_digest")
        batch_op.drop_index("ix_deliveries_unsent")
        batch_op.create_index(
            "ix_deliveries_digest_status", ["digest_id", "status", "sent_at"], unique=False
        )
        batch_op.create_index(
            "ix_deliveries_due",
            ["status", "next_attempt_at"],
            unique=False,
            postgresql_where=sa.text(_OPEN),
            sqlite_where=sa.text(_OPEN),
        )
        batch_op.create_index("ix_deliveries_subscriber_id", ["subscriber_id"], unique=False)
        batch_op.drop_constraint("uq_deliveries_subscriber_id_digest_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_deliveries_digest_id_subscriber_id", ["digest_id", "subscriber_id"]
        )
    op.execute(
        "UPDATE deliveries SET email = (SELECT email FROM subscribers "
        "WHERE subscribers.id = deliveries.subscriber_id) WHERE email IS NULL"
    )
    op.execute(
        "UPDATE deliveries SET created_at = (SELECT coalesce(started_at, created_at) "
        "FROM digests WHERE digests.id = deliveries.digest_id)"
    )
    op.execute("UPDATE deliveries SET email = '' WHERE email IS NULL")
    with op.batch_alter_table(
        "deliveries",
        recreate="always" if sqlite else "auto",
        table_kwargs={"sqlite_autoincrement": True},
    ) as batch_op:
        batch_op.alter_column("email", existing_type=sa.String(length=320), nullable=False)
        batch_op.alter_column(
            "created_at", existing_type=mailer.models.UTCDateTime(timezone=True), nullable=False
        )
    op.drop_table("delivery_claims")
