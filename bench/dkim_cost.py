"""What DKIM signing adds to composing one digest message, in one process (run by hand).

    python bench/dkim_cost.py [--messages 3000] [--items 25] [--rounds 3]

Composes the same digest for distinct readers without a signer and with an
RSA-2048 one, alternating, and times beside them, in the same process and at the
same moment, the physical price of a signature: one bare RSA-2048 signature and
one SHA-256 over a message. CPU time (process), not wall-clock time, so that a
shared machine's load weighs less. Numbers go into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailer.config import settings_from_mapping  # noqa: E402
from mailer.dkim import generate_key  # noqa: E402
from mailer.message import DigestItem, MessageComposer, SourceLink  # noqa: E402


def composer(folder: Path, items: int) -> MessageComposer:
    private_pem, _ = generate_key()
    (folder / "dkim.pem").write_bytes(private_pem)
    settings = settings_from_mapping(
        {
            "data_dir": str(folder / "data"),
            "secret_key": "bench-secret-key-0123456789abcdef",
            "site": {"name": "Press Office", "base_url": "https://news.example.org"},
            "sender": {"from": "Press Office <press@example.org>", "list_id": "press.example.org"},
            "dkim": {
                "domain": "example.org",
                "selector": "s1",
                "private_key_file": str(folder / "dkim.pem"),
            },
        },
        config_path=folder / "config.yaml",
        environ={},
    )
    now = datetime.now(UTC)
    summary = " ".join(["The ministry explained the decision and its budget in detail."] * 5)
    releases = {
        n: DigestItem(
            id=n,
            title=f"Šimonytė and Žygimantas present measure number {n}",
            url=f"https://gov.example.lt/r/{n}",
            published_at=now - timedelta(hours=n),
            published_estimated=False,
            summary=summary,
            image_url=f"https://gov.example.lt/img/{n}.jpg" if n % 3 == 0 else None,
            image_alt="The minister at the podium",
            photo_credit="Jonas Petraitis",
            publisher="Ministry of Finance",
            sources=(SourceLink("Government", f"https://gov.example.lt/r/{n}"),),
        )
        for n in range(1, items + 1)
    }
    built = MessageComposer(settings, releases)
    return built


def compose_cpu(built: MessageComposer, ids: list[int], messages: int, start: int) -> float:
    """CPU seconds a message, composing for ``messages`` distinct readers."""
    started = time.process_time()
    for n in range(start, start + messages):
        name = "Ingrida Šimonytė" if n % 4 == 0 else f"Reader {n}"
        built.compose(n, n + 1, f"reader{n}@example.org", name, ids, link_key="link-key-0123")
    return (time.process_time() - started) / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--items", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailer-dkim-") as folder:
        built = composer(Path(folder), args.items)
        signer = built.signer
        assert signer is not None
        ids = list(range(1, args.items + 1))
        size = len(built.compose(0, 1, "r@example.org", "R", ids, link_key="k").data)
        key = signer.keys[0]
        body = os.urandom(size)
        results: dict[str, list[float]] = {"unsigned": [], "signed": [], "rsa": [], "sha": []}
        for round_number in range(args.rounds):
            start = round_number * args.messages
            built.signer = None
            results["unsigned"].append(compose_cpu(built, ids, args.messages, start))
            built.signer = signer
            results["signed"].append(compose_cpu(built, ids, args.messages, start))
            started = time.process_time()
            for _ in range(args.messages):
                key.sign(body[:1200])
            results["rsa"].append((time.process_time() - started) / args.messages)
            started = time.process_time()
            for _ in range(args.messages):
                hashlib.sha256(body).digest()
            results["sha"].append((time.process_time() - started) / args.messages)
        ms = {label: statistics.median(values) * 1000 for label, values in results.items()}
        added = ms["signed"] - ms["unsigned"]
        print(
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.items} releases, "
            f"{size:,} bytes a message, {args.messages} messages x {args.rounds} rounds"
        )
        print(
            f"compose: unsigned {ms['unsigned']:.3f} ms, signed {ms['signed']:.3f} ms of CPU "
            f"a message; signing adds {added:.3f} ms"
        )
        print(
            f"physical price: one RSA-2048 signature {ms['rsa']:.3f} ms + SHA-256 of the "
            f"message {ms['sha']:.3f} ms = {ms['rsa'] + ms['sha']:.3f} ms; "
            f"signing costs {added - ms['rsa'] - ms['sha']:.3f} ms beyond it"
        )


if __name__ == "__main__":
    main()
