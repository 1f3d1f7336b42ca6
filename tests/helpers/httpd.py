"""A tiny threaded HTTP/1.1 origin server for proxy tests (curl, HTTP CONNECT, ...).

    with http_server() as srv:          # srv is a (host, port) tuple with extras
        url = f"http://localhost:{srv.port}/bytes/1048576"

Routes (GET and HEAD):

* ``/bytes/<n>``  → ``pattern(n)`` (deterministic bytes, see :mod:`tests.helpers.echo`)
* ``/hello``      → ``b"hello anytls\\n"``
* anything else   → 404

``srv.requests`` records ``(method, path, Host header)`` per request. Runs in a daemon
thread; shut down and joined on exit.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .echo import pattern

__all__ = ["HTTPServerAddr", "http_server"]

HELLO = b"hello anytls\n"


class HTTPServerAddr(tuple[str, int]):
    host: str
    port: int
    requests: list[tuple[str, str, str | None]]

    def __new__(cls, host: str, port: int, requests: list[tuple[str, str, str | None]]) -> Any:
        self = super().__new__(cls, (host, port))
        self.host = host
        self.port = port
        self.requests = requests
        return self


def _make_handler(requests: list[tuple[str, str, str | None]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # silence stderr
            pass

        def _body(self) -> bytes | None:
            path = self.path
            if "://" in path:  # absolute-form (proxy style) request target
                path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
            if path == "/hello":
                return HELLO
            if path.startswith("/bytes/"):
                try:
                    return pattern(int(path[len("/bytes/") :]))
                except ValueError:
                    return None
            return None

        def _respond(self, send_body: bool) -> None:
            requests.append((self.command, self.path, self.headers.get("Host")))
            body = self._body()
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._respond(True)

        def do_HEAD(self) -> None:
            self._respond(False)

    return Handler


@contextlib.contextmanager
def http_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[HTTPServerAddr]:
    requests: list[tuple[str, str, str | None]] = []
    server_cls = ThreadingHTTPServer
    if ":" in host:

        class _V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_cls = _V6
    server = server_cls((host, port), _make_handler(requests))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield HTTPServerAddr(host, int(server.server_address[1]), requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
