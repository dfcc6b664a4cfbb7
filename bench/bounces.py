"""Time one poll of a bounce Maildir holding N genuine DSNs and N replies (SQLite).

Run from the repository: .venv/bin/python bench/bounces.py 1000
"""

import asyncio
import logging
import mailbox
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlalchemy import select

from mailer.bounces import poll_mailboxes
from mailer.context import AppContext
from mailer.message import verp_address
from mailer.models import Delivery
from mailer.send import start_digest
from tests.conftest import make_settings
from tests.send.conftest import seed
from tests.send.test_bounces import dsn

logging.disable(logging.INFO)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    settings = make_settings(tmp, f"sqlite:///{tmp}/m.db", bounces={"maildir": str(tmp / "box")})
    async with AppContext(settings=settings).database() as database:
        await seed(database, N)
        await start_digest(database, settings)
        async with database.session() as session:
            rows = (await session.execute(select(Delivery.id, Delivery.email))).all()
        box = mailbox.Maildir(tmp / "box", create=True)
        for delivery_id, address in rows:
            box.add(dsn(address, "5.1.1", to=verp_address(settings, delivery_id)))
            box.add(f"From: {address}\r\nSubject: Re: news\r\n\r\nThanks!\r\n".encode())
        start = time.perf_counter()
        read = await poll_mailboxes(database, settings)
        took = time.perf_counter() - start
        print(
            f"{read} messages ({N} DSNs, {N} replies) in {took:.1f} s: {read / took:.0f} messages/s"
        )


asyncio.run(main())
