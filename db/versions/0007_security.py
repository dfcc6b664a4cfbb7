"""security: ids never reused, a link key per subscriber, server-side admin sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:10:00

* SQLite reused the id of the highest deleted row, so a link mailed to an erased
  reader pointed at the next one. subscribers, deliveries (VERP addresses and
  Message-IDs carry their ids) and admin_users are rebuilt with AUTOINCREMENT.
  PostgreSQL sequences never reuse ids; nothing changes there.
* subscribers.link_key: every preferences and unsubscribe link is signed with it.
  Existing subscribers get a fresh random key, so every link mailed before this
  upgrade stops working (it could not be told from a link to a reused id).
* admin_sessions: signing out deletes the row, so a copied cookie dies with it.

The SQLite rebuild runs with foreign keys switched off (mailer.migrate does that),
because dropping the old table would otherwise cascade into its child rows.
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REBUILT_FOR_AUTOINCREMENT = ("subscribers", "deliveries", "admin_users")


def _is_sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _fill_link_keys() -> None:
    connection = op.get_bind()
    subscribers = sa.table("subscribers", sa.column("id"), sa.column("link_key"))
    ids = connection.execute(sa.select(subscribers.c.id)).scalars().all()
    statement = (
        subscribers.update()
        .where(subscribers.c.id == sa.bindparam("row_id"))
        .values(link_key=sa.bindparam("key"))
    )
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        connection.execute(
            statement, [{"row_id": i, "key": secrets.token_urlsafe(16)} for i in chunk]
        )


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("link_key", sa.String(length=32), nullable=True))
    _fill_link_keys()
    sqlite = _is_sqlite()
    for table in REBUILT_FOR_AUTOINCREMENT:
        with op.batch_alter_table(
            table,
            recreate="always" if sqlite else "auto",
            table_kwargs={"sqlite_autoincrement": True},
        ) as batch_op:
            if table == "subscribers":
                batch_op.alter_column(
                    "link_key", existing_type=sa.String(length=32), nullable=False
                )

    op.create_table(
        "admin_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["admin_users.id"],
            name=op.f("fk_admin_sessions_user_id_admin_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_admin_sessions")),
    )
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_admin_sessions_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_admin_sessions_user_id"))
    op.drop_table("admin_sessions")
    sqlite = _is_sqlite()
    for table in REBUILT_FOR_AUTOINCREMENT:
        with op.batch_alter_table(
            table,
            recreate="always" if sqlite else "auto",
            table_kwargs={"sqlite_autoincrement": False},
        ) as batch_op:
            if table == "subscribers":
                batch_op.drop_column("link_key")
