"""Bytes a reader a daily send for two layouts of the outbox table, in plain SQL.

Run by hand: ``python bench/outbox_layout.py --database postgresql://…/scratch``
(the database is dropped and created again for each layout). Each layout plans a
send of N rows (one INSERT … SELECT, as mailer.digest does), records every result
in transactions of ``--batch`` rows (as the worker does), VACUUMs, and repeats for
four days; the table prints each relation's growth per reader on days 2-4. It
isolates the table layout from the rest of mailer: 20 seconds instead of the
minutes of ``bench/scale.py``, which measures the real thing.

* ``one-table``: deliveries as migration 0014 left them;
* ``by-status``: partitioned by status as migration 0015 makes them.
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
from sqlalchemy.engine import make_url

_COLUMNS = (
    "digest_id integer NOT NULL, subscriber_id integer, email varchar(320), "
    "status varchar(20) NOT NULL, attempts integer NOT NULL, "
    "next_attempt_at timestamptz, last_error text, sent_at timestamptz, "
    "bounced boolean NOT NULL, content_group_id integer NOT NULL"
)

LAYOUTS = {
    "one-table": [
        f"CREATE TABLE deliveries (id serial PRIMARY KEY, {_COLUMNS}, "
        "UNIQUE (subscriber_id, digest_id))",
        "CREATE INDEX ON deliveries (digest_id) WHERE bounced",
        "CREATE INDEX ON deliveries USING brin (digest_id)",
        "CREATE INDEX ON deliveries USING brin (sent_at)",
        "CREATE INDEX ON deliveries (digest_id, status) WHERE status <> 'sent'",
    ],
    "by-status": [
        "CREATE SEQUENCE deliveries_id_seq",
        "CREATE TABLE deliveries (id integer NOT NULL DEFAULT nextval('deliveries_id_seq'), "
        f"{_COLUMNS}) PARTITION BY LIST (status)",
        "CREATE TABLE deliveries_sent PARTITION OF deliveries FOR VALUES IN ('sent')",
        "CREATE TABLE deliveries_unsent PARTITION OF deliveries DEFAULT "
        "WITH (vacuum_truncate = false)",
        "ALTER TABLE deliveries_sent ADD PRIMARY KEY (id)",
        "ALTER TABLE deliveries_unsent ADD PRIMARY KEY (id)",
        "CREATE INDEX ON deliveries (subscriber_id)",
        "CREATE INDEX ON deliveries (digest_id, status) WHERE status <> 'sent'",
        "CREATE INDEX ON deliveries (digest_id) WHERE bounced",
        "CREATE INDEX ON deliveries USING brin (digest_id)",
        "CREATE INDEX ON deliveries USING brin (sent_at)",
    ],
}

_SIZES = (
    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
)


async def _connect(url: str, database: str) -> asyncpg.Connection:
    target = make_url(url)
    return await asyncpg.connect(
        host=target.host or "127.0.0.1",
        port=target.port or 5432,
        user=target.username,
        password=target.password,
        database=database,
    )


async def _one_day(connection: asyncpg.Connection, day: int, readers: int, batch: int) -> None:
    await connection.execute(
        "INSERT INTO deliveries (digest_id, subscriber_id, status, attempts, bounced, "
        "content_group_id) SELECT $1, s, 'pending', 0, false, $1 "
        "FROM generate_series(1, $2) s ORDER BY s",
        day,
        readers,
    )
    first, last = await connection.fetchrow(
        "SELECT min(id), max(id) FROM deliveries WHERE digest_id = $1", day
    )
    for start in range(first, last + 1, batch):
        async with connection.transaction():
            await connection.executemany(
                "UPDATE deliveries SET status = 'sent', sent_at = now(), attempts = 1, "
                "last_error = NULL WHERE id = $1",
                [(i,) for i in range(start, min(start + batch, last + 1))],
            )


async def measure(url: str, layout: str, readers: int, batch: int) -> dict[str, list[float]]:
    name = make_url(url).database
    admin = await _connect(url, "postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    connection = await _connect(url, str(name))
    growth: dict[str, list[float]] = {}
    try:
        for statement in LAYOUTS[layout]:
            await connection.execute(statement)
        await _one_day(connection, 1, readers, batch)
        for day in (2, 3, 4):
            await connection.execute("VACUUM")
            before = dict(await connection.fetch(_SIZES))
            await _one_day(connection, day, readers, batch)
            after = dict(await connection.fetch(_SIZES))
            for relation, size in after.items():
                growth.setdefault(relation, []).append((size - before.get(relation, 0)) / readers)
    finally:
        await connection.close()
    return growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="postgresql://… of a scratch database")
    parser.add_argument("--readers", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="results per transaction")
    args = parser.parse_args()
    print("| layout | relation | day 2 | day 3 | day 4 |\n|---|---|---:|---:|---:|")
    for layout in LAYOUTS:
        growth = asyncio.run(measure(args.database, layout, args.readers, args.batch))
        totals = [sum(days[i] for days in growth.values()) for i in range(3)]
        for relation, days in sorted(growth.items(), key=lambda item: -sum(item[1])):
            if any(abs(value) >= 0.1 for value in days):
                print(f"| {layout} | {relation} | " + " | ".join(f"{v:.1f}" for v in days) + " |")
        print(f"| {layout} | **total** | " + " | ".join(f"**{v:.1f}**" for v in totals) + " |")


if __name__ == "__main__":
    main()
