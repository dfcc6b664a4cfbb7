"""A million readers on PostgreSQL, end to end (run by hand; numbers go in RESULTS.md).

    python bench/scale.py --readers 100000 --database postgresql://127.0.0.1/bench_i12b

Drops and re-creates the named database (never point it at one you need), then:

1. import   ``mailer subscribers import`` of a generated CSV of N readers (email,
            name, topics; one name in 50 with Lithuanian accents), all confirmed;
2. releases 20 releases collected after the readers confirmed (one daily digest);
3. plan     one daily send through the public function (mailer.send.start_digest);
4. send     two ``mailer worker --until-empty`` processes into Postfix smtp-sink;
5. pages    the admin (in-process ASGI client, signed in): p95 over 20 requests each
            of the subscriber list, a search by address prefix, a search by an
            accented name, the status counts, the dashboard and the send's page.

Prints, per step, wall seconds, CPU seconds (user + sys of the processes doing the
step: the machine is shared, CPU time is the figure that stays honest), rows
written, the database size after it and the peak RSS of each process.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from send import PARAGRAPH, Sink, rss_of_tree  # noqa: E402

from mailer import accounts  # noqa: E402
from mailer.collect.ingest import add_release  # noqa: E402
from mailer.config import load_settings  # noqa: E402
from mailer.context import AppContext  # noqa: E402
from mailer.db import Database  # noqa: E402
from mailer.migrate import upgrade  # noqa: E402
from mailer.models import (  # noqa: E402
    Audience,
    Base,
    Delivery,
    DeliveryStatus,
    DigestKind,
    utcnow,
)
from mailer.send import start_digest  # noqa: E402
from mailer.web.app import create_app  # noqa: E402

RELEASES = 20
REQUESTS = 20
PASSWORD = "bench password 0123"
TOPICS = [
    {"name": "Economy", "keywords": ["economy", "investment"]},
    {"name": "Health", "keywords": ["hospital", "vaccine"]},
    {"name": "Foreign affairs", "keywords": ["embassy", "treaty"]},
]
ACCENTED = ["Šimonytė", "Žygimantas", "Ąžuolas", "Čiurlionis", "Ėglė"]


@dataclass
class Step:
    name: str
    wall: float
    cpu: float
    rows: int
    db_mb: float
    rss_mb: dict[str, float] = field(default_factory=dict)
    note: str = ""
    pg_cpu: float = 0.0


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# The server's own processes, shared by every database on it; counted in full.
_SERVER_PROCESSES = ("checkpointer", "background writer", "walwriter", "autovacuum")


class PostgresCpu:
    """CPU seconds of the PostgreSQL processes serving one database, plus the
    server's background processes (checkpointer, WAL writer: they work for every
    database, so this is still an upper bound for ours). Sessions of other databases
    (other engineers' tests and benchmarks on the same server) are left out: counting
    every postgres process made the send's server CPU depend on what else ran.

    /proc is read every 0.2 s by a thread, and each process's last reading kept, so a
    session that ends between two readings loses at most its last 0.2 s.
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self._seen: dict[tuple[int, str], float] = {}
        self._background: set[tuple[int, str]] = set()
        self._sessions: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._read()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.wait(0.2):
            self._read()

    def _read(self) -> None:
        ticks = os.sysconf("SC_CLK_TCK")
        readings: dict[tuple[int, str], float] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                command = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
                if not command.startswith("postgres: "):
                    continue
                words = command.replace("\0", " ").split()
                # A parallel worker names its leader's pid, not the database.
                leader = words[-1] if "parallel worker for PID" in command else ""
                ours = (
                    self.database in words
                    or (leader.isdigit() and int(leader) in self._sessions)
                    or any(n in command for n in _SERVER_PROCESSES)
                )
                if not ours:
                    continue
                values = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # The pid's start time keeps a reused pid from taking over a total.
            key = (int(stat.parent.name), values[19])
            readings[key] = (int(values[11]) + int(values[12])) / ticks
            if self.database in words:
                self._sessions.add(int(stat.parent.name))
            elif not leader:
                self._background.add(key)
        with self._lock:
            self._seen.update(readings)

    def total(self) -> float:
        with self._lock:
            return sum(self._seen.values())

    def background(self) -> float:
        """The part of total() spent by the server's background processes."""
        with self._lock:
            return sum(v for k, v in self._seen.items() if k in self._background)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


_postgres_cpu: PostgresCpu | None = None


def postgres_cpu() -> float:
    """CPU seconds so far of the bench database's server processes (see PostgresCpu)."""
    return _postgres_cpu.total() if _postgres_cpu is not None else 0.0


def peak_rss_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def recreate(url: str) -> None:
    target = make_url(url)
    admin = await asyncpg.connect(
        host=target.host or "127.0.0.1",
        port=target.port or 5432,
        user=target.username,
        password=target.password,
        database="postgres",
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{target.database}"')
    finally:
        await admin.close()


def write_config(folder: Path, url: str, port: int) -> Path:
    config = {
        "data_dir": str(folder / "data"),
        "database": {"url": url},
        "secret_key": "bench-secret-key-0123456789abcdef",
        "site": {
            "name": "Ministry Press Office",
            "postal_address": "Gedimino pr. 38, Vilnius",
            "base_url": "http://127.0.0.1:8000",
        },
        "sender": {
            "from": "Press Office <press@ministry.example.org>",
            "list_id": "press.ministry.example.org",
        },
        "smtp": {
            "embedded": False,
            "host": "127.0.0.1",
            "port": port,
            "connections": 8,
            "per_domain_connections": 8,
        },
        "topics": TOPICS,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def write_csv(path: Path, readers: int) -> None:
    slugs = ["economy", "health", "foreign-affairs"]
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "topics"])
        for n in range(readers):
            surname = ACCENTED[n % len(ACCENTED)] if n % 50 == 0 else f"Reader{n}"
            # A third of the readers chose topics; the rest get everything.
            topics = ";".join(slugs[: 1 + n % 3]) if n % 3 == 0 else ""
            writer.writerow([f"reader{n:07d}@d{n % 20}.example.net", f"Ona {surname}", topics])


async def database_mb(url: str) -> float:
    async with _plain(url) as connection:
        size = await connection.fetchval("SELECT pg_database_size(current_database())")
    return size / 1024 / 1024


async def relation_bytes(url: str) -> dict[str, int]:
    """Every table and index of the schema, in bytes (heap, or index, alone)."""
    async with _plain(url) as connection:
        rows = await connection.fetch(
            "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
        )
    return {name: size for name, size in rows}


class _plain:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)

    async def __aenter__(self) -> asyncpg.Connection:
        self.connection = await asyncpg.connect(
            host=self.url.host or "127.0.0.1",
            port=self.url.port or 5432,
            user=self.url.username,
            password=self.url.password,
            database=self.url.database,
        )
        return self.connection

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()


