"""A wall clock and a monotonic clock that a test moves by hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailer.models import utcnow


@dataclass
class Clock:
    wall: datetime = field(default_factory=utcnow)
    mono: float = 1_000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, delta: timedelta) -> None:
        self.wall += delta
        self.mono += delta.total_seconds()
