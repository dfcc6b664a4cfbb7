"""Start-up cost of the `mailer` command: what `python -X importtime` says a module
costs on top of what `mailer db status` imports anyway, so "keep this import lazy"
rests on a number.

Run by hand: `.venv/bin/python bench/startup.py [--runs 9]`. For each case it prints
the median (and lowest) cumulative import time of the added modules, over fresh
interpreters, then the process CPU time (user+sys) of the whole start, and the load
average. Import times are wall-clock: on a busy machine compare the lowest.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

# What `mailer db status` imports before it opens the database.
BASE = ("mailer.cli", "mailer.cli.commands", "mailer.cli.db")
COMMANDS = ("subscribers", "collect", "digest", "send", "dkim", "admin", "serve")
CASES: dict[str, tuple[str, ...]] = {
    "db status itself": (),
    "every command module (plain imports in cli/commands.py)": tuple(
        f"mailer.cli.{name}" for name in COMMANDS
    ),
    "mailer.templating (jinja2), for cli.when()": ("mailer.templating",),
    "apscheduler.triggers.cron, for config's cron check": ("apscheduler.triggers.cron",),
    "mailer.collect.guard, for config's folder check": ("mailer.collect.guard",),
    "mailer.web.app and uvicorn, for `mailer serve`": ("mailer.web.app", "uvicorn"),
}


def measure(added: tuple[str, ...]) -> tuple[float, float]:
    """(ms importing ``added`` after BASE, ms process CPU) in one fresh interpreter."""
    statement = "; ".join(f"import {name}" for name in (*BASE, *added)) or "pass"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cumulative: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, total, name = line.split("|")
        if not name.startswith("  "):  # imported by the statement itself, not by a module
            cumulative[name.strip()] = int(total)
    names = added or BASE
    spent = sum(cumulative.get(name, 0) for name in names)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return spent / 1000, cpu * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    runs = parser.parse_args().runs
    print(f"load average {os.getloadavg()}, {runs} runs each")
    for name, added in CASES.items():
        results = [measure(added) for _ in range(runs)]
        spent = [r[0] for r in results]
        cpu = [r[1] for r in results]
        print(
            f"{name:58} +{statistics.median(spent):5.0f} ms (lowest {min(spent):4.0f})"
            f"  process CPU {statistics.median(cpu):5.0f} ms"
        )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