async def table_rows(url: str) -> dict[str, int]:
    async with _plain(url) as connection:
        return {
            table: await connection.fetchval(f'SELECT count(*) FROM "{table}"')
            for table in Base.metadata.tables
        }


def run_watched(commands: list[list[str]]) -> tuple[float, float, list[float], list[str]]:
    """Run processes side by side; wall seconds, their CPU, each one's peak RSS (MB)."""
    cpu_before = cpu_children()
    started = time.perf_counter()
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
    ]
    peaks = [0] * len(processes)
    while any(p.poll() is None for p in processes):
        for number, process in enumerate(processes):
            sizes = rss_of_tree(process.pid)
            if sizes:
                peaks[number] = max(peaks[number], sum(sizes.values()))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    outputs = []
    for process in processes:
        out, err = process.communicate()
        outputs.append((out + err).decode()[-3000:])
        if process.returncode not in (0, 2):
            raise SystemExit(f"{process.args} failed:\n{outputs[-1]}")
    return wall, cpu_children() - cpu_before, [p / 1024 / 1024 for p in peaks], outputs


def mailer(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mailer", "--config", str(config), *args]


def _body(n: int) -> str:
    # Distinct words per release: near-identical texts would be merged as copies.
    words = random.Random(n).choices(PARAGRAPH.split(), k=600)
    return f"Release {n}. " + " ".join(f"{w}{random.Random(n * 7 + i).randint(0, 99)}"
                                       for i, w in enumerate(words))  # fmt: skip


async def add_releases(config: Path, day: int = 1) -> None:
    settings = load_settings(config)
    now = utcnow()
    async with AppContext(settings=settings).database() as database:
        for n in range((day - 1) * RELEASES, day * RELEASES):
            await add_release(
                database,
                settings,
                title=f"Investment plan, part {n + 1}",
                body=_body(n),
                url=f"https://ministry.example.org/news/{n}",
                published=now - timedelta(minutes=day * RELEASES - n),
                topics=[["economy"], ["health"], ["foreign-affairs"]][n % 3],
                added_by="bench",
            )


async def plan(config: Path) -> tuple[int, int]:
    settings = load_settings(config)
    async with AppContext(settings=settings).database() as database:
        digest = await start_digest(
            database,
            settings,
            frequency=Audience.DAILY,
            kind=DigestKind.SCHEDULED,
            created_by="bench",
        )
        async with database.session() as session:
            queued = await session.scalar(
                select(func.count()).where(Delivery.digest_id == digest.id)
            )
        return digest.id, queued or 0


async def time_pages(config: Path, digest_id: int) -> dict[str, list[float]]:
    settings = load_settings(config)
    app = create_app(AppContext(settings=settings), run_background=False)
    pages = {
        "subscriber list": "/admin/subscribers",
        "list, page 2": None,
        "search: address prefix": "/admin/subscribers?q=reader00123",
        # The oldest 100,000 readers (a tenth of a million, all of 100,000).
        "search: 'reader00' (100,000 oldest)": "/admin/subscribers?q=reader00",
        "search: accented name": "/admin/subscribers?q=%C5%A0imonyt%C4%97",
        "search: folded name": "/admin/subscribers?q=simonyte",
        "counts: confirmed": "/admin/subscribers?status=confirmed",
        "api: search prefix": "/api/subscribers?q=reader00123",
        "dashboard": "/admin/",
        "send page": f"/admin/digests/{digest_id}",
        "send progress (json)": f"/admin/digests/{digest_id}/progress",
    }
    timings: dict[str, list[float]] = {}
    async with app.router.lifespan_context(app):
        database = app.state.web.db
        await accounts.create_user(database, "bench", PASSWORD, "admin")
        token, _ = await accounts.create_token(database, "bench", "admin")
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1:8000"
        ) as client:
            login = await client.get("/admin/login")
            csrf = login.text.split('name="csrf_token" value="')[1].split('"')[0]
            signed_in = await client.post(
                "/admin/login",
                data={"username": "bench", "password": PASSWORD, "csrf_token": csrf},
            )
            assert signed_in.status_code == 303, signed_in.text[:500]
            first = await client.get("/admin/subscribers")
            older = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
            pages["list, page 2"] = older.replace("&amp;", "&")
            for name, path in pages.items():
                headers = {"authorization": f"Bearer {token}"} if path.startswith("/api") else {}
                spent = []
                for _ in range(REQUESTS):
                    started = time.perf_counter()
                    response = await client.get(path, headers=headers)
                    spent.append(time.perf_counter() - started)
                    assert response.status_code == 200, (path, response.status_code)
                timings[name] = spent
    return timings


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


