"""sing-box UDP-over-TCP v1/v2 (PROTOCOL.md §6.2–§6.4).

A UoT stream is an AnyTLS stream whose destination is a magic domain (port ignored):
``sp.v2.udp-over-tcp.arpa`` for v2, ``sp.udp-over-tcp.arpa`` for legacy v1.

v2 starts with a request, then packets::

    request:  isConnect u8 (00/01) | destination, *SOCKS* ATYP 01 IPv4 / 03 domain / 04 IPv6

    connect packets (isConnect=01):      length u16be | payload
    non-connect packets (isConnect=00):  ATYP | addr | port u16be | length u16be | payload

v1 has no request and uses the non-connect packet format only. The per-packet ATYP in the
non-connect format uses **UoT codes 00 = IPv4, 01 = IPv6, 02 = domain**, not the SOCKS
codes of the request: mixing the two up is the classic interop bug. Packets form a byte
stream whose boundaries need not match AnyTLS frames; :class:`UotPacketDecoder` reassembles
them with a buffer never larger than one maximal packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from ..errors import LocalProtocolError, RemoteProtocolError
from .address import (
    MAX_ADDRESS_SIZE,
    SOCKS_CODES,
    Address,
    AddressCodes,
    Buffer,
    decode_address,
)

UOT_V2_MAGIC = "sp.v2.udp-over-tcp.arpa"
UOT_V1_MAGIC = "sp.udp-over-tcp.arpa"
#: Largest datagram payload a packet's u16 length can carry.
MAX_DATAGRAM = 65535
#: Per-packet address codes of the non-connect format.
UOT_CODES = AddressCodes(ipv4=0x00, domain=0x02, ipv6=0x01)
#: Largest non-connect packet header: address + u16 length.
MAX_PACKET_HEADER = MAX_ADDRESS_SIZE + 2
#: Largest encoded request: isConnect + address.
MAX_REQUEST_SIZE = 1 + MAX_ADDRESS_SIZE

_U16 = struct.Struct(">H")
_unpack_u16 = _U16.unpack_from
_T = TypeVar("_T")
_V2 = UOT_V2_MAGIC.lower()
_V1 = UOT_V1_MAGIC.lower()


def uot_version(dest: Address) -> int | None:
    """Return 2 or 1 when ``dest`` is a UoT magic destination, else None (port ignored)."""
    host = dest.host.lower()
    if host == _V2:
        return 2
    if host == _V1:
        return 1
    return None


def encode_request(is_connect: bool, destination: Address) -> bytes:
    """Return the v2 request: isConnect byte + SOCKS-coded destination."""
    return (b"\x01" if is_connect else b"\x00") + destination.encode()


def decode_request(buf: Buffer, offset: int = 0) -> tuple[bool, Address, int] | None:
    """Decode a v2 request at ``buf[offset:]``.

    Returns ``(is_connect, destination, end_offset)``, or None when incomplete. Raises
    :class:`RemoteProtocolError` for an isConnect byte other than 0/1 or a bad address.
    """
    if len(buf) <= offset:
        return None
    flag = buf[offset]
    if flag > 1:
        raise RemoteProtocolError(f"UoT request isConnect byte is 0x{flag:02x}, not 0 or 1")
    result = decode_address(buf, offset + 1, SOCKS_CODES)
    if result is None:
        return None
    address, end = result
    return flag == 1, address, end


def _check_payload(payload: Buffer) -> int:
    n = len(payload)
    if n > MAX_DATAGRAM:
        raise LocalProtocolError(f"UoT datagram of {n} bytes exceeds {MAX_DATAGRAM}")
    return n


def encode_connect_packet(payload: Buffer) -> bytes:
    """Return a connect-format packet: u16be length + payload."""
    return _U16.pack(_check_payload(payload)) + payload


def encode_packet(address: Address, payload: Buffer) -> bytes:
    """Return a non-connect packet: UoT-coded address + port + u16be length + payload."""
    n = _check_payload(payload)
    return b"".join((address.encode(UOT_CODES), _U16.pack(n), payload))


def encode_packet_after(address_header: bytes, payload: Buffer) -> bytes:
    """Return a non-connect packet from an address already encoded with UoT codes
    (``address.encode(UOT_CODES)``, which a relay may keep per source)."""
    return b"".join((address_header, _U16.pack(_check_payload(payload)), payload))


def socks_datagram_to_packet(datagram: Buffer) -> bytes | None:
    """Turn a SOCKS5 UDP datagram to an IP target into a non-connect packet directly.

    ``RSV RSV FRAG ATYP addr port payload`` becomes ``code addr port length payload``
    without building an :class:`Address`. Returns None for anything else (a domain
    target, a fragment, a truncated datagram), which the caller handles the general way.
    """
    n = len(datagram)
    if n < 10 or datagram[2] != 0:
        return None
    atyp = datagram[3]
    if atyp == 0x01:
        code, end = _UOT_IPV4, 10
    elif atyp == 0x04:
        code, end = _UOT_IPV6, 22
    else:
        return None
    size = n - end
    if size < 0 or size > MAX_DATAGRAM:
        return None
    view = memoryview(datagram)
    return b"".join((code, view[4:end], _U16.pack(size), view[end:]))


def packet_to_socks_datagram(packet: Buffer) -> bytes:
    """Turn one whole non-connect packet into a SOCKS5 UDP datagram
    (``00 00 00 ATYP addr port payload``) with the packet's address as the source.

    IP sources are copied over without building an :class:`Address`; a domain is decoded
    and checked as :func:`~anytls.core.address.decode_address` does. Raises
    :class:`RemoteProtocolError` for a malformed address.
    """
    code = packet[0]
    view = memoryview(packet)
    if code == 0x00:
        return b"".join((_SOCKS_IPV4, view[1:7], view[9:]))
    if code == 0x01:
        return b"".join((_SOCKS_IPV6, view[1:19], view[21:]))
    result = decode_address(view, 0, UOT_CODES)
    if result is None:
        raise RemoteProtocolError("UoT packet address is truncated")
    address, end = result
    return b"".join((b"\x00\x00\x00", address.encode(SOCKS_CODES), view[end + 2 :]))


_UOT_IPV4 = bytes((UOT_CODES.ipv4,))
_UOT_IPV6 = bytes((UOT_CODES.ipv6,))
_SOCKS_IPV4 = bytes((0, 0, 0, SOCKS_CODES.ipv4))
_SOCKS_IPV6 = bytes((0, 0, 0, SOCKS_CODES.ipv6))


def _header_size(buf: Buffer, pos: int, avail: int) -> int:
    """Bytes of the non-connect header at ``pos``, or a lower bound when not yet known."""
    atyp = buf[pos]
    if atyp == 0x00:
        return 1 + 4 + 2 + 2
    if atyp == 0x01:
        return 1 + 16 + 2 + 2
    if atyp == 0x02:
        if avail < 2:
            return 2
        n = buf[pos + 1]
        if n == 0:
            raise RemoteProtocolError("UoT packet address has an empty domain name")
        return 2 + n + 2 + 2
    raise RemoteProtocolError(f"unknown UoT packet address type 0x{atyp:02x}")


class UotRequestReader:
    """Incrementally read the v2 request; the bytes after it are in :attr:`leftover`."""

    __slots__ = ("_buf", "_leftover", "_request")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._request: tuple[bool, Address] | None = None
        self._leftover = b""

    @property
    def leftover(self) -> bytes:
        """Bytes received after the request (empty until it is complete)."""
        return self._leftover

    def feed(self, data: Buffer) -> tuple[bool, Address] | None:
        """Add ``data``; return ``(is_connect, destination)`` once complete, else None."""
        if self._request is not None:
            raise LocalProtocolError("UoT request already complete; read .leftover instead")
        take = MAX_REQUEST_SIZE - len(self._buf)
        self._buf += data[:take]
        result = decode_request(self._buf)
        if result is None:
            return None
        is_connect, address, end = result
        self._request = (is_connect, address)
        self._leftover = bytes(self._buf[end:]) + bytes(data[take:])
        self._buf = bytearray()
        return self._request


class UotPacketDecoder:
    """Reassemble UoT packets from arbitrary chunks of the stream.

    ``connect=True`` reads the connect format (address is None in the results), otherwise
    the non-connect/v1 format with UoT address codes.
    """

    __slots__ = ("_buf", "connect")

    def __init__(self, connect: bool) -> None:
        self.connect = connect
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet."""
        return len(self._buf)

    def _need(self, buf: Buffer, pos: int, avail: int) -> int:
        """Total size of the packet at ``pos`` if known, else a lower bound (> avail)."""
        header = 2 if self.connect else _header_size(buf, pos, avail)
        if avail < header:
            return header
        length: int = _unpack_u16(buf, pos + header - 2)[0]
        return header + length

    def _packet(self, buf: Buffer, pos: int, end: int) -> tuple[Address | None, bytes]:
        if self.connect:
            return None, bytes(buf[pos + 2 : end])
        result = decode_address(buf, pos, UOT_CODES)
        assert result is not None  # the whole packet is present
        address, addr_end = result
        return address, bytes(buf[addr_end + 2 : end])

    def feed(self, data: Buffer) -> list[tuple[Address | None, bytes]]:
        """Add ``data``; return the packets it completed, in order."""
        return self._feed(data, self._packet)

    def feed_split(self, data: Buffer) -> list[tuple[bytes, bytes]]:
        """Like :meth:`feed`, but each packet's address stays encoded: ``(address bytes,
        payload)``, the address as sent (code, address, port; empty in connect format),
        for relays that keep what they decoded once per address."""
        return self._feed(data, self._split)

    def _split(self, buf: Buffer, pos: int, end: int) -> tuple[bytes, bytes]:
        if self.connect:
            return b"", bytes(buf[pos + 2 : end])
        header = _header_size(buf, pos, end - pos)
        if buf[pos] == UOT_CODES.domain:
            decode_address(buf, pos, UOT_CODES)  # a malformed name raises, as in feed()
        return bytes(buf[pos : pos + header - 2]), bytes(buf[pos + header : end])

    def feed_whole(self, data: Buffer) -> list[bytes]:
        """Like :meth:`feed`, but each completed packet is returned whole (header
        included) and undecoded, e.g. for :func:`packet_to_socks_datagram`."""
        return self._feed(data, _whole)

    def _feed(self, data: Buffer, emit: Callable[[Buffer, int, int], _T]) -> list[_T]:
        out: list[_T] = []
        view = memoryview(data)
        n = len(view)
        pos = 0
        buf = self._buf
        if buf:
            # Top the pending packet up with exactly the bytes it still needs.
            while True:
                need = self._need(buf, 0, len(buf))
                have = len(buf)
                if have >= need:
                    out.append(emit(buf, 0, need))
                    buf.clear()
                    break
                take = min(need - have, n - pos)
                if not take:
                    return out
                buf += view[pos : pos + take]
                pos += take
        while pos < n:
            avail = n - pos
            need = self._need(view, pos, avail)
            if avail < need:
                buf += view[pos:]
                break
            out.append(emit(view, pos, pos + need))
            pos += need
        return out


def _whole(buf: Buffer, pos: int, end: int) -> bytes:
    return bytes(buf[pos:end])


__all__ = [
    "MAX_DATAGRAM",
    "UOT_CODES",
    "UOT_V1_MAGIC",
    "UOT_V2_MAGIC",
    "UotPacketDecoder",
    "UotRequestReader",
    "decode_request",
    "encode_connect_packet",
    "encode_packet",
    "encode_packet_after",
    "encode_request",
    "packet_to_socks_datagram",
    "socks_datagram_to_packet",
    "uot_version",
]
