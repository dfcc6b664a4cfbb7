"""releases: date-only publication dates, hand-added releases exempt from max_age

Revision ID: 0005
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "published_date_only", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
        batch_op.add_column(
            sa.Column(
                "exempt_from_max_age", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )
    # Releases added by hand before this revision were an editor's decision too.
    op.execute(
        "UPDATE releases SET exempt_from_max_age = true WHERE id IN ("
        "SELECT release_links.release_id FROM release_links JOIN sources"
        " ON sources.id = release_links.source_id WHERE sources.kind = 'ingest')"
    )


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("exempt_from_max_age")
        batch_op.drop_column("published_date_only")
