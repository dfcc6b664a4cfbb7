"""engagement: clicks on tracked links and opens (approximate), per send and release

Revision ID: 0011
Revises: 0013
Create Date: 2026-12-02 00:20:00

Both tables are empty until tracking.clicks or tracking.opens is switched on; their
subscriber_id column is filled only under tracking.individual.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0011"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "clicks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("discarded", sa.String(length=20), nullable=True),
        sa.Column("first", sa.Boolean(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_clicks_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_clicks_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_clicks_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clicks")),
    )
    op.create_index("ix_clicks_digest_release", "clicks", ["digest_id", "release_id"])
    op.create_index(op.f("ix_clicks_release_id"), "clicks", ["release_id"])
    op.create_index(op.f("ix_clicks_at"), "clicks", ["at"])
    op.create_index(op.f("ix_clicks_subscriber_id"), "clicks", ["subscriber_id"])
    op.create_table(
        "opens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("at", mailer.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_opens_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_opens_subscriber_id_subscribers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opens")),
    )
    op.create_index(op.f("ix_opens_digest_id"), "opens", ["digest_id"])
    op.create_index(op.f("ix_opens_subscriber_id"), "opens", ["subscriber_id"])


def downgrade() -> None:
    op.drop_table("opens")
    op.drop_table("clicks")
