"""Minimal hand-written SOCKS5 UDP ASSOCIATE client (RFC 1928 §4, §7) for tests.

    async with socks5_udp_associate("127.0.0.1", mixed_port) as assoc:
        await assoc.sendto(b"ping", ("127.0.0.1", echo_port))
        data, addr = await assoc.recvfrom()

The TCP control connection stays open for the lifetime of the association (closing it
ends the association on the proxy side). Destination hosts may be IPv4/IPv6 literals or
domain names (ATYP 1/4/3). Fragmentation (FRAG != 0) is not supported and such replies are
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator

__all__ = [
    "Socks5Error",
    "Socks5UDPAssociation",
    "decode_udp_packet",
    "encode_address",
    "encode_udp_packet",
    "socks5_udp_associate",
]

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

REPLY_MESSAGES = {
    0: "succeeded",
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class Socks5Error(Exception):
    def __init__(self, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.reply = reply


def encode_address(host: str, port: int) -> bytes:
    """ATYP + ADDR + PORT as used in SOCKS5 requests and UDP headers."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raw = host.encode("idna")
        if not 0 < len(raw) < 256:
            raise ValueError(f"bad domain length: {host!r}") from None
        return bytes([ATYP_DOMAIN, len(raw)]) + raw + struct.pack("!H", port)
    if ip.version == 4:
        return bytes([ATYP_IPV4]) + ip.packed + struct.pack("!H", port)
    return bytes([ATYP_IPV6]) + ip.packed + struct.pack("!H", port)


def _decode_address(buf: bytes, off: int) -> tuple[str, int, int]:
    """Parse ATYP+ADDR+PORT at ``off``; return (host, port, new_offset)."""
    atyp = buf[off]
    off += 1
    if atyp == ATYP_IPV4:
        host = str(ipaddress.IPv4Address(buf[off : off + 4]))
        off += 4
    elif atyp == ATYP_IPV6:
        host = str(ipaddress.IPv6Address(buf[off : off + 16]))
        off += 16
    elif atyp == ATYP_DOMAIN:
        n = buf[off]
        host = buf[off + 1 : off + 1 + n].decode("idna")
        off += 1 + n
    else:
        raise Socks5Error(f"unknown ATYP {atyp}")
    if off + 2 > len(buf):
        raise Socks5Error("truncated address")
    (port,) = struct.unpack_from("!H", buf, off)
    return host, port, off + 2


def encode_udp_packet(data: bytes, addr: tuple[str, int]) -> bytes:
    """RSV(2) FRAG(1)=0 ATYP DST.ADDR DST.PORT DATA."""
    return b"\x00\x00\x00" + encode_address(addr[0], addr[1]) + data


def decode_udp_packet(packet: bytes) -> tuple[bytes, tuple[str, int], int]:
    """Return (data, (host, port), frag)."""
    if len(packet) < 4:
        raise Socks5Error("short UDP packet")
    frag = packet[2]
    host, port, off = _decode_address(packet, 3)
    return packet[off:], (host, port), frag


async def _read_address(reader: asyncio.StreamReader) -> tuple[str, int]:
    atyp = (await reader.readexactly(1))[0]
    if atyp == ATYP_IPV4:
        rest = await reader.readexactly(4 + 2)
    elif atyp == ATYP_IPV6:
        rest = await reader.readexactly(16 + 2)
    elif atyp == ATYP_DOMAIN:
        n = (await reader.readexactly(1))[0]
        rest = bytes([n]) + await reader.readexactly(n + 2)
    else:
        raise Socks5Error(f"unknown ATYP {atyp} in reply")
    host, port, _ = _decode_address(bytes([atyp]) + rest, 0)
    return host, port


