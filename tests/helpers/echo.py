"""Loopback destination servers for proxy tests (TCP echo, TCP source, UDP echo).

All servers are async context managers that yield a :class:`ServerAddr`, a ``(host, port)``
tuple with extra attributes (``.host``, ``.port``, ``.stats`` and, for the source server,
``.sha256`` / ``.nbytes``), so both ``as (host, port)`` and ``as addr`` work::

    async with tcp_echo_server() as (host, port):
        ...
    async with tcp_source_server(1 << 20) as src:
        ...  # src.sha256 == sha256_hex(pattern(1 << 20))

On exit every server closes its listener and aborts any connection still open, so nothing
leaks even when the test body raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = [
    "ServerAddr",
    "ServerStats",
    "blackhole",
    "echo_roundtrip",
    "pattern",
    "pattern_sha256",
    "read_all",
    "refused_port",
    "sha256_hex",
    "tcp_echo_server",
    "tcp_source_server",
    "udp_echo_server",
]

_PATTERN_SEED = b"anytls-test-pattern-v1"


@functools.lru_cache(maxsize=16)
def pattern(n: int) -> bytes:
    """Deterministic pseudo-random bytes of length ``n`` (SHAKE-256 of a fixed seed).

    ``pattern(n)`` is a prefix of ``pattern(m)`` for n < m.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    return hashlib.shake_256(_PATTERN_SEED).digest(n) if n else b""


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern_sha256(n: int) -> str:
    """sha256 hex digest of ``pattern(n)``."""
    return sha256_hex(pattern(n))


@dataclass
class ServerStats:
    """Counters kept by the loopback servers (handy to assert connection reuse etc.)."""

    connections: int = 0  # accepted TCP connections (or distinct UDP peers for UDP)
    active: int = 0  # currently open TCP connections
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams: int = 0  # UDP only
    peers: list[Any] = field(default_factory=list)  # peer addresses, in accept order


class ServerAddr(tuple[str, int]):
    """``(host, port)`` tuple carrying extra attributes."""

    host: str
    port: int
    stats: ServerStats
    sha256: str | None
    nbytes: int | None

    def __new__(
        cls,
        host: str,
        port: int,
        stats: ServerStats,
        *,
        sha256: str | None = None,
        nbytes: int | None = None,
    ) -> ServerAddr:
        self = super().__new__(cls, (host, port))
        self.host = host
        self.port = port
        self.stats = stats
        self.sha256 = sha256
        self.nbytes = nbytes
        return self


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def refused_port(host: str = "127.0.0.1") -> int:
    """A loopback TCP port with nothing listening (connects get ECONNREFUSED).

    The port comes from the kernel's ephemeral allocator and is released immediately;
    nothing in the test suite listens on it afterwards unless it is reallocated.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- TCP echo


class _TrackedProtocol(asyncio.Protocol):
    """Base of the TCP server protocols: counts connections in ``stats`` and keeps each
    open transport in ``conns`` (so the server can abort them on exit).

    Returning False from ``eof_received`` makes the transport close itself after flushing
    its write buffer.
    """

    def __init__(self, stats: ServerStats, conns: set[asyncio.BaseTransport]) -> None:
        self._stats = stats
        self._conns = conns
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._conns.add(transport)
        self._stats.connections += 1
        self._stats.active += 1
        self._stats.peers.append(transport.get_extra_info("peername"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._stats.active -= 1
        if self._transport is not None:
            self._conns.discard(self._transport)


class _EchoProtocol(_TrackedProtocol):
    """Writes every chunk straight back; pauses reading under write backpressure.

    On EOF from the peer it finishes writing what is buffered and closes (the peer sees
    EOF after the last echoed byte), which gives correct half-close behaviour.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport = cast(asyncio.Transport, transport)
        with contextlib.suppress(OSError, AttributeError):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._stats.bytes_in += len(data)
        self._stats.bytes_out += len(data)
        self._transport.write(data)

    def pause_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()


async def _serve_tcp(factory: Any, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host, port, reuse_address=True, backlog=512)