async def main_async(args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="scale-"))
    url = args.database
    steps: list[Step] = []
    load_before = os.getloadavg()
    await recreate(url)
    global _postgres_cpu
    _postgres_cpu = PostgresCpu(make_url(url).database or "")
    with Sink() as sink:
        config = write_config(folder, url, sink.port)
        settings = load_settings(config)
        schema = Database(url)
        await upgrade(schema)
        await schema.dispose()
        empty_mb = await database_mb(url)

        source = folder / "readers.csv"
        write_csv(source, args.readers)
        pg_before = postgres_cpu()
        wall, cpu, peaks, outputs = run_watched(
            [mailer(config, "subscribers", "import", str(source), "--status", "confirmed")]
        )
        pg_spent = postgres_cpu() - pg_before
        rows = await table_rows(url)
        steps.append(
            Step(
                "import",
                wall,
                cpu,
                sum(rows.values()),
                await database_mb(url),
                {"import": peaks[0]},
                outputs[0].strip().splitlines()[-1][:120],
                pg_cpu=pg_spent,
            )
        )
        print(f"import: {wall:.1f} s ({outputs[0].strip()[-200:]})", flush=True)
        if args.import_only:
            step = steps[-1]
            print(
                f"import of {args.readers:,} rows: {step.wall:.1f} s wall, {step.cpu:.1f} s CPU "
                f"(mailer), {step.pg_cpu:.1f} s CPU (PostgreSQL, this database), "
                f"peak RSS {step.rss_mb['import']:.0f} MB, DB {step.db_mb:.0f} MB"
            )
            return

        growth: list[Growth] = []
        digest_id = 0
        for day in range(1, args.days + 1):
            if day > 1:
                # What autovacuum does between two daily sends: yesterday's dead row
                # versions become free room that today's send reuses.
                async with _plain(url) as connection:
                    await connection.execute("VACUUM")
            rows = await table_rows(url)
            digest_id = await one_day(args, config, settings, sink, day, steps, rows, growth)
            if args.skip_send:
                break

        async with _plain(url) as connection:
            await connection.execute("VACUUM ANALYZE")
        started, cpu_before = time.perf_counter(), cpu_self()
        timings = await time_pages(config, digest_id)
        pages_wall, pages_cpu = time.perf_counter() - started, cpu_self() - cpu_before
    report(args, steps, load_before, empty_mb, growth, timings, pages_wall, pages_cpu)


