"""UDP over TCP (sing-box UoT v2), client side; the server side is
:mod:`anytls.aio.uot_server`.

:class:`UdpAssociation` is one UoT v2 stream seen as a datagram socket. It writes
the request at once (never waiting for SYNACK, as Go servers read it before acknowledging).
In the non-connect format it resolves domain targets itself (as mihomo does) and sends IPs:
the Go servers (sing-box, anytls-go) do not resolve per-packet domain addresses and silently
drop such datagrams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.address import Address, Buffer
from ..core.uot import (
    UOT_V2_MAGIC,
    UotPacketDecoder,
    encode_connect_packet,
    encode_packet,
    encode_request,
)
from ..errors import RemoteProtocolError, StreamClosedError
from .outbound import DnsCache, pick_address
from .stream import Stream

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("anytls.udp")

#: Datagrams queued for a slow :meth:`UdpAssociation.recvfrom` caller before drops.
RECV_QUEUE_LIMIT = 1024


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
        self._dns = DnsCache()
        self._resolving: dict[str, list[tuple[Buffer, int]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handler: Callable[[bytes, Address], None] | None = None
        self._packet_handler: Callable[[bytes], None] | None = None
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
        waiting = self._resolving.get(host)
        if waiting is not None:
            # Keep the order of datagrams to a name that is being resolved: behind those
            # waiting, even once the answer is cached (it is, a loop iteration before
            # they are sent).
            if len(waiting) < RECV_QUEUE_LIMIT:
                waiting.append((data, address.port))
            else:
                self.dropped += 1
            return
        ip = self._dns.cached(host)
        if ip is not None:
            self._write(encode_packet(Address(ip, address.port), data))
            return
        self._resolving[host] = [(data, address.port)]
        task = asyncio.get_running_loop().create_task(self._resolve(host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, host: str) -> None:
        try:
            ip: str | None = pick_address(await self._dns.resolve(host))
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

    def send_packet(self, packet: bytes) -> None:
        """Send one already encoded non-connect packet (address, length and payload, as
        :func:`~anytls.core.uot.socks_datagram_to_packet` makes it)."""
        if self.connect is not None:
            raise ValueError("this association is in connect mode: use send()")
        self._write(packet)

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

    def set_packet_handler(self, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(packet)`` with every whole non-connect packet, undecoded (for
        relays that re-frame it, e.g. with :func:`~anytls.core.uot.packet_to_socks_datagram`);
        otherwise as :meth:`set_datagram_handler`."""
        if self.connect is not None:
            raise ValueError("this association is in connect mode: use set_datagram_handler()")
        self._packet_handler = handler
        self.set_datagram_handler(lambda payload, source: handler(encode_packet(source, payload)))

    def data_received(self, data: bytes) -> None:
        whole = self._packet_handler
        try:
            packets = self.decoder.feed_whole(data) if whole else self.decoder.feed(data)
        except RemoteProtocolError as exc:
            log.info("malformed UoT data from the server: %s", exc)
            self.error = exc
            self.close()
            return
        if whole is not None:
            for packet in packets:
                if not self._call(whole, packet):
                    return
            return
        handler = self._handler
        for address, payload in packets:
            if handler is not None:
                if not self._call(handler, payload, address or self.connect):
                    return
                continue
            if self.queue.qsize() >= RECV_QUEUE_LIMIT:
                self.dropped += 1
                continue
            self.queue.put_nowait((payload, address or self.connect))  # type: ignore[arg-type]

    def _call(self, handler: Callable[..., None], *args: Any) -> bool:
        """Run a datagram or packet handler; if it fails, only this association ends, never
        the session that carries it."""
        try:
            handler(*args)
        except RemoteProtocolError as exc:  # a relay decoding the server's packet
            log.info("malformed UoT data from the server: %s", exc)
            self.error = exc
            self.close()
            return False
        except Exception as exc:
            log.error("UDP association: datagram handler failed", exc_info=exc)
            self.error = exc
            self.close()
            return False
        return True

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
    # A session of its own unless an idle one is pooled: datagrams must not wait behind
    # the bulk streams of a burst that shares the sessions being set up.
    stream = await client.open_stream(Address(UOT_V2_MAGIC, 0), alone=True)
    return UdpAssociation(stream, connect, resolve_domains)
