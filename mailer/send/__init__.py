"""The outbox: start a send, then workers deliver it. A visible pipeline:

    start_digest ─ plan: one Delivery row per recipient, in one transaction
    Worker
      claim     ─ a batch of due rows, named in one delivery_claims row; the rows
                  keep their status until their result (one claim at a time: an
                  advisory lock on PostgreSQL, an IMMEDIATE transaction on SQLite)
      compose   ─ MessageComposer renders each distinct content once
      send      ─ one task per SMTP connection, each carrying one recipient domain's
                  messages at a time under a per-domain slot (destinations.py);
                  rate limit per process
      journal   ─ each accepted message is appended to the worker's journal at once
      record    ─ states are written back in batches (sent, deferred, failed)

Nothing is marked sent before the server accepted it. Rows a dead worker had
claimed are recovered on start: its journal's entries become "sent" and its claims
are deleted, so the rest are due again (see journal.py). Workers on other machines
are covered by a claim lease.

The package is split along its seams: ``control`` (starting, scheduling, pausing and
cancelling a send), ``progress`` (how far a send has got, finishing it) and
``worker`` (the delivery worker and crash recovery). Callers import from
``mailer.send``.
"""

from __future__ import annotations

from mailer.send.control import (
    DigestTest,
    NoSuchSend,
    Requester,
    SendError,
    SendTimeRefused,
    audience,
    count_recipients,
    schedule_digest,
    send_test_digest,
    set_digest_state,
    start_digest,
    start_due_digests,
    start_queued_digest,
)
from mailer.send.progress import (
    OPEN_STATES,
    Backlog,
    DigestProgress,
    backlog_left,
    digest_progress,
    failure_reasons,
    finish_completed,
    outbox_backlog,
    recent_sends,
    send_progress,
    send_rate,
    sends_progress,
)
from mailer.send.worker import (
    CLAIM_LEASE,
    DOMAIN_HANDBACK,
    DROPS_FOR_OUTAGE,
    OUTAGE_BACKOFF,
    POLICY_REFUSALS_BEFORE_PAUSE,
    RECORD_EVERY_COUNT,
    RECORD_EVERY_SECONDS,
    SESSION_IDLE_HOLD,
    SLOT_POLL,
    Claimed,
    Recorded,
    Worker,
    WorkerStats,
    journal_dir,
    new_worker_id,
    recover,
)

__all__ = [
    "CLAIM_LEASE",
    "DOMAIN_HANDBACK",
    "DROPS_FOR_OUTAGE",
    "OPEN_STATES",
    "OUTAGE_BACKOFF",
    "POLICY_REFUSALS_BEFORE_PAUSE",
    "RECORD_EVERY_COUNT",
    "RECORD_EVERY_SECONDS",
    "SESSION_IDLE_HOLD",
    "SLOT_POLL",
    "Backlog",
    "Claimed",
    "DigestProgress",
    "DigestTest",
    "NoSuchSend",
    "Recorded",
    "Requester",
    "SendError",
    "SendTimeRefused",
    "Worker",
    "WorkerStats",
    "audience",
    "backlog_left",
    "count_recipients",
    "digest_progress",
    "failure_reasons",
    "finish_completed",
    "journal_dir",
    "new_worker_id",
    "outbox_backlog",
    "recent_sends",
    "recover",
    "schedule_digest",
    "send_progress",
    "send_rate",
    "send_test_digest",
    "sends_progress",
    "set_digest_state",
    "start_digest",
    "start_due_digests",
    "start_queued_digest",
]