@dataclass
class Growth:
    day: int
    before_mb: float
    after_mb: float
    relations: dict[str, int]


async def one_day(
    args: argparse.Namespace,
    config: Path,
    settings: Any,
    sink: Sink,
    day: int,
    steps: list[Step],
    rows: dict[str, int],
    growth: list[Growth],
) -> int:
    """One daily send: 20 new releases, plan, two workers; returns the digest id."""
    url = args.database
    suffix = f", day {day}" if args.days > 1 else ""
    started, cpu_before, pg_before = time.perf_counter(), cpu_self(), postgres_cpu()
    await add_releases(config, day)
    pg_spent = postgres_cpu() - pg_before
    after = await table_rows(url)
    steps.append(
        Step(
            f"20 releases{suffix}",
            time.perf_counter() - started,
            cpu_self() - cpu_before,
            sum(after.values()) - sum(rows.values()),
            await database_mb(url),
            pg_cpu=pg_spent,
        )
    )
    rows = after
    before_send_mb = await database_mb(url)
    relations_before = await relation_bytes(url)

    started, cpu_before, pg_before = time.perf_counter(), cpu_self(), postgres_cpu()
    digest_id, queued = await plan(config)
    pg_spent = postgres_cpu() - pg_before
    after = await table_rows(url)
    grown = {t: after[t] - rows[t] for t in after if after[t] != rows[t]}
    steps.append(
        Step(
            f"plan (start_digest){suffix}",
            time.perf_counter() - started,
            cpu_self() - cpu_before,
            sum(grown.values()),
            await database_mb(url),
            {"bench (plans)": peak_rss_self_mb()},
            ", ".join(f"{t} +{n:,}" for t, n in sorted(grown.items())),
            pg_cpu=pg_spent,
        )
    )
    print(f"plan{suffix}: {steps[-1].wall:.1f} s, {queued} deliveries", flush=True)
    rows = after

    if not args.skip_send:
        worker = mailer(config, "worker", "--until-empty", "--quiet")
        pg_before = postgres_cpu()
        background_before = _postgres_cpu.background() if _postgres_cpu else 0.0
        wall, cpu, peaks, _outputs = run_watched([worker, worker])
        pg_spent = postgres_cpu() - pg_before
        background = (_postgres_cpu.background() if _postgres_cpu else 0.0) - background_before
        after = await table_rows(url)
        async with AppContext(settings=settings).database() as database:
            async with database.session() as session:
                sent = await session.scalar(
                    select(func.count()).where(
                        Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.SENT
                    )
                )
        steps.append(
            Step(
                f"send (2 workers){suffix}",
                wall,
                cpu,
                sum(after.values()) - sum(rows.values()),
                await database_mb(url),
                {"worker 1": peaks[0], "worker 2": peaks[1]},
                f"{sent:,} sent of {queued:,}, {sent / wall:,.0f} msg/s into {sink.kind}; "
                f"CPU a message: mailer {cpu / max(sent, 1) * 1000:.2f} ms, PostgreSQL "
                f"{pg_spent / max(sent, 1) * 1000:.2f} ms ({background / max(sent, 1) * 1000:.2f} "
                "of it background)",
                pg_cpu=pg_spent,
            )
        )
        print(f"send{suffix}: {wall:.1f} s, {sent} sent", flush=True)
    relations_after = await relation_bytes(url)
    grew = {
        name: size - relations_before.get(name, 0)
        for name, size in relations_after.items()
        if size != relations_before.get(name, 0)
    }
    growth.append(Growth(day, before_send_mb, await database_mb(url), grew))
    return digest_id


