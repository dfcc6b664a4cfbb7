"""One scheduler at a time, and `mailer serve` stopping without losing mail."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from mailer.config import SourceConfig
from mailer.context import AppContext
from mailer.locks import Leadership
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Frequency,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from mailer.schedule import _leader_only, collect_and_notify, scheduled_digest
from mailer.send import journal_dir, start_digest
from tests.send.conftest import deliver_all, seed, write_config
from tests.support.faulty_smtp import FaultPlan, FaultySmtpServer
from tests.support.smtp import SmtpServer, free_port


async def test_only_one_process_holds_the_scheduler(tmp_path: Path, database_url: str) -> None:
    settings = write_config(tmp_path, database_url, free_port())
    first_app, second_app = AppContext(settings=settings), AppContext(settings=settings)
    async with first_app.database() as one, second_app.database() as two:
        first = Leadership(one, "scheduler", "host-a", lease=timedelta(seconds=1))
        second = Leadership(two, "scheduler", "host-b", lease=timedelta(seconds=1))
        assert await first.refresh() is True
        assert await second.refresh() is False
        assert await first.refresh() is True  # renewing keeps it
        await first.release()
        assert await second.refresh() is True
        assert await first.refresh() is False
        await second.release()
        await first.release()


async def test_an_expired_lease_passes_to_another_process(tmp_path: Path, sqlite_url: str) -> None:
    settings = write_config(tmp_path, sqlite_url, free_port())
    async with AppContext(settings=settings).database() as database:
        crashed = Leadership(database, "scheduler", "crashed", lease=timedelta(milliseconds=300))
        survivor = Leadership(database, "scheduler", "survivor", lease=timedelta(seconds=5))
        assert await crashed.refresh()
        assert not await survivor.refresh()
        await asyncio.sleep(0.4)  # the crashed holder never renews
        assert await survivor.refresh()


async def test_two_instances_never_start_the_same_digest_twice(
    tmp_path: Path, database_url: str
) -> None:
    settings = write_config(tmp_path, database_url, free_port())
    async with (
        AppContext(settings=settings).database() as one,
        AppContext(settings=settings).database() as two,
    ):
        await seed(one, 5)
        leaders = [Leadership(one, "scheduler", "a"), Leadership(two, "scheduler", "b")]
        for leadership in leaders:
            await leadership.refresh()
        jobs = [_leader_only(leadership, scheduled_digest) for leadership in leaders]
        # The daily job fires in both processes at the same minute.
        await asyncio.gather(
            *(job(db, settings, "daily") for job, db in zip(jobs, (one, two), strict=True))
        )
        async with one.session() as session:
            digests = await session.scalar(select(func.count()).select_from(Digest))
            deliveries = await session.scalar(select(func.count()).select_from(Delivery))
        assert (digests, deliveries) == (1, 5)
        for leadership in leaders:
            await leadership.release()


async def test_sigterm_stops_serve_cleanly_and_loses_nothing(
    tmp_path: Path, sqlite_url: str
) -> None:
    server = FaultySmtpServer(FaultPlan(data_delay=0.02)).start()
    try:
        settings = write_config(tmp_path, sqlite_url, server.port, connections=2)
        async with AppContext(settings=settings).database() as database:
            addresses = await seed(database, 150)
            await start_digest(database, settings)
        port = free_port()
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailer",
                "--config",
                str(settings.config_path),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while len(server.handler.accepted) < 20:
            assert serve.poll() is None, serve.stderr.read().decode()
            assert time.monotonic() < deadline, "serve never started delivering"
            await asyncio.sleep(0.05)
        os.kill(serve.pid, signal.SIGTERM)
        _, err = await asyncio.to_thread(serve.communicate, timeout=60)
        # uvicorn re-raises the signal after its graceful shutdown, as daemons do.
        assert serve.returncode in (0, -signal.SIGTERM), err.decode()[-3000:]
        assert "Application shutdown complete" in err.decode()
        sent_before_stop = Counter(server.handler.delivered())
        assert 20 <= sum(sent_before_stop.values()) < 150

        async with AppContext(settings=settings).database() as database:
            async with database.session() as session:
                statuses = Counter((await session.scalars(select(Delivery.status))).all())
            # Everything on the wire was recorded; nothing is left claimed.
            assert statuses[DeliveryStatus.SENDING] == 0
            assert statuses[DeliveryStatus.SENT] == sum(sent_before_stop.values())
            assert not list(journal_dir(settings).glob("*.journal"))
            await deliver_all(database, settings)
        assert server.handler.delivered() == Counter({a: 1 for a in addresses})
    finally:
        server.stop()


async def test_a_collection_with_news_mails_immediate_subscribers(
    tmp_path: Path, sqlite_url: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    server = SmtpServer().start()
    try:
        settings = write_config(tmp_path, sqlite_url, server.port)
        folder = SourceConfig(name="Drop", kind="folder", path=drop, interval="5m")
        settings = settings.model_copy(update={"sources": [folder]})
        async with AppContext(settings=settings).database() as database:
            async with database.transaction() as session:
                for address, frequency in (
                    ("now@example.net", Frequency.IMMEDIATELY),
                    ("daily@example.net", Frequency.DAILY),
                ):
                    session.add(
                        Subscriber(
                            email=address,
                            email_key=address,
                            status=SubscriberStatus.CONFIRMED,
                            frequency=frequency,
                            confirmed_at=utcnow(),
                            digest_since=utcnow(),
                        )
                    )
            await collect_and_notify(database, settings, "Drop")  # nothing new yet
            (drop / "bridge.md").write_text(
                "# Vilnius opens a bridge over the Neris\n\nThe bridge opened today.\n",
                encoding="utf-8",
            )
            await collect_and_notify(database, settings, "Drop")
            await deliver_all(database, settings)
        assert [m.rcpt_tos for m in server.messages] == [["now@example.net"]]
        assert (
            "Vilnius opens a bridge"
            in server.messages[0].message.get_body(("plain",)).get_content()
        )
    finally:
        server.stop()
