"""The send journal: a per-worker append-only file of deliveries the SMTP server accepted.

Why it exists: delivery states are written to the database in batches (one
transaction per few hundred messages, so bookkeeping does not dominate the send).
If a worker is killed between the server's "250 OK" and the next batch commit,
those deliveries would still look in flight and be sent again after a restart.
Each acceptance is therefore appended here first with a plain ``write()``; the
page cache keeps it through a kill -9 of the process. On start, every worker
replays the journals of dead workers on this machine into the database before it
claims anything, so duplicates after a crash are limited to the messages that
were on the wire at that instant.

A live worker holds an exclusive ``flock`` on its journal; a journal whose lock
can be taken belongs to a dead worker.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class JournalEntry:
    delivery_id: int
    sent_at: datetime
    message_id: str


class Journal:
    def __init__(self, folder: Path, worker_id: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{worker_id}.journal"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def record(self, delivery_id: int, message_id: str, sent_at: datetime) -> None:
        line = f"{delivery_id}\t{sent_at.timestamp():.6f}\t{message_id}\n"
        os.write(self._fd, line.encode())

    def clear(self) -> None:
        """Called once everything recorded so far is committed to the database."""
        os.ftruncate(self._fd, 0)

    def close(self, *, remove: bool = True) -> None:
        """Release the journal; keep the file (remove=False) while it still holds
        acceptances the database has not recorded."""
        if self._fd >= 0:
            if remove:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


def read_entries(path: Path) -> list[JournalEntry]:
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        # A torn last line (killed mid-write) is skipped: that message counts as in flight.
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        try:
            sent_at = datetime.fromtimestamp(float(parts[1]), UTC)
        except ValueError:
            continue
        entries.append(JournalEntry(int(parts[0]), sent_at, parts[2]))
    return entries


class OrphanJournal:
    """A dead worker's journal, locked by us while its entries are applied."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.worker_id = path.stem
        self._fd = fd

    def entries(self) -> list[JournalEntry]:
        return read_entries(self.path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self._fd)

    def release(self) -> None:
        os.close(self._fd)


def orphan_journals(folder: Path) -> Iterator[OrphanJournal]:
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.journal")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its worker is alive
            continue
        yield OrphanJournal(path, fd)
