"""public archive: withdrawn and embargoed releases, digest public ids, full-text search

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:10:00
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL: the text vector is a stored generated column (not mapped by the
# models; mailer/archive.py queries it by name), indexed with GIN. Computing it per
# row at query time costs about a millisecond a release, so it is made once, when
# a release is written.
_PG_DOCUMENT = (
    "to_tsvector('mailer_search'::regconfig, "
    "coalesce(title, '') || ' ' || coalesce(publisher, '') || ' ' || coalesce(text, ''))"
)

# SQLite: an external-content FTS5 table (the text is stored once, in releases);
# unicode61 with remove_diacritics 2 folds accents, so "élection" finds "election".
# Triggers keep it current. A later migration that rebuilds the releases table in
# batch mode (copy and rename) drops these triggers and must create them again.
_SQLITE_SEARCH = [
    "CREATE VIRTUAL TABLE releases_search USING fts5("
    "title, publisher, text, content='releases', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER releases_search_insert AFTER INSERT ON releases BEGIN "
    "INSERT INTO releases_search(rowid, title, publisher, text) "
    "VALUES (new.id, new.title, new.publisher, new.text); END",
    "CREATE TRIGGER releases_search_delete AFTER DELETE ON releases BEGIN "
    "INSERT INTO releases_search(releases_search, rowid, title, publisher, text) "
    "VALUES ('delete', old.id, old.title, old.publisher, old.text); END",
    "CREATE TRIGGER releases_search_update AFTER UPDATE OF title, publisher, text "
    "ON releases BEGIN "
    "INSERT INTO releases_search(releases_search, rowid, title, publisher, text) "
    "VALUES ('delete', old.id, old.title, old.publisher, old.text); "
    "INSERT INTO releases_search(rowid, title, publisher, text) "
    "VALUES (new.id, new.title, new.publisher, new.text); END",
    "INSERT INTO releases_search(releases_search) VALUES ('rebuild')",
]

_PG_SEARCH = [
    # unaccent is a trusted extension (PostgreSQL 13+): the database owner may add it.
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    "CREATE TEXT SEARCH CONFIGURATION mailer_search (COPY = simple)",
    "ALTER TEXT SEARCH CONFIGURATION mailer_search "
    "ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple",
    "ALTER TABLE releases ADD COLUMN search_vector tsvector "
    f"GENERATED ALWAYS AS ({_PG_DOCUMENT}) STORED",
    "CREATE INDEX ix_releases_search ON releases USING gin (search_vector)",
]


def upgrade() -> None:
    op.add_column(
        "releases",
        sa.Column("withdrawn_at", mailer.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column("releases", sa.Column("withdrawn_note", sa.String(length=500), nullable=True))
    op.add_column(
        "releases",
        sa.Column("embargo_until", mailer.models.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_releases_embargo_until"), "releases", ["embargo_until"])
    op.create_index(op.f("ix_releases_withdrawn_at"), "releases", ["withdrawn_at"])

    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("public_id", sa.String(length=32), nullable=True))
    connection = op.get_bind()
    digests = sa.table("digests", sa.column("id", sa.Integer), sa.column("public_id", sa.String))
    for (digest_id,) in connection.execute(sa.select(digests.c.id)).all():
        connection.execute(
            digests.update()
            .where(digests.c.id == digest_id)
            .values(public_id=secrets.token_urlsafe(12))
        )
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.alter_column("public_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_unique_constraint(batch_op.f("uq_digests_public_id"), ["public_id"])

    for statement in _PG_SEARCH if connection.dialect.name == "postgresql" else _SQLITE_SEARCH:
        op.execute(statement)


def downgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_releases_search")
        op.execute("ALTER TABLE releases DROP COLUMN IF EXISTS search_vector")
        op.execute("DROP TEXT SEARCH CONFIGURATION IF EXISTS mailer_search")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS releases_search_{trigger}")
        op.execute("DROP TABLE IF EXISTS releases_search")
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_digests_public_id"), type_="unique")
        batch_op.drop_column("public_id")
    op.drop_index(op.f("ix_releases_embargo_until"), table_name="releases")
    op.drop_index(op.f("ix_releases_withdrawn_at"), table_name="releases")
    op.drop_column("releases", "embargo_until")
    op.drop_column("releases", "withdrawn_note")
    op.drop_column("releases", "withdrawn_at")
