"""PostgreSQL keeps sent deliveries in their own partition (migration 0015), so a
worker recording "sent" moves the row. A reader who unsubscribes, an operator who
cancels a send or erases a reader at that very moment must neither fail nor undo
the message that went out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text

from mailer.db import Database
from mailer.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from mailer.send import Worker, set_digest_state, start_digest
from mailer.subscribers.optin import unsubscribe
from mailer.subscribers.privacy import erase
from tests.conftest import make_settings
from tests.send.conftest import seed


async def _race(
    url: str, tmp_path: Path, action: Callable[[Database, int, int], Awaitable[object]]
) -> tuple[dict[int, DeliveryStatus], int, int]:
    database = Database(url)
    settings = make_settings(tmp_path, url)
    try:
        await seed(database, subscribers=2)
        digest = await start_digest(database, settings)
        claimed = await Worker(database, settings).claim(10)
        first = claimed[0]
        assert first.subscriber_id is not None
        # A worker's result transaction has moved the first row to the sent partition
        # and not committed yet; the action runs meanwhile and waits for its lock.
        async with database.write_engine.connect() as worker:
            await worker.execute(
                text("UPDATE deliveries SET status = 'sent', sent_at = now() WHERE id = :id"),
                {"id": first.id},
            )
            acting = asyncio.create_task(action(database, digest.id, first.subscriber_id))
            await asyncio.sleep(0.5)
            assert not acting.done(), "the action should wait for the worker's lock"
            await worker.commit()
        await asyncio.wait_for(acting, 10)
        async with database.session() as session:
            rows = (await session.execute(select(Delivery.id, Delivery.status))).all()
        return dict(rows), first.id, first.subscriber_id
    finally:
        await database.dispose()


@pytest.mark.parametrize("action", ["unsubscribe", "cancel", "erase"])
async def test_an_action_racing_a_recorded_result_leaves_the_message_sent(
    postgres_database_url: str, tmp_path: Path, action: str
) -> None:
    settings = make_settings(tmp_path, postgres_database_url)

    async def act(database: Database, digest_id: int, subscriber_id: int) -> object:
        if action == "unsubscribe":
            return await unsubscribe(database, settings, subscriber_id)
        if action == "cancel":
            return await set_digest_state(database, digest_id, "cancel")
        return await erase(database, settings, subscriber_id)

    statuses, sent_id, subscriber_id = await _race(postgres_database_url, tmp_path, act)
    assert statuses[sent_id] == DeliveryStatus.SENT
    others = [status for delivery_id, status in statuses.items() if delivery_id != sent_id]
    if action == "cancel":
        assert others == [DeliveryStatus.CANCELLED]
    else:
        assert others == [DeliveryStatus.PENDING]
    database = Database(postgres_database_url)
    try:
        async with database.session() as session:
            subscriber = await session.get(Subscriber, subscriber_id)
            placed = await session.execute(text("SELECT id, tableoid::regclass FROM deliveries"))
            partitions = {delivery_id: str(table) for delivery_id, table in placed}
    finally:
        await database.dispose()
    assert partitions[sent_id] == "deliveries_sent"
    if action == "unsubscribe":
        assert subscriber is not None and subscriber.status == SubscriberStatus.UNSUBSCRIBED
    if action == "erase":
        assert subscriber is None or subscriber.status != SubscriberStatus.CONFIRMED
