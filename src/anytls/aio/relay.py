"""Splicing a plain TCP transport to a :class:`~anytls.aio.stream.Stream`, callback style.

No task per connection and no ``StreamReader`` on the hot path: socket reads land in the
shared buffer (``BufferedProtocol``) and go straight into PSH frames; stream data goes
straight to ``transport.write``. Back-pressure is forwarded both ways with
``pause_reading``/``resume_reading``. Either side ending ends both (AnyTLS has no
half-close); ``transport.close()`` still flushes what is buffered.
"""

from __future__ import annotations

import asyncio
import logging

from .buffers import shared_buffer
from .stream import Stream

log = logging.getLogger("anytls.relay")


class SocketSide(asyncio.BufferedProtocol):
    """Protocol on the TCP socket: its bytes go to the stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._buffer = shared_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        stream = self.stream
        if stream.is_closing():
            return
        stream.write(self._buffer[:nbytes])

    def eof_received(self) -> bool:
        self.stream.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.resume_reading()
        self.stream.close()

    def pause_writing(self) -> None:
        self.stream.pause_reading()

    def resume_writing(self) -> None:
        self.stream.resume_reading()


class StreamSide(asyncio.Protocol):
    """Protocol on the stream: its bytes go to the TCP socket."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport.close()

    def pause_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


def splice(transport: asyncio.Transport, stream: Stream, initial: bytes = b"") -> None:
    """Relay between an established ``transport`` and ``stream`` until either ends.

    ``initial`` are bytes already read from ``transport`` that belong to the stream.
    """
    transport.set_protocol(SocketSide(stream))
    stream.set_protocol(StreamSide(transport))
    if initial:
        stream.write(initial)
    if stream.is_closing():
        transport.close()


class _Pipe(asyncio.Protocol):
    """One direction of a transport-to-transport relay (used for fallback)."""

    def __init__(self, peer: asyncio.Transport) -> None:
        self.peer = peer

    def data_received(self, data: bytes) -> None:
        if not self.peer.is_closing():
            self.peer.write(data)

    def eof_received(self) -> bool:
        if not self.peer.is_closing():
            if self.peer.can_write_eof():
                self.peer.write_eof()
                return True
            self.peer.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer.close()

    def pause_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.resume_reading()


async def relay_to(
    transport: asyncio.Transport, host: str, port: int, initial: bytes, connect_timeout: float
) -> None:
    """Connect to ``host:port`` and relay ``transport`` to it, ``initial`` bytes first."""
    loop = asyncio.get_running_loop()
    transport.pause_reading()
    async with asyncio.timeout(connect_timeout):
        remote, _ = await loop.create_connection(lambda: _Pipe(transport), host, port)
    if transport.is_closing():
        remote.close()
        return
    if initial:
        remote.write(initial)
    transport.set_protocol(_Pipe(remote))
    transport.resume_reading()
