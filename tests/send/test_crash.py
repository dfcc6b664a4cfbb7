"""Crash safety and scale-out: real `mailer worker` processes, killed and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from mailer.context import AppContext
from mailer.journal import Journal
from mailer.models import Delivery, DeliveryClaim, DeliveryStatus, utcnow
from mailer.send import journal_dir, recover, start_digest
from tests.send.conftest import seed, write_config
from tests.support.faulty_smtp import FaultPlan, FaultySmtpServer


def _worker(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "worker", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_kill_9_mid_send_then_restart_delivers_everyone(
    tmp_path: Path, database_url: str
) -> None:
    server = FaultySmtpServer(FaultPlan(data_delay=0.01)).start()
    try:
        settings = write_config(tmp_path, database_url, server.port, connections=4)
        config = settings.config_path
        async with AppContext(settings=settings).database() as database:
            addresses = await seed(database, 300)
            await start_digest(database, settings)
        first = _worker(config, "--until-empty")
        await _wait_for(lambda: len(server.handler.accepted) >= 60)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        delivered_before_restart = len(server.handler.accepted)
        assert delivered_before_restart < 300, "the send finished before the kill"

        second = _worker(config, "--until-empty")
        _, err = await asyncio.to_thread(second.communicate, timeout=120)
        assert second.returncode == 0, err.decode()
        delivered = server.handler.delivered()
        assert set(delivered) == set(addresses), "somebody never got the digest"
        duplicates = sum(n - 1 for n in delivered.values())
        # At most the messages that were on the wire: one per open connection.
        assert duplicates <= settings.smtp.connections, delivered.most_common(5)
        async with AppContext(settings=settings).database() as database:
            async with database.session() as session:
                statuses = Counter((await session.scalars(select(Delivery.status))).all())
        assert statuses == Counter({DeliveryStatus.SENT: 300})
    finally:
        server.stop()


async def test_journal_of_a_dead_worker_is_replayed(tmp_path: Path, sqlite_url: str) -> None:
    server = FaultySmtpServer().start()
    try:
        settings = write_config(tmp_path, sqlite_url, server.port)
        async with AppContext(settings=settings).database() as database:
            await seed(database, 4)
            digest = await start_digest(database, settings)
            async with database.transaction() as session:
                rows = (
                    await session.scalars(
                        select(Delivery)
                        .where(Delivery.digest_id == digest.id)
                        .order_by(Delivery.id)
                    )
                ).all()
                session.add(
                    DeliveryClaim(
                        worker_id="deadhost-1-abc",
                        claimed_at=utcnow(),
                        delivery_ids=[row.id for row in rows],
                    )
                )
            # The dead worker had journaled two acceptances, then died.
            journal = Journal(journal_dir(settings), "deadhost-1-abc")
            journal.record(rows[0].id, "<a@example.org>", utcnow())
            journal.record(rows[1].id, "<b@example.org>", utcnow())
            os.close(journal._fd)  # die without cleaning up; the lock goes with the fd
            requeued = await recover(database, settings)
            assert requeued == 2
            async with database.session() as session:
                after = {
                    d.id: (d.status, d.sent_at is not None)
                    for d in (await session.scalars(select(Delivery))).all()
                }
                claims = await session.scalar(select(func.count()).select_from(DeliveryClaim))
            assert after[rows[0].id] == after[rows[1].id] == (DeliveryStatus.SENT, True)
            assert after[rows[2].id] == after[rows[3].id] == (DeliveryStatus.PENDING, False)
            assert claims == 0, "the dead worker's claims are gone: anyone may take its rows"
            assert not (journal_dir(settings) / "deadhost-1-abc.journal").exists()
    finally:
        server.stop()


async def test_two_worker_processes_share_a_send_without_duplicates(
    tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL: SELECT … FOR UPDATE SKIP LOCKED; SQLite: IMMEDIATE claims."""
    server = FaultySmtpServer(FaultPlan(data_delay=0.002)).start()
    try:
        settings = write_config(tmp_path, database_url, server.port, connections=2)
        async with AppContext(settings=settings).database() as database:
            addresses = await seed(database, 400)
            await start_digest(database, settings)
        workers = [_worker(settings.config_path, "--until-empty") for _ in range(2)]
        outputs = [await asyncio.to_thread(w.communicate, timeout=120) for w in workers]
        for worker, (_, err) in zip(workers, outputs, strict=True):
            assert worker.returncode == 0, err.decode()
        assert server.handler.delivered() == Counter({a: 1 for a in addresses})
        sent_by_each = [int(out.decode().split("sent ")[1].split(",")[0]) for out, _ in outputs]
        assert sum(sent_by_each) == 400
        assert all(n > 0 for n in sent_by_each), f"one worker did all the work: {sent_by_each}"
    finally:
        server.stop()
