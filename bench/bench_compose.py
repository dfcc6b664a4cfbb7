"""How fast MessageComposer.compose fills in one recipient (run by hand).

    python bench/bench_compose.py [--messages 20000] [--dkim] [--tracking clicks]

Builds a digest of realistic releases whose HTML part is about 30 KB, renders it
once, then composes messages for distinct recipients and reports messages/second.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailer.config import settings_from_mapping
from mailer.dkim import generate_key
from mailer.message import DigestItem, MessageComposer, SourceLink


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=14)
    parser.add_argument("--dkim", action="store_true")
    # clicks: tracked links, the same for every reader; individual: plus each message's
    # signed delivery segment (mailer.engagement).
    parser.add_argument("--tracking", choices=("off", "clicks", "individual"), default="off")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp())
    raw: dict[str, object] = {
        "data_dir": str(folder / "data"),
        "secret_key": "bench-secret-key-0123456789abcdef",
        "site": {"name": "Press Office", "base_url": "https://news.example.org"},
        "sender": {"from": "Press Office <press@example.org>", "list_id": "press.example.org"},
    }
    if args.dkim:
        private_pem, _ = generate_key()
        (folder / "dkim.pem").write_bytes(private_pem)
        raw["dkim"] = {
            "domain": "example.org",
            "selector": "s1",
            "private_key_file": str(folder / "dkim.pem"),
        }
    if args.tracking != "off":
        raw["tracking"] = {
            "clicks": True,
            "opens": True,
            "individual": args.tracking == "individual",
        }
    settings = settings_from_mapping(raw, config_path=folder / "config.yaml", environ={})

    now = datetime.now(UTC)
    summary = " ".join(["The ministry explained the decision and its budget in detail."] * 5)
    items = {
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
        for n in range(1, args.items + 1)
    }
    composer = MessageComposer(settings, items, digest_id=1)
    ids = list(items)
    first = composer.compose(1, 1, "reader1@example.org", "Reader One", ids, link_key="test-key")
    html_size = composer.content(ids).html_bytes
    print(f"message {len(first.data):,} bytes; encoded HTML part {html_size:,} bytes")

    started, cpu_started = time.perf_counter(), time.process_time()
    for n in range(args.messages):
        name = "Ingrida Šimonytė" if n % 4 == 0 else f"Reader {n}"
        composer.compose(n, n + 1, f"reader{n}@example.org", name, ids, link_key="test-key")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(
        f"{args.messages:,} messages in {elapsed:.2f}s: {args.messages / elapsed:,.0f} messages/s, "
        f"{args.messages / cpu:,.0f} per CPU second "
        f"({'with' if args.dkim else 'without'} DKIM, tracking {args.tracking}; "
        f"bodies rendered: {composer.renders})"
    )


if __name__ == "__main__":
    main()
