"""UDP over TCP, server side (sing-box UoT v1/v2): one stream relayed to UDP sockets.

:class:`UotServerRelay` takes over a stream whose destination is a UoT magic name,
reads the v2 request (v1 has none), opens one UDP socket per address family for the stream,
acknowledges, then relays datagrams: connect format to the request's destination, or the
non-connect format where every packet names its target (domains resolved per packet, with a
small cache) and every reply names its source. An idle timer closes the stream.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from ..core.address import Address, decode_address
from ..core.uot import (
    UOT_CODES,
    UotPacketDecoder,
    UotRequestReader,
    encode_connect_packet,
    encode_packet_after,
)
from ..errors import ProtocolError, StreamClosedError
from .outbound import DestinationDenied, DnsCache, family_of, is_private, pick_address
from .stats import UserStats
from .stream import Stream

log = logging.getLogger("anytls.udp")
_T = TypeVar("_T")

#: Default seconds without a datagram either way before a UoT stream is closed.
UDP_IDLE_TIMEOUT = 60.0
#: Datagrams queued per target while its name is looked up or its socket opened.
RECV_QUEUE_LIMIT = 1024
#: Bytes of datagrams a UDP stream holds at most while names or sockets are on their way
#: (the rest is dropped, as a full link drops datagrams).
WAITING_BYTES = 256 * 1024
#: ... and all the streams of one session (with the bytes its TCP streams hold for their
#: dials: the server's SESSION_DIAL_BUFFER_LIMIT).
SESSION_HELD_LIMIT = 1024 * 1024
#: Reply sources whose encoded address a relay keeps (the table is emptied when full).
SOURCE_CACHE_SIZE = 256
#: Targets a relay keeps already checked, per encoded address (emptied when full).
TARGET_CACHE_SIZE = 256
#: Names (or sockets) a UDP stream waits for at once; datagrams to further new names are
#: dropped meanwhile.
NAMES_IN_FLIGHT = 16
#: Refused private addresses a UDP stream logs at INFO (the rest at DEBUG).
DENIED_SAID = 8


class UotHost(Protocol):
    """What a relay needs from the session carrying its stream."""

    peer: str
    #: Bytes the session's streams hold while their destinations are on their way.
    dial_buffered: int

    async def looked_up(self, lookup: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run a name lookup in one of the session's lookup slots."""
        ...

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...
    def send_synack(self, stream_id: int, error: str | None = None) -> None: ...


