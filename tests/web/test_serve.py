"""`mailer serve` as a new user runs it: the shipped config.yaml on a fresh folder,
a signup over HTTP, the confirmation filed by the embedded catcher, and a clean
stop on SIGTERM."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from mailer.config import served_base_url

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(condition, what: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            pytest.fail(f"mailer serve exited early ({process.returncode}): {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_serve_with_shipped_config_signs_up_and_stops_cleanly(
    tmp_path: Path, stop: signal.Signals
) -> None:
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "examples" / "releases").mkdir(parents=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # No base_url of its own: the shipped one (127.0.0.1:8000) follows --port.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", "config.yaml", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answering() -> bool:
            try:
                return httpx.get(base + "/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(answering, "the signup page", process)
        with httpx.Client(base_url=base, timeout=10) as browser:
            form = browser.get("/")
            assert "Press releases" in form.text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
            done = browser.post(
                "/",
                data={"csrf_token": token, "email": "reader@example.org", "consent": "yes"},
            )
            assert done.status_code == 200 and "Check your inbox" in done.text

        mail_dir = tmp_path / "data" / "mail"
        _wait(lambda: any(mail_dir.glob("*.eml")), "the confirmation in data/mail", process)
        [filed] = list(mail_dir.glob("*.eml"))
        message = email.message_from_bytes(filed.read_bytes(), policy=email.policy.default)
        text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f"{base}/confirm/" in text
    finally:
        process.send_signal(stop)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"mailer serve did not stop on {stop.name}: {err}")
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert "Application shutdown complete" in err


def test_serve_on_a_chosen_port_refuses_port_zero_with_a_loopback_base_url(
    tmp_path: Path,
) -> None:
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    done = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", "config.yaml", "serve", "--port", "0"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "choose one with --port" in done.stderr


@pytest.mark.parametrize(
    ("base_url", "host", "port", "expected"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1", 8765, "http://127.0.0.1:8765"),
        ("http://localhost:8000", "127.0.0.1", 8765, "http://127.0.0.1:8765"),
        ("http://127.0.0.1:8000", "::1", 8000, "http://[::1]:8000"),
        ("http://127.0.0.1:8000", "0.0.0.0", 9000, "http://127.0.0.1:9000"),
        ("http://127.0.0.1:8000", "127.0.0.1", 8000, None),
        ("https://news.example.org", "127.0.0.1", 8765, None),
        ("http://127.0.0.1:8000/press", "127.0.0.1", 8765, None),
    ],
)
def test_a_loopback_base_url_follows_the_served_address(
    base_url: str, host: str, port: int, expected: str | None
) -> None:
    assert served_base_url(base_url, host, port) == expected
