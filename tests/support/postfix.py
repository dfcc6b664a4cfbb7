"""A real Postfix on loopback for the bounce-loop tests, in a private directory.

``postfix -c DIR start`` runs a complete instance from its own configuration
directory: its own queue, data directory and log file, SMTP listeners on two free
loopback ports, and nothing of the system's /etc/postfix but the program files.
Mail for ``news.test`` is delivered by local(8) through aliases straight into
Maildirs under the temporary directory: ``press@`` (the people's mailbox) and
``bounces@`` (mailer's), and one reader's. Every other destination goes to ``default_transport =
error``, which accepts the message and then returns a DSN, as a remote server that
refuses a recipient after accepting the message would. The second listener trusts
no client, so it answers RCPT with ``554 5.7.1 Relay access denied``.

The main.cf is the one docs/production.md ships, with this instance's own paths,
names and test routing put in place of the same settings, so the documented
settings run here as an operator pastes them.

Postfix needs root to start (master binds its sockets, then the daemons drop to the
``postfix`` user), so these tests skip without root outside CI.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DOMAIN = "news.test"
NOBODY = 65534

MASTER_CF = """\
127.0.0.1:{trusted} inet n - n - - smtpd
127.0.0.1:{untrusted} inet n - n - - smtpd -o mynetworks=192.0.2.1/32
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The instance's own settings; they replace the same names in the main.cf that
# docs/production.md ships, which provides the rest (see documented_main_cf).
HARNESS_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{domain}
mydomain = {domain}
myorigin = {domain}
mydestination = {domain}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps = inline:{{ press={root}/mail/press/, bounces={root}/mail/bounces/,
    reader00000={root}/mail/reader/ }}
alias_database =
default_transport = error:5.1.1 mailbox unavailable
smtpd_reject_unlisted_recipient = no
smtputf8_enable = no
biff = no
"""

DOCS = Path(__file__).resolve().parents[2] / "docs" / "production.md"


def documented_block(target: str) -> str:
    """The fenced block of docs/production.md whose info string names ``target``
    (```` ```conf /etc/postfix/main.cf ````)."""
    pattern = re.compile(r"^```\w+ " + re.escape(target) + r"\n(.*?)^```$", re.S | re.M)
    found = pattern.findall(DOCS.read_text(encoding="utf-8"))
    assert len(found) == 1, f"docs/production.md has {len(found)} blocks for {target}"
    return str(found[0])


def parse_main_cf(text: str) -> dict[str, str]:
    """main.cf as Postfix reads it: name = value, indented lines continue a value."""
    settings: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and name is not None:
            settings[name] += " " + line.strip()
            continue
        name, _, value = line.partition("=")
        name = name.strip()
        settings[name] = value.strip()
    return settings


def documented_main_cf() -> dict[str, str]:
    return parse_main_cf(documented_block("/etc/postfix/main.cf"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postfix_available() -> str | None:
    """Why a private Postfix cannot run here, or None when it can."""
    if shutil.which("postfix") is None:
        return "Postfix is not installed (apt-get install postfix)"
    if os.geteuid() != 0:
        return "starting Postfix needs root"
    return None


class PostfixServer:
    def __init__(self) -> None:
        # Not under pytest's tmp_path: its 0700 parents keep the postfix user out.
        self.root = Path(tempfile.mkdtemp(prefix="mailer-postfix-"))
        self.root.chmod(0o755)
        self.config = self.root / "etc"
        self.trusted_port = _free_port()
        self.untrusted_port = _free_port()

    @property
    def press_maildir(self) -> Path:
        return self.root / "mail" / "press"

    @property
    def bounce_maildir(self) -> Path:
        return self.root / "mail" / "bounces"

    @property
    def reader_maildir(self) -> Path:
        """reader00000@news.test: a reader whose mail arrives (the others bounce)."""
        return self.root / "mail" / "reader"

    def empty_maildirs(self) -> None:
        for maildir in (self.root / "mail").iterdir():
            shutil.rmtree(maildir)

    def start(self) -> PostfixServer:
        for name in ("etc", "spool", "data", "mail"):
            (self.root / name).mkdir()
        # local(8) writes alias-file deliveries as nobody (default_privs).
        os.chown(self.root / "data", _postfix_uid(), -1)
        os.chown(self.root / "mail", NOBODY, NOBODY)
        settings = {
            **documented_main_cf(),
            **parse_main_cf(HARNESS_MAIN_CF.format(root=self.root, domain=DOMAIN)),
        }
        (self.config / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        (self.config / "master.cf").write_text(
            MASTER_CF.format(trusted=self.trusted_port, untrusted=self.untrusted_port)
        )
        self._postfix("start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.trusted_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix did not start:\n{self.log()}")

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            ["postfix", "-c", str(self.config), command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {command} failed:\n{done.stderr}\n{self.log()}")

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.config), "-f"], check=False, timeout=30)

    def wait_for_mail(self, maildir: Path, count: int, timeout: float = 30) -> list[Path]:
        """Wait until ``maildir`` holds ``count`` new messages; return their files."""
        deadline = time.monotonic() + timeout
        while True:
            found = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} of {count} messages reached {maildir}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _postfix_uid() -> int:
    import pwd

    return pwd.getpwnam("postfix").pw_uid