class _UdpSocket(asyncio.DatagramProtocol):
    def __init__(self, relay: UotServerRelay) -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.relay.reply(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp socket error: %s", exc)


class UotServerRelay(asyncio.Protocol):
    """Server side of one UoT stream (installed as the stream's protocol)."""

    def __init__(
        self,
        connection: UotHost,
        stream: Stream,
        version: int,
        initial: bytes,
        idle_timeout: float = UDP_IDLE_TIMEOUT,
        *,
        deny_private: bool = False,
        stats: UserStats | None = None,
    ) -> None:
        self.connection = connection
        self.deny_private = deny_private
        self.stream = stream
        self.version = version
        self.idle_timeout = idle_timeout
        self.request = UotRequestReader() if version == 2 else None
        self.decoder: UotPacketDecoder | None = None
        self.connect_target: tuple[str, int] | None = None
        self.sockets: dict[int, _UdpSocket] = {}
        self.socket_lock = asyncio.Lock()
        #: Packets (encoded address, payload) that came before the sockets were ready.
        self.queue: list[tuple[bytes, bytes]] = []
        #: Encoded address → (socket, target) of IP targets already sent to (allowed, their
        #: socket open): later datagrams to them skip decoding and checks. Connect format
        #: keeps its one target under b"".
        self._targets: dict[bytes, tuple[_UdpSocket, tuple[str, int]]] = {}
        #: Datagrams (port, payload) waiting for a name lookup or a socket, per host, so
        #: datagrams to one target keep their order.
        self.waiting: dict[str, list[tuple[int, bytes]]] = {}
        #: Bytes of payload in :attr:`queue` and :attr:`waiting` (see WAITING_BYTES).
        self._held = 0
        #: Tasks resolving names (or opening sockets) for waiting datagrams.
        self._slow: set[asyncio.Task[None]] = set()
        self.dns = DnsCache()
        #: Refused private addresses already logged at INFO.
        self._denied_said: set[str] = set()
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.ready = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.datagrams_in = 0
        self.datagrams_out = 0
        #: True while the session asks its producers to wait (its TLS connection is
        #: congested, or its user is over a speed limit): replies are dropped meanwhile,
        #: as a full link drops datagrams, instead of queueing without bound.
        self.paused = False
        self.datagrams_dropped = 0
        #: Reply source (as the socket reports it) → its encoded UoT address.
        self._sources: dict[tuple[str | int, ...], bytes] = {}
        #: The user's live counters, when the server keeps them.
        self._stats = stats
        if stats is not None:
            stats.udp_opened()
        stream.set_protocol(self)
        if version == 1:
            self._start(False, Address("0.0.0.0", 0))
        if initial:
            self.data_received(initial)

    @property
    def label(self) -> str:
        return f"{self.connection.peer} stream {self.stream.stream_id} (udp)"

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_activity = self.loop.time()
        try:
            if self.decoder is None:
                assert self.request is not None
                request = self.request.feed(data)
                if request is None:
                    return
                data = self.request.leftover
                self._start(*request)
            assert self.decoder is not None
            packets = self.decoder.feed_split(data) if data else []
        except ProtocolError as exc:
            log.info("%s: malformed UoT data, closing the stream: %s", self.label, exc)
            self.close()
            return
        if not packets:
            return
        if not self.ready:
            for packet in packets:  # the target's name or socket is on its way
                if self._hold(len(packet[1])):
                    self.queue.append(packet)
            return
        targets = self._targets
        for header, payload in packets:
            known = targets.get(header)
            if known is None:
                self._send_new(header, payload)
                continue
            transport = known[0].transport
            if transport is not None:
                self.datagrams_out += 1
                transport.sendto(payload, known[1])

    def _send_new(self, header: bytes, payload: bytes) -> None:
        """Send a packet whose address is not in :attr:`_targets` (connect format: b"")."""
        if not header:
            self._send(None, payload, header)
            return
        # feed_split checked the address: whole, and a valid name if it is one
        result = decode_address(header, 0, UOT_CODES)
        assert result is not None
        self._send(result[0], payload, header)

    def _start(self, is_connect: bool, destination: Address) -> None:
        self.decoder = UotPacketDecoder(connect=is_connect)
        log.debug(
            "%s: %s request to %s", self.label, "connect" if is_connect else "packet", destination
        )
        self.task = self.connection.start_task(self._open(is_connect, destination))

    async def _open(self, is_connect: bool, destination: Address) -> None:
        try:
            if is_connect:
                family, host = await self._resolve(destination.host)
                if self._denied(host):
                    raise DestinationDenied(
                        f"destination {destination} is not allowed (private or local address)"
                    )
                self.connect_target = (host, destination.port)
                await self._socket(family)
            else:
                await self._socket(socket.AF_INET)
        except (OSError, ValueError) as exc:  # ValueError: a name idna cannot encode
            text = f"udp {destination}: {getattr(exc, 'strerror', None) or exc}"
            advice = " (--allow-private allows it)" if isinstance(exc, DestinationDenied) else ""
            log.info("%s: %s%s", self.label, text, advice)
            self.connection.send_synack(self.stream.stream_id, text)
            self.close()
            return
        self.connection.send_synack(self.stream.stream_id)
        self.ready = True
        self._arm_timer()
        queue, self.queue = self.queue, []
        self._let_go(sum(len(payload) for _, payload in queue))
        for header, payload in queue:
            self._send_new(header, payload)

    async def _resolve(self, host: str) -> tuple[int, str]:
        if ":" in host:
            return socket.AF_INET6, host
        if host.replace(".", "").isdigit():
            return socket.AF_INET, host
        infos = await self.connection.looked_up(lambda: self.dns.resolve(host))
        ip = pick_address(infos)
        if ip is None:
            raise OSError(f"no address for {host}")
        return family_of(ip), ip

    async def _socket(self, family: int) -> _UdpSocket:
        sock = self.sockets.get(family)
        if sock is not None:
            return sock
        async with self.socket_lock:  # one socket per family, even for concurrent callers
            sock = self.sockets.get(family)
            if sock is None:
                local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
                _, proto = await self.loop.create_datagram_endpoint(
                    lambda: _UdpSocket(self), local_addr=local, family=family
                )
                sock = self.sockets[family] = proto
                if self.closed:
                    assert sock.transport is not None
                    sock.transport.close()
        return sock

    def _send(self, address: Address | None, payload: bytes, header: bytes) -> None:
        if address is None:
            assert self.connect_target is not None
            host, port = self.connect_target
            family = family_of(host)
            if self._sendto(family, host, port, payload):
                self._remember(header, family, host, port)
            return
        key = address.host
        waiting = self.waiting.get(key)
        if waiting is not None:
            # A lookup or socket for this host is under way: queue behind it, in order.
            if len(waiting) < RECV_QUEUE_LIMIT and self._hold(len(payload)):
                waiting.append((address.port, payload))
            return
        known = key if address.is_ip else self.dns.cached(key)
        if known is not None:
            family = family_of(known)
            if family in self.sockets:
                sent = self._sendto(family, known, address.port, payload)
                if sent and address.is_ip:  # (a name's address may change: not kept)
                    self._remember(header, family, known, address.port)
                return
        if len(self.waiting) >= NAMES_IN_FLIGHT:
            # A client sending to ever new names must not queue lookups without end (the
            # resolver's threads are shared by every session): drop until some finish.
            self.datagrams_dropped += 1
            log.debug(
                "%s: dropping a datagram for %s: %d lookups under way",
                self.label,
                key,
                len(self.waiting),
            )
            return
        if not self._hold(len(payload)):
            return
        self.waiting[key] = [(address.port, payload)]
        task = self.connection.start_task(self._send_slow(address))
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    async def _send_slow(self, address: Address) -> None:
        """Resolve ``address.host`` and/or open its family's socket, then send what waits."""
        key = address.host
        try:
            if address.is_ip:
                family = family_of(key)
                host = key
            else:
                family, host = await self._resolve(key)
            await self._socket(family)
        except (OSError, ValueError) as exc:
            dropped = self._unhold(key)
            log.debug("%s: dropping %d datagram(s) for %s: %s", self.label, len(dropped), key, exc)
            return
        for port, payload in self._unhold(key):
            self._sendto(family, host, port, payload)

    def _hold(self, size: int) -> bool:
        """Count ``size`` more bytes held while waiting; False (dropped) past this stream's
        budget or the session's (what its TCP streams hold for their dials counts too)."""
        connection = self.connection
        if (
            self._held + size > WAITING_BYTES
            or connection.dial_buffered + size > SESSION_HELD_LIMIT
        ):
            self.datagrams_dropped += 1
            return False
        self._held += size
        connection.dial_buffered += size
        return True

    def _let_go(self, size: int) -> None:
        self._held -= size
        self.connection.dial_buffered -= size

    def _unhold(self, key: str) -> list[tuple[int, bytes]]:
        """The datagrams waiting for ``key``, no longer counted as held."""
        waiting = self.waiting.pop(key, [])
        self._let_go(sum(len(payload) for _, payload in waiting))
        return waiting

    def _sendto(self, family: int, host: str, port: int, payload: bytes) -> bool:
        """Send if allowed and the family's socket is open; return whether it was sent."""
        sock = self.sockets.get(family)
        if sock is None or sock.transport is None or self.closed:
            return False
        if self._denied(host):
            # Said once per address (a few per stream), the rest at DEBUG: a client
            # must not flood the log.
            first = host not in self._denied_said and len(self._denied_said) < DENIED_SAID
            if first:
                self._denied_said.add(host)
            log.log(
                logging.INFO if first else logging.DEBUG,
                "%s: dropping datagrams to %s: a private or local address "
                "(--allow-private allows it)",
                self.label,
                host,
            )
            return False
        self.datagrams_out += 1
        self.last_activity = self.loop.time()
        sock.transport.sendto(payload, (host, port))
        return True

    def _remember(self, header: bytes, family: int, host: str, port: int) -> None:
        """Keep an allowed target under its encoded address (the table is bounded)."""
        targets = self._targets
        if len(targets) >= TARGET_CACHE_SIZE:
            targets.clear()
        targets[header] = (self.sockets[family], (host, port))

    def _denied(self, ip: str) -> bool:
        return self.deny_private and is_private(ip)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """A datagram arrived on one of our sockets: frame it onto the stream."""
        if self.closed or self.decoder is None:
            return
        if self.paused:
            self.datagrams_dropped += 1
            return
        if self.connect_target is not None:
            if (str(addr[0]), int(addr[1])) != self.connect_target:
                return
            packet = encode_connect_packet(data)
        else:
            header = self._sources.get(addr)
            if header is None:
                header = self._source_header(addr)
            packet = encode_packet_after(header, data)
        self.datagrams_in += 1
        self.last_activity = self.loop.time()
        try:
            self.stream.write(packet)
        except StreamClosedError:
            self.close()

    def _source_header(self, addr: tuple[str | int, ...]) -> bytes:
        """The encoded address of a reply's source (kept: replies come from few sources)."""
        host, port = str(addr[0]), int(addr[1])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        header = Address(host, port).encode(UOT_CODES)
        if len(self._sources) >= SOURCE_CACHE_SIZE:
            self._sources.clear()
        self._sources[addr] = header
        return header

    def _arm_timer(self) -> None:
        deadline = self.last_activity + self.idle_timeout
        self.timer = self.loop.call_at(deadline, self._check_idle)

    def _check_idle(self) -> None:
        if self.closed:
            return
        if self.loop.time() - self.last_activity >= self.idle_timeout:
            log.debug("%s: idle for %g s, closing", self.label, self.idle_timeout)
            self.close()
        else:
            self._arm_timer()

    def close(self) -> None:
        """End the stream and release the sockets."""
        if not self.closed:
            self.closed = True
            self.stream.close()
        self._release()

    def _release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for sock in self.sockets.values():
            if sock.transport is not None:
                sock.transport.close()
        self.sockets.clear()
        self._targets.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        # Lookups for this stream's datagrams end with it, and what waited is let go.
        for task in list(self._slow):
            task.cancel()
        self.waiting.clear()
        self.queue.clear()
        self._let_go(self._held)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._release()
        if self._stats is not None:
            self._stats.udp_closed()
            self._stats = None
        log.debug(
            "%s: closed after %d datagrams out, %d in",
            self.label,
            self.datagrams_out,
            self.datagrams_in,
        )
