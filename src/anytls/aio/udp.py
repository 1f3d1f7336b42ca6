"""UDP over TCP (sing-box UoT v1/v2) on both ends of a stream.

Server: :class:`UotServerRelay` takes over a stream whose destination is a UoT magic name,
reads the v2 request (v1 has none), opens one UDP socket per address family for the stream,
acknowledges, then relays datagrams: connect format to the request's destination, or the
non-connect format where every packet names its target (domains resolved per packet, with a
small cache) and every reply names its source. An idle timer closes the stream.

Client: :class:`UdpAssociation` is one UoT v2 stream seen as a datagram socket. It writes
the request at once (never waiting for SYNACK, as Go servers read it before acknowledging).
In the non-connect format it resolves domain targets itself (as mihomo does) and sends IPs:
the Go servers (sing-box, anytls-go) do not resolve per-packet domain addresses and silently
drop such datagrams.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.address import Address, Buffer
from ..core.uot import (
    UOT_V2_MAGIC,
    UotPacketDecoder,
    UotRequestReader,
    encode_connect_packet,
    encode_packet,
    encode_request,
)
from ..errors import ProtocolError, RemoteProtocolError, StreamClosedError
from .outbound import DestinationDenied, family_of, is_private, lookup
from .stream import Stream

if TYPE_CHECKING:
    from .client import Client
    from .server import ServerConnection

log = logging.getLogger("anytls.udp")

#: Default seconds without a datagram either way before a UoT stream is closed.
UDP_IDLE_TIMEOUT = 60.0
#: Datagrams queued for a slow :meth:`UdpAssociation.recvfrom` caller before drops.
RECV_QUEUE_LIMIT = 1024
_DNS_CACHE_SIZE = 256
_DNS_CACHE_TTL = 60.0


class _DnsCache:
    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[float, list[tuple[int, str]]]] = OrderedDict()

    def cached(self, host: str) -> str | None:
        """The preferred address of ``host`` if a fresh lookup is cached, else None."""
        hit = self._entries.get(host)
        if hit is None or hit[0] <= time.monotonic():
            return None
        return _pick(hit[1])

    async def resolve(self, host: str) -> list[tuple[int, str]]:
        now = time.monotonic()
        hit = self._entries.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await lookup(host, None, socket.SOCK_DGRAM)
        self._entries[host] = (now + _DNS_CACHE_TTL, result)
        self._entries.move_to_end(host)
        while len(self._entries) > _DNS_CACHE_SIZE:
            self._entries.popitem(last=False)
        return result


def _pick(infos: list[tuple[int, str]]) -> str | None:
    """The first IPv4 address of a lookup result, else its first address."""
    for family, ip in infos:
        if family == socket.AF_INET:
            return ip
    return infos[0][1] if infos else None


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
        connection: ServerConnection,
        stream: Stream,
        version: int,
        initial: bytes,
        idle_timeout: float = UDP_IDLE_TIMEOUT,
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.version = version
        self.idle_timeout = idle_timeout
        self.request = UotRequestReader() if version == 2 else None
        self.decoder: UotPacketDecoder | None = None
        self.connect_target: tuple[str, int] | None = None
        self.sockets: dict[int, _UdpSocket] = {}
        self.socket_lock = asyncio.Lock()
        self.queue: list[tuple[Address | None, bytes]] = []
        #: Datagrams (port, payload) waiting for a name lookup or a socket, per host, so
        #: datagrams to one target keep their order.
        self.waiting: dict[str, list[tuple[int, bytes]]] = {}
        self.dns = _DnsCache()
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.ready = False
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.datagrams_in = 0
        self.datagrams_out = 0
        # The user's live counters (anytls.aio.stats); None outside an AnyTLSServer.
        self._stats = getattr(connection, "user_stats", None)
        if self._stats is not None:
            self._stats.udp_opened()
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
            packets = self.decoder.feed(data) if data else []
        except ProtocolError as exc:
            log.info("%s: malformed UoT data, closing the stream: %s", self.label, exc)
            self.close()
            return
        if not packets:
            return
        if self.ready:
            for address, payload in packets:
                self._send(address, payload)
        else:
            self.queue.extend(packets)

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
            log.info("%s: %s", self.label, text)
            self.connection.send_synack(self.stream.stream_id, text)
            self.close()
            return
        self.connection.send_synack(self.stream.stream_id)
        self.ready = True
        self._arm_timer()
        queue, self.queue = self.queue, []
        for address, payload in queue:
            self._send(address, payload)

    async def _resolve(self, host: str) -> tuple[int, str]:
        if ":" in host:
            return socket.AF_INET6, host
        if host.replace(".", "").isdigit():
            return socket.AF_INET, host
        ip = _pick(await self.dns.resolve(host))
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

    def _send(self, address: Address | None, payload: bytes) -> None:
        if address is None:
            assert self.connect_target is not None
            host, port = self.connect_target
            family = family_of(host)
            self._sendto(family, host, port, payload)
            return
        key = address.host
        waiting = self.waiting.get(key)
        if waiting is not None:
            # A lookup or socket for this host is under way: queue behind it, in order.
            if len(waiting) < RECV_QUEUE_LIMIT:
                waiting.append((address.port, payload))
            return
        known = key if address.is_ip else self.dns.cached(key)
        if known is not None:
            family = family_of(known)
            if family in self.sockets:
                self._sendto(family, known, address.port, payload)
                return
        self.waiting[key] = [(address.port, payload)]
        self.connection.start_task(self._send_slow(address))

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
            dropped = self.waiting.pop(key, [])
            log.debug("%s: dropping %d datagram(s) for %s: %s", self.label, len(dropped), key, exc)
            return
        for port, payload in self.waiting.pop(key, []):
            self._sendto(family, host, port, payload)

    def _sendto(self, family: int, host: str, port: int, payload: bytes) -> None:
        sock = self.sockets.get(family)
        if sock is None or sock.transport is None or self.closed:
            return
        if self._denied(host):
            log.debug("%s: dropping a datagram to private address %s", self.label, host)
            return
        self.datagrams_out += 1
        self.last_activity = self.loop.time()
        sock.transport.sendto(payload, (host, port))

    def _denied(self, ip: str) -> bool:
        return self.connection.config.deny_private and is_private(ip)

    def reply(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        """A datagram arrived on one of our sockets: frame it onto the stream."""
        if self.closed or self.decoder is None:
            return
        host, port = str(addr[0]), int(addr[1])
        if self.connect_target is not None:
            if (host, port) != self.connect_target:
                return
            packet = encode_connect_packet(data)
        else:
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
            packet = encode_packet(Address(host, port), data)
        self.datagrams_in += 1
        self.last_activity = self.loop.time()
        try:
            self.stream.write(packet)
        except StreamClosedError:
            self.close()

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
        if self.task is not None and not self.task.done():
            self.task.cancel()

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


class UdpAssociation(asyncio.Protocol):
    """A UoT v2 stream used as a datagram socket; create with :func:`open_udp`.

    Non-connect mode (the default) reaches any number of targets with :meth:`sendto`;
    connect mode (``open_udp(..., connect=addr)``) sends to one target with :meth:`send`.
    In non-connect mode a domain target is resolved here (cached, IPv4 preferred; datagrams
    to a name wait for its lookup in order) and replies name the IP they came from.
    """

    def __init__(
        self, stream: Stream, connect: Address | None, resolve_domains: bool = True
    ) -> None:
        self.stream = stream
        self.connect = connect
        self.decoder = UotPacketDecoder(connect=connect is not None)
        self.queue: asyncio.Queue[tuple[bytes, Address] | None] = asyncio.Queue()
        self.dropped = 0
        self.closed = False
        self.error: BaseException | None = None
        #: Resolve domain targets locally (non-connect mode) instead of sending the name.
        self.resolve_domains = resolve_domains
        self._dns = _DnsCache()
        self._resolving: dict[str, list[tuple[Buffer, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handler: Callable[[bytes, Address], None] | None = None
        stream.set_protocol(self)
        stream.write(encode_request(connect is not None, connect or Address("0.0.0.0", 0)))

    # ---------------------------------------------------------------- sending
    def sendto(self, data: Buffer, address: Address | tuple[str, int]) -> None:
        """Send one datagram to ``address`` (non-connect mode)."""
        if self.connect is not None:
            raise ValueError("this association is in connect mode: use send()")
        if not isinstance(address, Address):
            address = Address(address[0], address[1])
        if self.resolve_domains and not address.is_ip:
            self._sendto_name(data, address)
            return
        self._write(encode_packet(address, data))

    def _sendto_name(self, data: Buffer, address: Address) -> None:
        if self.closed:
            raise StreamClosedError("the UDP association is closed") from self.error
        host = address.host
        ip = self._dns.cached(host)
        if ip is not None:
            self._write(encode_packet(Address(ip, address.port), data))
            return
        waiting = self._resolving.get(host)
        if waiting is not None:
            # Keep the order of datagrams to a name that is being resolved.
            if len(waiting) < RECV_QUEUE_LIMIT:
                waiting.append((data, address.port))
            else:
                self.dropped += 1
            return
        self._resolving[host] = [(data, address.port)]
        task = asyncio.get_running_loop().create_task(self._resolve(host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, host: str) -> None:
        try:
            ip: str | None = _pick(await self._dns.resolve(host))
        except (OSError, ValueError) as exc:
            log.debug("UDP association: cannot resolve %s: %s", host, exc)
            ip = None
        waiting = self._resolving.pop(host, [])
        if ip is None:
            self.dropped += len(waiting)
            return
        try:
            for data, port in waiting:
                self._write(encode_packet(Address(ip, port), data))
        except StreamClosedError:
            pass  # the association ended meanwhile

    def send(self, data: bytes) -> None:
        """Send one datagram to the connect-mode target."""
        if self.connect is None:
            raise ValueError("this association is not in connect mode: use sendto()")
        self._write(encode_connect_packet(data))

    def _write(self, packet: bytes) -> None:
        if self.closed:
            raise StreamClosedError("the UDP association is closed") from self.error
        self.stream.write(packet)

    # ---------------------------------------------------------------- receiving
    async def recvfrom(self) -> tuple[bytes, Address]:
        """The next datagram and its source; raises when the association has ended."""
        item = await self.queue.get()
        if item is None:
            self.queue.put_nowait(None)
            raise StreamClosedError("the UDP association is closed") from self.error
        return item

    async def recv(self) -> bytes:
        """The next datagram's payload."""
        return (await self.recvfrom())[0]

    def set_datagram_handler(self, handler: Callable[[bytes, Address], None]) -> None:
        """Call ``handler(payload, source)`` for every datagram instead of queueing it.

        For relays: no task wakes per datagram. Datagrams already queued are handed over
        first; :meth:`recvfrom` then only reports the end of the association.
        """
        self._handler = handler
        while True:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is None:
                self.queue.put_nowait(None)
                return
            handler(*item)  # the caller's own call: its exceptions reach the caller

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.decoder.feed(data)
        except RemoteProtocolError as exc:
            log.info("malformed UoT data from the server: %s", exc)
            self.error = exc
            self.close()
            return
        handler = self._handler
        for address, payload in packets:
            if handler is not None:
                try:
                    handler(payload, address or self.connect)  # type: ignore[arg-type]
                except Exception as exc:
                    # Only this association ends, never the session that carries it.
                    log.error("UDP association: datagram handler failed", exc_info=exc)
                    self.error = exc
                    self.close()
                    return
                continue
            if self.queue.qsize() >= RECV_QUEUE_LIMIT:
                self.dropped += 1
                continue
            self.queue.put_nowait((payload, address or self.connect))  # type: ignore[arg-type]

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.error is None:
            self.error = exc
        self.closed = True
        self.queue.put_nowait(None)
        for task in self._tasks:
            task.cancel()

    def close(self) -> None:
        """End the association."""
        if not self.closed:
            self.closed = True
            self.stream.close()

    async def __aenter__(self) -> UdpAssociation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def open_udp(
    client: Client,
    connect: Address | tuple[str, int] | None = None,
    *,
    resolve_domains: bool = True,
) -> UdpAssociation:
    """Open a UDP association through ``client``'s server (UoT v2).

    With ``connect`` the connect format is used and every datagram goes to that target (a
    domain there is resolved by the server). Without it, :meth:`UdpAssociation.sendto`
    resolves domain targets locally unless ``resolve_domains`` is false, in which case the
    name is sent as is (only servers that resolve per packet, such as ours, answer those).
    """
    if connect is not None and not isinstance(connect, Address):
        connect = Address(connect[0], connect[1])
    stream = await client.open_stream(Address(UOT_V2_MAGIC, 0))
    return UdpAssociation(stream, connect, resolve_domains)
