"""Fixtures for the sending engine: a faulty SMTP server, subscribers and releases."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailer.config import Settings, load_settings
from mailer.db import Database
from mailer.models import (
    Frequency,
    Release,
    ReleaseLink,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from tests.support.faulty_smtp import FaultPlan, FaultySmtpServer


@pytest.fixture
def faulty_smtp() -> Iterator[FaultySmtpServer]:
    server = FaultySmtpServer(FaultPlan()).start()
    yield server
    server.stop()


def write_config(tmp_path: Path, database_url: str, smtp_port: int, **smtp: Any) -> Settings:
    """A real config file (subprocess workers read it) pointing at the test server."""
    raw = {
        "data_dir": str(tmp_path / "data"),
        "database": {"url": database_url},
        "secret_key": "test-secret-key-0123456789abcdef",
        "site": {"name": "Test Press Office", "postal_address": "1 Test Street, Vilnius"},
        "sender": {"from": "Press Office <press@example.org>", "list_id": "press.example.org"},
        "smtp": {
            "embedded": False,
            "host": "127.0.0.1",
            "port": smtp_port,
            "connections": 4,
            "retry_base": 0.2,
            "retry_max_interval": 0.5,
            **smtp,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_settings(path)


async def seed(
    database: Database, subscribers: int, releases: int = 3, domain: str = "example.net"
) -> list[str]:
    """Confirmed subscribers (all topics) and releases they have not received yet."""
    now = utcnow()
    addresses = [f"reader{i:05d}@{domain}" for i in range(subscribers)]
    async with database.transaction() as session:
        for i in range(releases):
            text = f"Release number {i}. The ministry announced measure {i} today."
            release = Release(
                title=f"Ministry announces measure {i}",
                published_at=now - timedelta(minutes=i),
                first_seen_at=now - timedelta(minutes=i),
                text=text,
                html=f"<p>{text}</p>",
                summary=text,
                content_hash=hashlib.sha256(text.encode()).hexdigest(),
                canonical_url=f"https://ministry.example.org/news/{i}",
            )
            release.links.append(
                ReleaseLink(
                    source_name="Ministry",
                    url=f"https://ministry.example.org/news/{i}",
                    guid=f"guid-{i}",
                )
            )
            session.add(release)
        for address in addresses:
            session.add(
                Subscriber(
                    email=address,
                    email_key=address,
                    name=f"Reader {address[6:11]}",
                    status=SubscriberStatus.CONFIRMED,
                    frequency=Frequency.DAILY,
                    confirmed_at=now - timedelta(days=1),
                    digest_since=now - timedelta(days=1),
                )
            )
    return addresses


async def statuses(database: Database, digest_id: int) -> Counter[str]:
    """How many of a send's outbox rows are in each state."""
    from sqlalchemy import func, select

    from mailer.models import Delivery

    async with database.session() as session:
        rows = await session.execute(
            select(Delivery.status, func.count())
            .where(Delivery.digest_id == digest_id)
            .group_by(Delivery.status)
        )
        return Counter({status.value: n for status, n in rows.all()})


async def deliver_all(database: Database, settings: Settings, timeout: float = 60.0) -> None:
    """Run `--until-empty` workers until no row of a running send is left open,
    waiting out retry schedules in between (as `mailer serve` would)."""
    import asyncio
    import time

    from sqlalchemy import select

    from mailer.models import Delivery, Digest, DigestStatus
    from mailer.send import OPEN_STATES, Worker

    deadline = time.monotonic() + timeout
    while True:
        await Worker(database, settings, poll_interval=0.05).run(until_empty=True)
        async with database.session() as session:
            left = await session.scalar(
                select(Delivery.id)
                .join(Digest, Digest.id == Delivery.digest_id)
                .where(
                    Digest.status == DigestStatus.SENDING, Delivery.status.in_(list(OPEN_STATES))
                )
                .limit(1)
            )
        if left is None:
            return
        assert time.monotonic() < deadline, "deliveries still open after the timeout"
        await asyncio.sleep(0.1)