async def socks5_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    cmd: int,
    dst: tuple[str, int],
    *,
    username: str | None = None,
    password: str | None = None,
) -> tuple[str, int]:
    """Greeting (+ optional RFC 1929 auth) and one request; returns (BND.ADDR, BND.PORT)."""
    methods = b"\x00" if username is None else b"\x02"
    writer.write(b"\x05" + bytes([len(methods)]) + methods)
    await writer.drain()
    ver, method = await reader.readexactly(2)
    if ver != 5:
        raise Socks5Error(f"bad SOCKS version {ver}")
    if method == 0xFF:
        raise Socks5Error("no acceptable auth method")
    if method == 2:
        if username is None or password is None:
            raise Socks5Error("proxy wants username/password")
        u, p = username.encode(), password.encode()
        writer.write(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
        await writer.drain()
        _v, status = await reader.readexactly(2)
        if status != 0:
            raise Socks5Error(f"authentication failed (status {status})")
    elif method != 0:
        raise Socks5Error(f"proxy chose unsupported method {method}")
    writer.write(b"\x05" + bytes([cmd, 0]) + encode_address(*dst))
    await writer.drain()
    ver, rep, _rsv = await reader.readexactly(3)
    if ver != 5:
        raise Socks5Error(f"bad SOCKS version {ver} in reply")
    bnd = await _read_address(reader)
    if rep != 0:
        raise Socks5Error(f"SOCKS5 request failed: {REPLY_MESSAGES.get(rep, rep)}", rep)
    return bnd


class _UDPClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes | Exception]) -> None:
        self._queue = queue

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self._queue.put_nowait(exc)


class Socks5UDPAssociation:
    """An established UDP association. Use :func:`socks5_udp_associate` to create one."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        transport: asyncio.DatagramTransport,
        queue: asyncio.Queue[bytes | Exception],
        relay: tuple[str, int],
    ) -> None:
        self.control_reader = reader
        self.control_writer = writer
        self.relay = relay  # where datagrams are sent (BND.ADDR/PORT, 0.0.0.0 → proxy host)
        self._transport = transport
        self._queue = queue
        self.dropped_fragments = 0

    @property
    def local_addr(self) -> tuple[str, int]:
        return self._transport.get_extra_info("sockname")[:2]

    async def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self._transport.sendto(encode_udp_packet(data, addr))

    async def send_raw(self, packet: bytes) -> None:
        """Send an arbitrary (possibly malformed) datagram to the relay."""
        self._transport.sendto(packet)

    async def recvfrom(
        self,
        timeout: float | None = 5.0,  # noqa: ASYNC109
    ) -> tuple[bytes, tuple[str, int]]:
        """Next datagram relayed back: (payload, (source host, source port))."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self._queue.get()
                if isinstance(item, Exception):
                    raise item
                data, addr, frag = decode_udp_packet(item)
                if frag != 0:
                    self.dropped_fragments += 1
                    continue
                return data, addr

    async def aclose(self) -> None:
        self._transport.close()
        self.control_writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.control_writer.wait_closed()


@contextlib.asynccontextmanager
async def socks5_udp_associate(
    proxy_host: str,
    proxy_port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> AsyncIterator[Socks5UDPAssociation]:
    """Open a SOCKS5 UDP ASSOCIATE through ``proxy_host:proxy_port``.

    The request's DST.ADDR is the client's own UDP socket address (RFC 1928 recommends
    the address the client will send from). A BND.ADDR of 0.0.0.0/:: is replaced by
    ``proxy_host``.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in proxy_host else socket.AF_INET
    udp_sock = socket.socket(family, socket.SOCK_DGRAM)
    transport: asyncio.DatagramTransport | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        udp_sock.setblocking(False)
        udp_sock.bind((proxy_host, 0))
        local_port = int(udp_sock.getsockname()[1])
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
            bnd_host, bnd_port = await socks5_handshake(
                reader,
                writer,
                3,
                (proxy_host, local_port),
                username=username,
                password=password,
            )
        if bnd_host in ("0.0.0.0", "::"):
            bnd_host = proxy_host
        # Connect the UDP socket to the relay so only the relay's datagrams are accepted.
        udp_sock.connect((bnd_host, bnd_port))
        queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UDPClientProtocol(queue), sock=udp_sock
        )
        assoc = Socks5UDPAssociation(reader, writer, transport, queue, (bnd_host, bnd_port))
    except BaseException:
        if transport is not None:
            transport.close()
        else:
            udp_sock.close()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        raise
    try:
        yield assoc
    finally:
        await assoc.aclose()
