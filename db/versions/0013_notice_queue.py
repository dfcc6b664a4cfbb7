"""notice queue: a notice owed to a subscriber waits in subscribers.notice_due

Revision ID: 0013
Revises: 0007
Create Date: 2026-12-02 00:30:00

A notice that could not be sent (the SMTP server was down) used to be dropped. It
now waits in the subscriber's row, as an unsent confirmation already does (a
pending row without confirmation_sent_at), and the retry job sends it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("notice_due", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscribers") as batch:
        batch.drop_column("notice_due")
