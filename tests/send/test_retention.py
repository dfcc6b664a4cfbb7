"""retention.deliveries: finished sends lose their per-recipient rows, not their counts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from mailer import archive
from mailer.archive import digest_view
from mailer.config import Settings
from mailer.db import Database
from mailer.models import Delivery, DeliveryStatus, Digest, DigestStatus, utcnow
from mailer.retention import prune_deliveries
from mailer.send import digest_progress, start_digest
from mailer.send.progress import finish_completed
from tests.send.conftest import seed


async def test_pruning_keeps_the_counts_of_a_finished_send(
    database: Database, settings: Settings
) -> None:
    await seed(database, 5)
    digest = await start_digest(database, settings)
    async with database.transaction() as session:
        ids = list(await session.scalars(select(Delivery.id).order_by(Delivery.id)))
        await session.execute(
            update(Delivery).where(Delivery.id.in_(ids[:3])).values(status=DeliveryStatus.SENT)
        )
        await session.execute(
            update(Delivery).where(Delivery.id == ids[3]).values(status=DeliveryStatus.FAILED)
        )
        await session.execute(
            update(Delivery)
            .where(Delivery.id == ids[4])
            .values(status=DeliveryStatus.SENT, bounced=True)
        )
        await finish_completed(session)
    async with database.session() as session:
        before = await digest_progress(session, digest.id)
    web_before = await digest_view(database, digest.public_id, now=utcnow())
    assert before.status == "done"
    assert (before.counts, before.bounced) == ({"sent": 4, "failed": 1}, 1)

    # Still within the retention period: nothing goes.
    assert (await prune_deliveries(database, settings)).sends == 0
    later = utcnow() + settings.retention.deliveries + timedelta(days=1)
    pruned = await prune_deliveries(database, settings, now=later)
    assert (pruned.sends, pruned.deliveries) == (1, 5)

    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Delivery)) == 0
        after = await digest_progress(session, digest.id)
        stored = await session.get(Digest, digest.id)
    archive._FINISHED_DIGESTS.clear()  # as after a restart: read from the database
    web_after = await digest_view(database, digest.public_id, now=utcnow())
    # The send's web version still shows what it carried.
    assert [r.id for r in web_after.releases] == [r.id for r in web_before.releases] != []
    assert (after.counts, after.bounced, after.recipients) == (
        before.counts,
        before.bounced,
        before.recipients,
    )
    assert after.done == 5
    assert stored is not None and stored.status is DigestStatus.DONE
    # Pruned once: a second run finds nothing more to do.
    assert (await prune_deliveries(database, settings, now=later)).sends == 0


async def test_a_running_send_is_never_pruned(database: Database, settings: Settings) -> None:
    await seed(database, 2)
    await start_digest(database, settings)
    far = utcnow() + timedelta(days=3650)
    assert (await prune_deliveries(database, settings, now=far)).sends == 0
    async with database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Delivery)) == 2
