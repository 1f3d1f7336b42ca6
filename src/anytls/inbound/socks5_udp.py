"""SOCKS5 UDP ASSOCIATE for the mixed inbound, carried in one UoT stream.

The association binds a UDP socket on the address the control connection came in on,
accepts datagrams only from the associated client (its IP, and its port once known),
drops fragments (FRAG ≠ 0), and carries every datagram in ONE UoT v2 stream in the
non-connect format, so one association reaches any number of targets. Replies come back
with their source address in the SOCKS5 UDP header. It ends when the TCP control
connection ends (or the stream does).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging

from ..aio.client import Client
from ..aio.udp import UdpAssociation, open_udp
from ..core.address import Address, Buffer
from ..core.socks5 import Reply, parse_udp_datagram, reply
from ..core.uot import packet_to_socks_datagram, socks_datagram_to_packet
from ..errors import AnyTLSError, ProtocolError, SessionClosedError

log = logging.getLogger("anytls.inbound")


class _Control(asyncio.Protocol):
    """Sits on the SOCKS5 TCP connection once it becomes a UDP control channel."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        pass  # nothing is expected on a control connection

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class _LocalUdp(asyncio.DatagramProtocol):
    def __init__(self, relay: Socks5UdpRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.relay.from_local(data, addr)


class Socks5UdpRelay:
    """One SOCKS5 UDP association."""

    def __init__(self, client: Client, control: asyncio.Transport, requested: Address) -> None:
        self.client = client
        self.control = control
        peer = control.get_extra_info("peername")
        self.client_ip = _norm(str(peer[0])) if peer else None
        self.client_port = requested.port or None
        self.client_addr: tuple[str | int, ...] | None = None
        self.assoc: UdpAssociation | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.pending: list[tuple[Buffer, Address]] = []
        self.datagrams = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        control_proto = _Control()
        self.control.set_protocol(control_proto)
        sockname = self.control.get_extra_info("sockname")
        local_ip = str(sockname[0]) if sockname else "127.0.0.1"
        try:
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _LocalUdp(self), local_addr=(local_ip, 0)
            )
        except OSError as exc:
            log.info("UDP ASSOCIATE: cannot bind a UDP socket on %s: %s", local_ip, exc)
            self.control.write(reply(Reply.GENERAL_FAILURE))
            self.control.close()
            return
        self.udp = udp
        bound = udp.get_extra_info("sockname")
        try:
            self.control.write(reply(Reply.SUCCEEDED, Address(_norm(str(bound[0])), bound[1])))
            self.control.resume_reading()
            try:
                self.assoc = await open_udp(self.client)
            except SessionClosedError as exc:
                self.client.failures.report("UDP ASSOCIATE", exc)
                return
            except AnyTLSError as exc:
                log.info("UDP ASSOCIATE: cannot open a UoT stream: %s", exc)
                return
            for payload, target in self.pending:
                self.assoc.sendto(payload, target)
            self.pending.clear()
            self.assoc.set_packet_handler(self._reply)
            ended = loop.create_task(self._association_ended())
            try:
                await asyncio.wait([control_proto.lost, ended], return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
        finally:
            udp.close()
            if self.assoc is not None:
                self.assoc.close()
            self.control.close()
            log.debug(
                "UDP association for %s ended after %d datagrams", self.client_ip, self.datagrams
            )

    def from_local(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        ip, port = _norm(str(addr[0])), int(addr[1])
        if ip != self.client_ip or (self.client_port and port != self.client_port):
            return  # not from the associated client
        assoc = self.assoc
        # An IP target (the usual case) is re-framed as it is, no Address built.
        packet = socks_datagram_to_packet(data) if assoc is not None else None
        if packet is None:
            try:
                parsed = parse_udp_datagram(data)
            except ProtocolError as exc:
                log.debug("UDP ASSOCIATE: dropping a malformed datagram: %s", exc)
                return
            if parsed is None:
                return  # fragment
            target, payload = parsed
        self.client_addr = addr
        self.client_port = port
        self.datagrams += 1
        if assoc is None:
            if len(self.pending) < 256:
                self.pending.append((payload, target))
            return
        try:
            if packet is not None:
                assoc.send_packet(packet)
            else:
                assoc.sendto(payload, target)
        except AnyTLSError:
            self.control.close()

    def _reply(self, packet: bytes) -> None:
        if self.udp is not None and self.client_addr is not None:
            self.udp.sendto(packet_to_socks_datagram(packet), self.client_addr)

    async def _association_ended(self) -> None:
        assert self.assoc is not None
        with contextlib.suppress(AnyTLSError):
            await self.assoc.recvfrom()  # only returns (raises) once the stream is gone
        self.control.close()


@functools.lru_cache(maxsize=256)
def _norm(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def udp_handler(client: Client):  # type: ignore[no-untyped-def]
    """The ``udp_handler`` for :class:`~anytls.inbound.mixed.MixedInbound`."""

    async def handle(control: asyncio.Transport, requested: Address) -> None:
        await Socks5UdpRelay(client, control, requested).run()

    return handle
