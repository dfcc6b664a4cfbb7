"""What every shell (CLI, web, scheduler) starts from: settings and an open database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cached_property
from pathlib import Path

from mailer.catalog import sync_catalog
from mailer.config import Settings, load_settings
from mailer.db import Database
from mailer.migrate import ensure_schema


class AppContext:
    def __init__(self, config_path: str | Path | None = None, settings: Settings | None = None):
        self._config_path = config_path
        # The file is read once per process, so its topics and sources are brought
        # into the database once: at the first open (see mailer.catalog).
        self._catalog_synced = False
        if settings is not None:
            self.__dict__["settings"] = settings

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self._config_path)

    def make_database(self) -> Database:
        return Database(self.settings.database.url, base_dir=self.settings.base_dir)

    @asynccontextmanager
    async def database(self, *, prepare: bool = True) -> AsyncIterator[Database]:
        """An open database whose schema is current and whose topics and sources
        match the configuration (see mailer.migrate for the out-of-date policy).
        ``prepare=False`` opens it as it is (``mailer db``)."""
        database = self.make_database()
        try:
            if prepare:
                await ensure_schema(database)
                if not self._catalog_synced:
                    await sync_catalog(database, self.settings)
                    self._catalog_synced = True
            yield database
        finally:
            await database.dispose()
