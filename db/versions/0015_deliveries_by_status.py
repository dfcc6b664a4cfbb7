"""deliveries split by status on PostgreSQL: a sent row is written once where it stays

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 07:00:00

Why (issue 12, at most 150 bytes a reader a daily send): a delivery is planned
"pending" and then rewritten with its result. In one table that rewrite is a
second version of the row, and every index takes a second entry for it; the
primary key's leaves of a send split once and stay half empty (45 bytes a reader
a send for a 4-byte key). On PostgreSQL the table is now partitioned by status:

* ``deliveries_unsent`` (the default partition) holds what is planned, retried,
  failed or cancelled. A send's rows leave it as they are sent, VACUUM frees their
  room and the next send fills it again, so it does not grow from day to day
  (``vacuum_truncate`` is off so that the room is kept, not handed back and
  taken again every day).
* ``deliveries_sent`` holds sent rows only: each is written once, in the order
  sent, and never rewritten (a bounce sets a flag in place).

A result moves a row from one partition to the other (PostgreSQL does it as one
update). What it costs: PostgreSQL cannot enforce a unique key across partitions
unless the key holds the status, so the primary key is per partition (ids come
from one sequence) and "one row per reader and send" is kept by the planner alone
(mailer.digest writes each reader once per send by construction); the per-reader
index becomes plain ``subscriber_id`` on both databases, and PostgreSQL folds a
reader's entries into one (deduplication: about 6 bytes a send). The foreign key
``bounces.delivery_id`` goes (a partitioned table cannot be the target of one);
pruning clears the ids it used to set to NULL itself (mailer.retention).

SQLite keeps one table (nothing to partition), with the same indexes.

Upgrading copies every delivery once on PostgreSQL: on a large table run it at a
quiet hour with the workers stopped.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNSENT = "status <> 'sent'"
# As 0014 left them (the table is made again by hand: a partitioned table cannot
# be made from a plain one in place).
_DEFINITIONS = (
    "id integer NOT NULL DEFAULT nextval('deliveries_id_seq'), digest_id integer NOT NULL, "
    "subscriber_id integer, email varchar(320), status varchar(20) NOT NULL, "
    "attempts integer NOT NULL, next_attempt_at timestamp with time zone, last_error text, "
    "sent_at timestamp with time zone, bounced boolean NOT NULL, "
    "content_group_id integer NOT NULL"
)
_COLUMNS = (
    "id, digest_id, subscriber_id, email, status, attempts, next_attempt_at, "
    "last_error, sent_at, bounced, content_group_id"
)


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _create_indexes() -> None:
    """The indexes 0014 made, on PostgreSQL (made after a copy: one sort each)."""
    op.create_index(
        "ix_deliveries_unsent",
        "deliveries",
        ["digest_id", "status"],
        postgresql_where=sa.text(_UNSENT),
    )
    op.create_index(
        "ix_deliveries_bounced", "deliveries", ["digest_id"], postgresql_where=sa.text("bounced")
    )
    op.create_index("ix_deliveries_digest", "deliveries", ["digest_id"], postgresql_using="brin")
    op.create_index("ix_deliveries_sent_at", "deliveries", ["sent_at"], postgresql_using="brin")


def upgrade() -> None:
    with op.batch_alter_table("bounces") as batch_op:
        batch_op.drop_constraint("fk_bounces_delivery_id_deliveries", type_="foreignkey")
    if _is_sqlite():
        with op.batch_alter_table(
            "deliveries", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch_op:
            batch_op.drop_constraint("uq_deliveries_subscriber_id_digest_id", type_="unique")
            batch_op.create_index("ix_deliveries_subscriber_id", ["subscriber_id"])
        return
    op.execute("ALTER TABLE deliveries RENAME TO deliveries_old")
    op.execute("ALTER TABLE deliveries_old RENAME CONSTRAINT pk_deliveries TO pk_deliveries_old")
    for index in ("unsent", "bounced", "digest", "sent_at"):
        op.execute(f"ALTER INDEX ix_deliveries_{index} RENAME TO ix_deliveries_old_{index}")
    op.execute(f"CREATE TABLE deliveries ({_DEFINITIONS}) PARTITION BY LIST (status)")
    op.execute("CREATE TABLE deliveries_sent PARTITION OF deliveries FOR VALUES IN ('sent')")
    op.execute(
        "CREATE TABLE deliveries_unsent PARTITION OF deliveries DEFAULT "
        "WITH (vacuum_truncate = false)"
    )
    op.execute("ALTER TABLE deliveries_sent ADD CONSTRAINT pk_deliveries_sent PRIMARY KEY (id)")
    op.execute("ALTER TABLE deliveries_unsent ADD CONSTRAINT pk_deliveries_unsent PRIMARY KEY (id)")
    op.execute(f"INSERT INTO deliveries ({_COLUMNS}) SELECT {_COLUMNS} FROM deliveries_old")  # noqa: S608
    op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id")
    op.execute("DROP TABLE deliveries_old")
    # Made after the copy (one sort each instead of an insert per row); on the
    # partitioned table, so that each partition gets its own.
    op.create_index("ix_deliveries_subscriber_id", "deliveries", ["subscriber_id"])
    _create_indexes()


def downgrade() -> None:
    if _is_sqlite():
        with op.batch_alter_table(
            "deliveries", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ) as batch_op:
            batch_op.drop_index("ix_deliveries_subscriber_id")
            batch_op.create_unique_constraint(
                "uq_deliveries_subscriber_id_digest_id", ["subscriber_id", "digest_id"]
            )
    else:
        op.execute("ALTER TABLE deliveries RENAME TO deliveries_parted")
        for index in ("subscriber_id", "unsent", "bounced", "digest", "sent_at"):
            op.execute(f"ALTER INDEX ix_deliveries_{index} RENAME TO ix_deliveries_parted_{index}")
        op.execute(
            f"CREATE TABLE deliveries ({_DEFINITIONS}, "
            "CONSTRAINT pk_deliveries PRIMARY KEY (id), "
            "CONSTRAINT uq_deliveries_subscriber_id_digest_id UNIQUE (subscriber_id, digest_id))"
        )
        copy = f"INSERT INTO deliveries ({_COLUMNS}) SELECT {_COLUMNS} FROM deliveries_parted"  # noqa: S608
        op.execute(copy + " ORDER BY id")
        op.execute("ALTER SEQUENCE deliveries_id_seq OWNED BY deliveries.id")
        op.execute("DROP TABLE deliveries_parted")
        _create_indexes()
    op.execute(
        "UPDATE bounces SET delivery_id = NULL WHERE delivery_id NOT IN (SELECT id FROM deliveries)"
    )
    with op.batch_alter_table("bounces") as batch_op:
        batch_op.create_foreign_key(
            "fk_bounces_delivery_id_deliveries",
            "deliveries",
            ["delivery_id"],
            ["id"],
            ondelete="SET NULL",
        )
