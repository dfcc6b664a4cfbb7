"""A local HTTP server for collector tests: fixture feeds and pages plus hostile
behaviours (slow, endless, redirect loops, flaky, gone), on a free loopback port."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
# Hostile handlers stop by themselves after this long even if the client stays.
HOSTILE_LIMIT_SECONDS = 10


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Route = Callable[["Handler"], Reply | None]


@dataclass
class Request:
    path: str
    headers: dict[str, str]


class Handler(BaseHTTPRequestHandler):
    server: LocalServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # silence stderr
        return

    def do_GET(self) -> None:
        self.server.record(Request(self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = self.server.routes.get(self.path.split("?", 1)[0])
        reply = route(self) if route else Reply(404, b"not found")
        if reply is None:  # the route wrote the response itself
            return
        self.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if reply.body:
            try:
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client gave up (size limit, timeout): that is the test


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base + path

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def hits(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    # --- route helpers -------------------------------------------------------------

    def serve(
        self, path: str, body: bytes | str, content_type: str = "application/rss+xml"
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = lambda _h: Reply(200, data, {"Content-Type": content_type})

    def serve_fixture(self, path: str, name: str, content_type: str) -> None:
        self.serve(path, (FIXTURES / name).read_bytes(), content_type)

    def serve_conditional(
        self, path: str, body: bytes | str, content_type: str = "application/rss+xml"
    ) -> None:
        """Answers 304 to a request that carries the current ETag or date."""
        data = body.encode() if isinstance(body, str) else body
        etag = '"v1"'
        modified = email.utils.formatdate(1_700_000_000, usegmt=True)

        def route(handler: Handler) -> Reply:
            if handler.headers.get("If-None-Match") == etag or (
                handler.headers.get("If-Modified-Since") == modified
            ):
                return Reply(304, b"", {"ETag": etag})
            return Reply(
                200, data, {"Content-Type": content_type, "ETag": etag, "Last-Modified": modified}
            )

        self.routes[path] = route

    def serve_sequence(self, path: str, replies: list[Reply]) -> None:
        """Each request gets the next reply; the last one repeats."""
        remaining = list(replies)

        def route(_handler: Handler) -> Reply:
            return remaining.pop(0) if len(remaining) > 1 else remaining[0]

        self.routes[path] = route

    def serve_slow(self, path: str, delay: float, body: bytes = b"<rss/>") -> None:
        def route(_handler: Handler) -> Reply:
            time.sleep(delay)
            return Reply(200, body, {"Content-Type": "application/rss+xml"})

        self.routes[path] = route

    def serve_endless(self, path: str, chunk: bytes = b"<item>" + b"x" * 8186 + b"</item>") -> None:
        """A response that never ends (chunked), until the client hangs up."""

        def route(handler: Handler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/rss+xml")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            deadline = time.monotonic() + HOSTILE_LIMIT_SECONDS
            try:
                handler.wfile.write(b"%x\r\n<rss><channel>\r\n" % len(b"<rss><channel>"))
                while time.monotonic() < deadline:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                return
            handler.close_connection = True

        self.routes[path] = route

    def serve_trickle(self, path: str, interval: float) -> None:
        """One byte at a time, each well within any read timeout, never finishing."""

        def route(handler: Handler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/rss+xml")
            handler.send_header("Content-Length", "1000000")
            handler.end_headers()
            deadline = time.monotonic() + HOSTILE_LIMIT_SECONDS
            try:
                while time.monotonic() < deadline:
                    handler.wfile.write(b" ")
                    handler.wfile.flush()
                    time.sleep(interval)
            except (BrokenPipeError, ConnectionResetError):
                return
            handler.close_connection = True

        self.routes[path] = route

    def redirect(self, path: str, target: str) -> None:
        self.routes[path] = lambda _h: Reply(302, b"", {"Location": target})
