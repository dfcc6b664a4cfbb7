"""Per-domain connection slots: counted across every holder on the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mailer.destinations import DomainQueues, DomainSlots


def test_slots_are_shared_by_every_holder_and_freed_on_release(tmp_path: Path) -> None:
    # Two DomainSlots stand for two processes: flock conflicts between open files
    # even within one process.
    first, second = DomainSlots(tmp_path, 2), DomainSlots(tmp_path, 2)
    a = first.try_acquire("gmail.com")
    b = second.try_acquire("gmail.com")
    assert a is not None and b is not None
    assert first.try_acquire("gmail.com") is None
    assert second.try_acquire("outlook.com") is not None  # other domains are separate
    b.release()
    assert first.try_acquire("gmail.com") is not None


def test_a_dead_process_leaves_no_slot_behind(tmp_path: Path) -> None:
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from mailer.destinations import DomainSlots;"
            f"slot = DomainSlots(Path({str(tmp_path)!r}), 1).try_acquire('yahoo.com');"
            "sys.exit(0 if slot else 1)",
        ],
        check=True,
    )
    assert holder.returncode == 0
    assert DomainSlots(tmp_path, 1).try_acquire("yahoo.com") is not None


def test_unusual_domains_get_safe_file_names(tmp_path: Path) -> None:
    slots = DomainSlots(tmp_path, 1)
    for domain in ("[192.0.2.1]", "bücher.example", "../../etc", "a" * 300):
        assert slots.try_acquire(domain) is not None
    assert {p.parent for p in tmp_path.rglob("*")} == {tmp_path}


def test_queues_serve_domains_in_arrival_order_and_hand_back(tmp_path: Path) -> None:
    queues: DomainQueues[int] = DomainQueues()
    for i, domain in enumerate(["b.example", "a.example", "b.example"]):
        queues.put(domain, i)
    assert queues.domains() == ["b.example", "a.example"]
    assert queues.pop("b.example") == 0 and len(queues) == 2
    assert queues.take_all("b.example") == [2]
    assert queues.take_all() == [1] and len(queues) == 0