async def _close_tcp(server: asyncio.Server, conns: set[asyncio.BaseTransport]) -> None:
    server.close()
    for tr in list(conns):
        tr.abort()
    conns.clear()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)
    # Let connection_lost callbacks run so no transport is left half-dead.
    await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def tcp_echo_server(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[ServerAddr]:
    """TCP echo server on loopback; echoes until the client's EOF, then closes."""
    stats = ServerStats()
    conns: set[asyncio.BaseTransport] = set()
    server = await _serve_tcp(lambda: _EchoProtocol(stats, conns), host, port)
    bound = server.sockets[0].getsockname()
    try:
        yield ServerAddr(host, int(bound[1]), stats)
    finally:
        await _close_tcp(server, conns)


# --------------------------------------------------------------------------- TCP source


class _SourceProtocol(_TrackedProtocol):
    """Sends ``data`` on connect, then shuts down its write side and drains the peer.

    It only closes after the peer's EOF (or on server exit) so unread inbound bytes never
    cause an RST that could destroy data still in flight towards the client.
    """

    def __init__(self, data: bytes, stats: ServerStats, conns: set[asyncio.BaseTransport]) -> None:
        super().__init__(stats, conns)
        self._data = data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport = cast(asyncio.Transport, transport)
        transport.write(self._data)
        self._stats.bytes_out += len(self._data)
        if transport.can_write_eof():
            transport.write_eof()
        else:  # pragma: no cover - plain TCP can always write EOF
            transport.close()

    def data_received(self, data: bytes) -> None:
        self._stats.bytes_in += len(data)


@contextlib.asynccontextmanager
async def tcp_source_server(
    nbytes: int, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ServerAddr]:
    """On each connection send ``pattern(nbytes)`` then EOF. Yields addr with ``.sha256``."""
    data = pattern(nbytes)
    stats = ServerStats()
    conns: set[asyncio.BaseTransport] = set()
    server = await _serve_tcp(lambda: _SourceProtocol(data, stats, conns), host, port)
    bound = server.sockets[0].getsockname()
    try:
        yield ServerAddr(host, int(bound[1]), stats, sha256=sha256_hex(data), nbytes=nbytes)
    finally:
        await _close_tcp(server, conns)


# --------------------------------------------------------------------------- UDP echo


class _UDPEchoProtocol(asyncio.DatagramProtocol):
    def __init__(self, stats: ServerStats, sock: socket.socket) -> None:
        self._stats = stats
        self._sock = sock
        self._transport: asyncio.DatagramTransport | None = None
        self._seen: set[Any] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (not isinstance-checked: on 3.11 the selector transport isn't a DatagramTransport)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._stats.datagrams += 1
        self._stats.bytes_in += len(data)
        if addr not in self._seen:
            self._seen.add(addr)
            self._stats.connections += 1
            self._stats.peers.append(addr)
        if not data:
            # asyncio (3.11) silently drops empty datagrams in sendto(); use the socket.
            with contextlib.suppress(OSError):
                self._sock.sendto(b"", addr)
            return
        assert self._transport is not None
        self._transport.sendto(data, addr)
        self._stats.bytes_out += len(data)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP unreachable
        pass


@contextlib.asynccontextmanager
async def udp_echo_server(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[ServerAddr]:
    """UDP echo server: each datagram (also empty ones) goes back to its sender.

    ``host="::1"`` works too. ``stats.datagrams`` counts received datagrams.
    """
    loop = asyncio.get_running_loop()
    stats = ServerStats()
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
        transport, _proto = await loop.create_datagram_endpoint(
            lambda: _UDPEchoProtocol(stats, sock), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()
    try:
        yield ServerAddr(host, int(bound[1]), stats)
    finally:
        transport.close()
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- client utils


async def read_all(reader: asyncio.StreamReader, limit: int | None = None) -> bytes:
    """Read until EOF (optionally failing if more than ``limit`` bytes arrive)."""
    buf = bytearray()
    while True:
        chunk = await reader.read(1 << 16)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if limit is not None and len(buf) > limit:
            raise AssertionError(f"received more than {limit} bytes")


async def echo_roundtrip(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    data: bytes,
    *,
    chunk: int = 1 << 16,
    half_close: bool = True,
) -> bytes:
    """Send ``data`` (in ``chunk``-sized writes) while concurrently reading the echo.

    With ``half_close`` the write side is shut (EOF) after the data and the echo is read
    until EOF; otherwise exactly ``len(data)`` bytes are read. Returns what was received.

    Through an AnyTLS proxy use ``half_close=False``: the protocol has no half-close (a
    client EOF makes sing-box send FIN, which ends both directions and drops the echo).
    """

    async def send() -> None:
        view = memoryview(data)
        for off in range(0, len(view), chunk):
            writer.write(view[off : off + chunk])
            await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
            await writer.drain()

    async def recv() -> bytes:
        if half_close:
            return await read_all(reader, limit=len(data))
        return await reader.readexactly(len(data))

    send_task = asyncio.ensure_future(send())
    try:
        received = await recv()
        await send_task
    finally:
        if not send_task.done():
            send_task.cancel()
            with contextlib.suppress(BaseException):
                await send_task
    return received


@dataclass
class Blackhole:
    """A loopback port whose connects hang (see :func:`blackhole`); ``close()`` frees it."""

    port: int
    sockets: list[socket.socket]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def blackhole() -> Blackhole:
    """A listener whose accept queue is full: new SYNs are dropped, connects just hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    return Blackhole(port, [*fillers, listener])