def report(
    args: argparse.Namespace,
    steps: list[Step],
    load_before: tuple[float, float, float],
    empty_mb: float,
    growth: list[Growth],
    timings: dict[str, list[float]],
    pages_wall: float,
    pages_cpu: float,
) -> None:
    load_after = os.getloadavg()
    print()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"## {args.readers:,} readers, PostgreSQL, {stamp}")
    print()
    print(
        f"Load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
        f"{os.cpu_count()} cores shared with other engineers' work. CPU (PostgreSQL) "
        "counts this database's sessions and the server's background processes, not "
        "other databases' sessions."
    )
    print()
    print(
        "| step | wall s | CPU s (mailer) | CPU s (PostgreSQL) | rows written "
        "| DB MB after | peak RSS MB | notes |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    print(f"| empty schema | | | | | {empty_mb:.0f} | | |")
    for step in steps:
        rss = ", ".join(f"{k} {v:.0f}" for k, v in step.rss_mb.items())
        print(
            f"| {step.name} | {step.wall:.1f} | {step.cpu:.1f} | {step.pg_cpu:.1f} | "
            f"{step.rows:,} | {step.db_mb:.0f} | {rss} | {step.note} |"
        )
    what = "planned (not sent: --skip-send)" if args.skip_send else "sent"
    for day in growth:
        per_reader = (day.after_mb - day.before_mb) * 1024 * 1024 / args.readers
        when = (
            "the first send (it also writes every reader's watermark once)"
            if day.day == 1
            else f"day {day.day}, after a VACUUM as autovacuum does between daily sends"
        )
        print()
        print(
            f"Database before the send {day.before_mb:.0f} MB, after {day.after_mb:.0f} MB: "
            f"**{per_reader:.0f} bytes per reader** for one {RELEASES}-release daily send, "
            f"{what}; {when}. By relation (bytes per reader):"
        )
        print()
        print("| relation | bytes per reader |")
        print("|---|---:|")
        for name, size in sorted(day.relations.items(), key=lambda item: -item[1]):
            print(f"| {name} | {size / args.readers:.1f} |")
    print()
    print(f"Admin pages ({REQUESTS} requests each, in-process ASGI client, signed in; "
          f"{pages_wall:.1f} s wall, {pages_cpu:.1f} s CPU in all):")  # fmt: skip
    print()
    print("| page | p95 ms | median ms |")
    print("|---|---:|---:|")
    for name, spent in timings.items():
        print(f"| {name} | {p95(spent) * 1000:.0f} | {statistics.median(spent) * 1000:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=100_000)
    parser.add_argument(
        "--database",
        required=True,
        help="postgresql://… of a scratch database: it is dropped and created again",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=1,
        help="daily sends in a row (each 20 new releases); from day 2 on, the growth "
        "is the steady state: yesterday's dead row versions were vacuumed and reused",
    )
    parser.add_argument(
        "--skip-send",
        action="store_true",
        help="plan the send but do not deliver it (the pages then show a send of N pending)",
    )
    parser.add_argument(
        "--import-only",
        action="store_true",
        help="stop after the import step (its seconds, CPU and peak RSS)",
    )
    args = parser.parse_args()
    if not args.database.startswith("postgresql"):
        raise SystemExit("--database must be a PostgreSQL URL")
    if make_url(args.database).database in (None, "", "postgres", "test"):
        raise SystemExit("name a scratch database (it is dropped): not postgres or test")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
