"""The small HTTP/1.1 server under ``--metrics`` and ``--api``: one request per connection,
answered on the event loop (no thread, so the counters need no locking).

Subclasses implement :meth:`LocalHttpServer.respond`; this class reads the request head
and a bounded body, writes the answer (no body for ``HEAD``) and closes. A request that is
malformed, too slow (10 s) or cut off just ends its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import NamedTuple

log = logging.getLogger("anytls.http")

#: Largest request body accepted.
MAX_BODY = 1024 * 1024
#: Seconds a client has for its request.
REQUEST_TIMEOUT = 10.0


class Response(NamedTuple):
    """What :meth:`LocalHttpServer.respond` answers."""

    status: int
    content_type: str
    body: bytes


class LocalHttpServer:
    """Base of the metrics endpoint and the stats API."""

    #: Names the endpoint in the log line of an unexpected error.
    name = "HTTP"

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def start(self, host: str | None, port: int) -> None:
        """Listen on ``host:port``."""
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """The answer to one request (``headers`` with lower-case names)."""
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, _, rest = lines[0].partition(" ")
                target = rest.partition(" ")[0]
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                if not 0 <= length <= MAX_BODY:
                    answer = Response(413, "text/plain", b"request body too large\n")
                else:
                    body = await reader.readexactly(length) if length else b""
                    answer = await self.respond(method, target, headers, body)
                try:
                    reason = HTTPStatus(answer.status).phrase
                except ValueError:
                    reason = "Error"
                writer.write(
                    f"HTTP/1.1 {answer.status} {reason}\r\nContent-Type: {answer.content_type}"
                    f"\r\nContent-Length: {len(answer.body)}\r\nConnection: close\r\n\r\n".encode()
                )
                if method != "HEAD":
                    writer.write(answer.body)
                await writer.drain()
        except (
            OSError,
            TimeoutError,
            ValueError,  # a Content-Length that is no number
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        except Exception:  # pragma: no cover - a bug; keep the server alive
            log.exception("%s request failed", self.name)
        finally:
            writer.close()

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.server.wait_closed()
