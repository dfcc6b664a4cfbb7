"""The app under a real uvicorn on a loopback port, and headless Chromium, for the
browser tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from mailer import accounts
from mailer import subscribers as store
from mailer.config import Settings
from mailer.context import AppContext
from mailer.models import utcnow
from mailer.releases import add_release

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@contextmanager
def serving(app: Any, port: int, stop_timeout: float = 20) -> Iterator[None]:
    """Run ``app`` on 127.0.0.1:``port`` in a thread until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the app did not start under uvicorn")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout)


def launch_chromium(playwright: Any, chromium_path: Path) -> Any:
    return playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)


async def seed_admin_site(
    settings: Settings,
    *,
    admin_password: str,
    reader: str,
    reader_name: str,
    title: str,
    body: str,
    url: str | None = None,
) -> None:
    """An admin "alice", one confirmed reader and one release."""
    async with AppContext(settings=settings).database() as database:
        await accounts.create_user(database, "alice", admin_password, "admin")
        await store.add(
            database,
            settings,
            reader,
            name=reader_name,
            confirmed=True,
            now=utcnow() - timedelta(hours=1),
        )
        await add_release(database, settings, title=title, body=body, url=url, added_by="test")
