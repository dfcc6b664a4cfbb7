"""Collector benchmark: 200 local feeds of 50 items each, collected twice.

The first run fetches, parses, deduplicates and stores 10,000 releases; the second
run must cost one 304 per feed. Reports, for each run, wall-clock seconds and the
collector process's CPU time (user + system), both also per release stored, and
the collector's peak resident memory; first, the CPU per release of reading
(parsing and extracting) 40 of the feeds alone, the XML reading's share apart. The
feeds are served by a separate process on a loopback port so neither its CPU
time nor its memory is counted. On a shared machine the CPU time per release is
the steadier figure.

    python bench/collect.py [--feeds 200] [--items 50] [--database URL] [--profile FILE]

``--profile FILE`` writes a cProfile of the first run, timed in process CPU time
(read it with ``python -m pstats FILE``). A PostgreSQL ``--database`` should name
a scratch database: the benchmark migrates it and adds its sources and releases. With
PostgreSQL on the same machine, the CPU time of the server processes serving that
database is printed too, apart from the collector's.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import email.utils
import gc
import io
import multiprocessing
import os
import random
import resource
import socket
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import feedparser
from sqlalchemy import func, select

from mailer.collect import collect_all
from mailer.collect.feeds import parse_feed, read_rss
from mailer.config import settings_from_mapping
from mailer.context import AppContext
from mailer.migrate import upgrade
from mailer.models import Release

WORDS = (
    "government ministry budget minister council agency health economy defence energy "
    "investment report citizens region municipality hospital school tax inflation growth "
    "programme support project plan meeting agreement cooperation security transport digital "
    "funding innovation reform public services employment export industry climate water "
    "housing culture education research university court police border customs trade"
).split()


def feed_xml(feed: int, items: int) -> bytes:
    rng = random.Random(feed)
    entries = []
    for item in range(items):
        sentences = []
        for _ in range(6):
            words = [rng.choice(WORDS) for _ in range(rng.randint(12, 22))]
            sentences.append(" ".join(words).capitalize() + ".")
        body = "".join(f"<p>{' '.join(sentences[i : i + 2])}</p>" for i in range(0, 6, 2))
        day = 1 + (feed + item) % 28
        entries.append(
            f"<item><title>Release {feed}-{item}: {rng.choice(WORDS)} {rng.choice(WORDS)}</title>"
            f"<link>http://press{feed}.example/releases/{item}</link>"
            f"<guid isPermaLink='false'>feed{feed}-item{item}</guid>"
            f"<pubDate>{day:02d} Jun 2024 10:00:00 +0300</pubDate>"
            f"<description><![CDATA[{body}<p>Share on Facebook | Tweet</p>]]></description></item>"
        )
    return (
        f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>Press office {feed}</title><link>http://press{feed}.example/</link>"
        f"{''.join(entries)}</channel></rss>"
    ).encode()


def serve(port_queue: multiprocessing.Queue, feeds: int, items: int) -> None:
    bodies = {f"/feed/{n}": feed_xml(n, items) for n in range(feeds)}
    etag = '"bench-1"'
    modified = email.utils.formatdate(1_700_000_000, usegmt=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            body = bodies.get(self.path)
            if body is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def usage_snapshot() -> tuple[float, float, int, int, int, int]:
    """User and system seconds, voluntary and involuntary context switches, page
    faults that had to read from storage, and garbage collections so far: what can
    tell a run on a quiet machine from one on a busy one. (On this VM the kernel
    pages out memory left cold, files included, so after a quiet spell the
    libraries and data files are read in again.)"""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    collections = sum(generation["collections"] for generation in gc.get_stats())
    return (
        usage.ru_utime,
        usage.ru_stime,
        usage.ru_nvcsw,
        usage.ru_nivcsw,
        usage.ru_majflt,
        collections,
    )


def server_cpu_seconds(database: str) -> float | None:
    """CPU seconds (user + system) of the PostgreSQL server processes serving
    ``database`` (named in their process titles), from /proc;
    None where there is no /proc. Backends that exit between two readings are not
    counted: the collector's pool keeps its connections for the whole run."""
    if not Path("/proc/self").exists():
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            title = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # "postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE"
            if not title.startswith("postgres: ") or database not in title.split()[2:4]:
                continue
            fields = (folder / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parsing_cost(feeds: int, items: int) -> None:
    """CPU per release of reading the feeds alone (no network, no database): what the
    collector cannot go below, and how much of it is reading the XML (the fast RSS
    reader the collector uses for these feeds, feedparser for comparison)."""
    bodies = [feed_xml(n, items) for n in range(min(feeds, 40))]
    started = cpu_seconds()
    for body in bodies:
        feedparser.parse(io.BytesIO(body), sanitize_html=False, resolve_relative_uris=False)
    feedparser_only = cpu_seconds() - started
    started = cpu_seconds()
    for body in bodies:
        read_rss(body, "application/rss+xml", "utf-8")
    fast_only = cpu_seconds() - started
    started = cpu_seconds()
    count = 0
    for body in bodies:
        for candidate in parse_feed(body, url="http://press.example/").candidates:
            # Computed before storing; part of reading a release.
            _ = candidate.content_hash, candidate.simhash
            count += 1
    parsed = cpu_seconds() - started
    print(
        f"reading alone: {parsed / count * 1000:.2f} ms CPU per release"
        f" (the XML {fast_only / count * 1000:.2f} ms of it; feedparser would take"
        f" {feedparser_only / count * 1000:.2f} ms), {count} releases"
    )


async def run(
    feeds: int, items: int, database_url: str | None, folder: Path, profile: str | None
) -> None:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(queue, feeds, items), daemon=True)
    server.start()
    port = queue.get(timeout=60)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        settings = settings_from_mapping(
            {
                "data_dir": str(folder / "data"),
                "database": {"url": database_url or f"sqlite:///{folder / 'bench.db'}"},
                "secret_key": "bench-secret-key-0123456789",
                # The feeds are served on loopback, which the SSRF guard refuses
                # unless it is listed here.
                "collector": {"allow_private_hosts": ["127.0.0.1"]},
                "sources": [
                    {
                        "name": f"Feed {n:03d}",
                        "kind": "feed",
                        "url": f"http://127.0.0.1:{port}/feed/{n}",
                    }
                    for n in range(feeds)
                ],
                "topics": [
                    {"name": "Economy", "keywords": ["economy", "budget", "tax", "inflation"]},
                    {"name": "Health", "keywords": ["health", "hospital"]},
                ],
            },
            environ={},
        )
        context = AppContext(settings=settings)
        scratch = context.make_database()
        try:
            await upgrade(scratch)
        finally:
            await scratch.dispose()
        async with context.database() as database:
            print(f"{feeds} feeds x {items} items, database {database.dialect}")
            # The PostgreSQL server's share, counted apart (on the same machine).
            server_database = None if database.is_sqlite else database.url.database
            per_release = feeds * items
            for label in ("first run", "second run (all 304)"):
                # Timed by CPU time: waiting for the network or the database costs nothing.
                profiler = (
                    cProfile.Profile(time.process_time)
                    if profile and label == "first run"
                    else None
                )
                started, cpu_started = time.perf_counter(), cpu_seconds()
                usage_started = usage_snapshot()
                server_started = server_cpu_seconds(server_database) if server_database else None
                if profiler:
                    profiler.enable()
                results = await collect_all(database, settings)
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(profile)
                elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
                user, system, voluntary, involuntary, major_faults, collections = (
                    after - before
                    for after, before in zip(usage_snapshot(), usage_started, strict=True)
                )
                server_cpu = None
                if server_database and server_started is not None:
                    server_cpu = (server_cpu_seconds(server_database) or 0.0) - server_started
                failed = [r for r in results if r.error]
                print(
                    f"{label}: {elapsed:.1f} s wall, {cpu:.1f} s CPU"
                    f" ({elapsed / per_release * 1000:.2f} ms wall,"
                    f" {cpu / per_release * 1000:.2f} ms CPU per release of the feeds);"
                    f" new {sum(r.new for r in results)},"
                    f" not modified {sum(r.not_modified for r in results)},"
                    f" failed sources {len(failed)}"
                    + (f" (first error: {failed[0].error})" if failed else "")
                )
                print(
                    f"  user {user:.1f} s, system {system:.1f} s; context switches"
                    f" {voluntary:,} voluntary, {involuntary:,} involuntary;"
                    f" {major_faults:,} major page faults; {collections:,} garbage collections"
                )
                if server_cpu is not None:
                    print(
                        f"  PostgreSQL server processes of {server_database}:"
                        f" {server_cpu:.1f} s CPU ({server_cpu / per_release * 1000:.2f} ms"
                        f" per release); collector and server together"
                        f" {(cpu + server_cpu) / per_release * 1000:.2f} ms"
                    )
            async with database.session() as session:
                stored = await session.scalar(select(func.count()).select_from(Release))
            print(f"releases stored: {stored}")
        print(f"peak resident memory of the collector process: {peak_rss_mb():.0f} MB")
    finally:
        server.terminate()
        server.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--items", type=int, default=50)
    parser.add_argument("--database", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--profile", help="write a cProfile of the first run to this file")
    args = parser.parse_args()
    parsing_cost(args.feeds, args.items)
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(args.feeds, args.items, args.database, Path(folder), args.profile))
    sys.exit(0)


if __name__ == "__main__":
    main()
