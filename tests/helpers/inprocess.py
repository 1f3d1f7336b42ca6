"""Our client behind a mixed inbound, in the test's own process, and a stand-in socket.

    server = await serve(ServerConfig(users={"u": PASSWORD}), "127.0.0.1", 0)
    async with mixed_proxy(server, PASSWORD) as (client, port):
        ...  # SOCKS5/HTTP proxy on 127.0.0.1:port

:class:`RecordingTransport` stands in for a local socket where a test drives a protocol
by hand: it records what is written and whether reading is paused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import AnyTLSServer
from anytls.inbound.mixed import MixedInbound

__all__ = ["RecordingTransport", "mixed_proxy"]


@contextlib.asynccontextmanager
async def mixed_proxy(
    server: AnyTLSServer, password: str, **client_kwargs: Any
) -> AsyncIterator[tuple[Client, int]]:
    """Our client (``insecure``, other options as given) behind a mixed inbound on a free
    port of 127.0.0.1; yields the client and that port."""
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig("127.0.0.1", port, password, insecure=True, **client_kwargs)
    async with Client(config) as client:
        inbound = MixedInbound(client)
        await inbound.start("127.0.0.1", 0)
        try:
            yield client, inbound.port
        finally:
            await inbound.close()


class RecordingTransport(asyncio.Transport):
    """A local socket stand-in: records writes, closing and pauses."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
