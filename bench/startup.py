"""Start-up cost of the `mailer` command: what `python -X importtime` says each set
of modules costs, so "keep this import lazy" rests on a number.

Run by hand: `.venv/bin/python bench/startup.py [--runs 7]`. Prints, per case, the
median and the lowest total import time in ms over the runs (self time of every
module the statement imported), the process CPU time (user+sys) and the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

BASE = "import mailer.cli, mailer.cli.commands"
CASES = {
    # What `mailer db status` imports before it opens the database.
    "db status": f"{BASE}, mailer.cli.db",
    # Every command module, as plain imports would load them at each start.
    "all commands": f"{BASE}, "
    + ", ".join(
        f"mailer.cli.{m}"
        for m in ("db", "subscribers", "collect", "digest", "send", "dkim", "admin", "serve")
    ),
    "subscribers commands": f"{BASE}, mailer.cli.subscribers",
    "subscribers + the mail modules": f"{BASE}, mailer.cli.subscribers, mailer.message",
    "db status + mailer.templating": f"{BASE}, mailer.cli.db, mailer.templating",
    "db status + apscheduler cron": f"{BASE}, mailer.cli.db, apscheduler.triggers.cron",
    "db status + mailer.collect.guard": f"{BASE}, mailer.cli.db, mailer.collect.guard",
    "db status + web app, uvicorn": f"{BASE}, mailer.cli.db, mailer.web.app, uvicorn",
}


def measure(statement: str) -> tuple[float, float]:
    """(import ms, process CPU ms) of one fresh interpreter running ``statement``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_us = 0
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and parts[0].split(":")[1].strip().isdigit():
            self_us += int(parts[0].split(":")[1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return self_us / 1000, cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    print(f"load average {os.getloadavg()}, {runs} runs each")
    for name, statement in CASES.items():
        results = [measure(statement) for _ in range(runs)]
        imports = [r[0] for r in results]
        cpu = [r[1] for r in results]
        print(
            f"{name:34} import {statistics.median(imports):7.0f} ms (min {min(imports):5.0f})"
            f"  process CPU {statistics.median(cpu):6.0f} ms (min {min(cpu):5.0f})"
        )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
