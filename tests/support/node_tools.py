"""The npm tools some tests drive (axe-core, caniemail, html-validate).

`.ci/run` installs them, pinned by .ci/node/package.json and its lock file, into
.ci/node/node_modules (not committed). Locally a test that needs one is skipped
with the command that installs it; under CI=true it fails instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

NODE_DIR = Path(__file__).resolve().parents[2] / ".ci" / "node"
NODE_MODULES = NODE_DIR / "node_modules"
INSTALL_HINT = "npm ci --prefix .ci/node"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI (.ci/run runs `{INSTALL_HINT}`)")
    pytest.skip(f"{what} is not installed; run `{INSTALL_HINT}`")


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        _missing("node (Node.js 20 or later)")
    assert node is not None
    return node


def node_package(name: str) -> Path:
    """The installed package's folder, checked against the pinned version."""
    folder = NODE_MODULES / name
    manifest = folder / "package.json"
    if not manifest.exists():
        _missing(f"the npm package {name}")
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"][name]
    installed = json.loads(manifest.read_text())["version"]
    if installed != wanted:
        _missing(f"{name} {wanted} (found {installed})")
    return folder


def run_node_script(script: Path, payload: Any, timeout: float = 120) -> Any:
    """Run ``script`` with node, JSON in on stdin and JSON out on stdout."""
    done = subprocess.run(
        [node_binary(), str(script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=NODE_DIR,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"{script.name} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)
