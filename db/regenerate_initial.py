"""Pre-release only: rewrite db/versions/0001_initial_schema.py from mailer/models.py.

Once a release has shipped, schema changes must be new migrations instead
(`alembic revision --autogenerate` against an upgraded database)."""

import asyncio
import subprocess
import sys
import tempfile

from alembic import command

from mailer.db import Database
from mailer.migrate import MIGRATIONS_DIR, alembic_config

TARGET = MIGRATIONS_DIR / "versions" / "0001_initial_schema.py"


async def regenerate() -> None:
    TARGET.unlink(missing_ok=True)
    config = alembic_config()
    with tempfile.TemporaryDirectory() as folder:
        database = Database(f"sqlite:///{folder}/empty.db")
        async with database.engine.begin() as connection:

            def generate(sync_connection: object) -> None:
                config.attributes["connection"] = sync_connection
                command.revision(config, message="initial schema", autogenerate=True, rev_id="0001")

            await connection.run_sync(generate)
        await database.dispose()


if __name__ == "__main__":
    asyncio.run(regenerate())
    for fix in (["format", "-q"], ["check", "--fix", "-q"], ["format", "-q"]):
        subprocess.run([sys.executable, "-m", "ruff", *fix, str(TARGET)], check=False)  # noqa: S603
    print(f"rewrote {TARGET}")
