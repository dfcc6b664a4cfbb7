"""sources.total_releases dropped: nothing read it

Revision ID: 0010
Revises: 0011
Create Date: 2026-12-02 00:30:00

The collector added each run's new releases to it, but every count shown (CLI,
dashboard, sources pages) comes from release_links (mailer.collect.store.
source_release_counts), which also counts releases merged into another. A downgrade
restores the column filled from release_links.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch: SQLite rebuilds the table (mailer.migrate switches foreign keys off for it).
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("total_releases")


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("total_releases", sa.Integer(), nullable=False, server_default="0")
        )
    op.execute(
        "UPDATE sources SET total_releases = (SELECT count(DISTINCT release_id) "
        "FROM release_links WHERE release_links.source_id = sources.id)"
    )
