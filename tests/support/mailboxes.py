"""Minimal POP3 and IMAP4 servers on loopback, holding a list of messages.

Only the commands mailer's bounce poller uses are implemented, each answered as
RFC 1939 and RFC 3501 describe, so that the stdlib clients talk to them unchanged.
"""

from __future__ import annotations

import hashlib
import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class Mailbox:
    username: str
    password: str
    messages: list[bytes] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)
    # IMAP folders other than the selected one (CREATE, COPY).
    folders: dict[str, list[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expunge(self) -> None:
        with self.lock:
            self.messages = [m for i, m in enumerate(self.messages, 1) if i not in self.deleted]
            self.deleted.clear()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type, mailbox: Mailbox):
        self.mailbox = mailbox
        super().__init__(("127.0.0.1", 0), handler)


class _Pop3Handler(socketserver.StreamRequestHandler):
    def send(self, line: str | bytes) -> None:
        self.wfile.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def handle(self) -> None:
        box: Mailbox = self.server.mailbox  # type: ignore[attr-defined]
        self.send("+OK test POP3 ready")
        user = None
        authed = False
        while line := self.rfile.readline():
            command, _, argument = line.decode().strip().partition(" ")
            command = command.upper()
            if command == "USER":
                user = argument
                self.send("+OK")
            elif command == "PASS":
                authed = (user, argument) == (box.username, box.password)
                self.send("+OK logged in" if authed else "-ERR invalid login")
            elif not authed and command != "QUIT":
                self.send("-ERR log in first")
            elif command == "STAT":
                size = sum(len(m) for m in box.messages)
                self.send(f"+OK {len(box.messages)} {size}")
            elif command == "RETR":
                message = box.messages[int(argument) - 1]
                self.send(f"+OK {len(message)} octets")
                for raw in message.split(b"\r\n"):
                    self.send(b"." + raw if raw.startswith(b".") else raw)
                self.send(".")
            elif command == "UIDL":
                self.send("+OK")
                for number, message in enumerate(box.messages, 1):
                    unique = hashlib.sha256(message).hexdigest()[:20]
                    self.send(f"{number} {unique}")
                self.send(".")
            elif command == "DELE":
                box.deleted.add(int(argument))
                self.send("+OK deleted")
            elif command == "QUIT":
                if authed:
                    box.expunge()
                self.send("+OK bye")
                return
            else:
                self.send("-ERR unknown command")


class _ImapHandler(socketserver.StreamRequestHandler):
    def send(self, line: str | bytes) -> None:
        self.wfile.write((line.encode() if isinstance(line, str) else line) + b"\r\n")

    def handle(self) -> None:
        box: Mailbox = self.server.mailbox  # type: ignore[attr-defined]
        self.send("* OK [CAPABILITY IMAP4rev1] test IMAP ready")
        seen: set[int] = set()
        while line := self.rfile.readline():
            tag, _, rest = line.decode().strip().partition(" ")
            command, _, argument = rest.partition(" ")
            command = command.upper()
            if command == "CAPABILITY":
                self.send("* CAPABILITY IMAP4rev1")
                self.send(f"{tag} OK CAPABILITY completed")
            elif command == "LOGIN":
                user, password = (part.strip('"') for part in argument.split(" ", 1))
                ok = (user, password) == (box.username, box.password)
                self.send(f"{tag} OK LOGIN completed" if ok else f"{tag} NO invalid login")
            elif command == "SELECT":
                self.send(f"* {len(box.messages)} EXISTS")
                self.send(f"{tag} OK [READ-WRITE] SELECT completed")
            elif command == "SEARCH":
                wanted = [
                    str(i)
                    for i in range(1, len(box.messages) + 1)
                    if argument.upper() == "ALL" or i not in seen
                ]
                self.send("* SEARCH " + " ".join(wanted) if wanted else "* SEARCH")
                self.send(f"{tag} OK SEARCH completed")
            elif command == "FETCH":
                number = int(argument.split(" ", 1)[0])
                message = box.messages[number - 1]
                item = "RFC822"
                if "BODY.PEEK[]" in argument.upper():
                    item = "BODY[]"  # PEEK: does not set \Seen
                else:
                    seen.add(number)
                self.wfile.write(f"* {number} FETCH ({item} {{{len(message)}}}\r\n".encode())
                self.wfile.write(message)
                self.send(")")
                self.send(f"{tag} OK FETCH completed")
            elif command == "STORE":
                number = int(argument.split(" ", 1)[0])
                if "\\Deleted" in argument:
                    box.deleted.add(number)
                self.send(f"* {number} FETCH (FLAGS (\\Deleted))")
                self.send(f"{tag} OK STORE completed")
            elif command == "CREATE":
                name = argument.strip('"')
                if name in box.folders:
                    self.send(f"{tag} NO [ALREADYEXISTS] mailbox exists")
                else:
                    box.folders[name] = []
                    self.send(f"{tag} OK CREATE completed")
            elif command == "COPY":
                number, _, name = argument.partition(" ")
                name = name.strip('"')
                if name not in box.folders:
                    self.send(f"{tag} NO [TRYCREATE] no such mailbox")
                else:
                    box.folders[name].append(box.messages[int(number) - 1])
                    self.send(f"{tag} OK COPY completed")
            elif command == "EXPUNGE":
                box.expunge()
                self.send(f"{tag} OK EXPUNGE completed")
            elif command in ("CLOSE", "NOOP"):
                self.send(f"{tag} OK {command} completed")
            elif command == "LOGOUT":
                self.send("* BYE")
                self.send(f"{tag} OK LOGOUT completed")
                return
            else:
                self.send(f"{tag} BAD unknown command")


class MailboxServer:
    def __init__(self, protocol: str, mailbox: Mailbox):
        handler = _Pop3Handler if protocol == "pop3" else _ImapHandler
        self.mailbox = mailbox
        self._server = _Server(handler, mailbox)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> MailboxServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
