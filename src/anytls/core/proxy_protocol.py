"""PROXY protocol v1 and v2 headers (HAProxy's spec), for servers behind an L4 balancer.

A balancer that speaks the PROXY protocol sends one header before the client's bytes
(here: before the TLS ClientHello) naming the real client address. v1 is one text line,
``PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n`` (at most 107 bytes); v2 is binary: a
12-byte signature, version/command, family/protocol, a u16 length, then the addresses and
optional TLVs (ignored here). ``LOCAL`` (v2) and ``UNKNOWN`` (v1) carry no address: the
connection's own peer address stands.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107
#: Largest v2 header this parser accepts (addresses plus generous TLV room).
V2_MAX = 16 + 4096

_V2_HEAD = struct.Struct(">12sBBH")


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """The real client and the address it connected to, as the balancer saw them."""

    source: tuple[str, int]
    destination: tuple[str, int]


def parse_proxy_header(buf: bytes | bytearray | memoryview) -> tuple[ProxyInfo | None, int] | None:
    """Parse a PROXY header at the start of ``buf``.

    Returns None while incomplete, else ``(info, header_length)`` where ``info`` is None
    for LOCAL/UNKNOWN headers. Raises :class:`RemoteProtocolError` when ``buf`` does not
    start with a valid header.
    """
    data = bytes(buf[: max(V1_MAX, V2_MAX)])
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if data:
        raise RemoteProtocolError("expected a PROXY protocol header")
    return None


def _parse_v1(data: bytes) -> tuple[ProxyInfo | None, int] | None:
    if not V1_PREFIX.startswith(data[: len(V1_PREFIX)]):
        raise RemoteProtocolError("expected a PROXY protocol header")
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX:
            raise RemoteProtocolError("PROXY v1 header longer than 107 bytes")
        return None
    try:
        parts = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise RemoteProtocolError("PROXY v1 header is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return None, end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise RemoteProtocolError(f"malformed PROXY v1 header: {data[:end]!r}")
    _, family, src, dst, sport, dport = parts
    try:
        src_ip = ipaddress.ip_address(src)
        dst_ip = ipaddress.ip_address(dst)
        ports = int(sport), int(dport)
    except ValueError:
        raise RemoteProtocolError(f"malformed PROXY v1 header: {data[:end]!r}") from None
    version = 4 if family == "TCP4" else 6
    if (
        src_ip.version != version
        or dst_ip.version != version
        or not all(
            0 <= p <= 0xFFFF and str(p) == s for p, s in zip(ports, (sport, dport), strict=True)
        )
    ):
        raise RemoteProtocolError(f"malformed PROXY v1 header: {data[:end]!r}")
    return ProxyInfo((str(src_ip), ports[0]), (str(dst_ip), ports[1])), end + 2


def _parse_v2(data: bytes) -> tuple[ProxyInfo | None, int] | None:
    if not V2_SIGNATURE.startswith(data[:12]):
        raise RemoteProtocolError("expected a PROXY protocol header")
    if len(data) < 16:
        return None
    _, ver_cmd, fam, length = _V2_HEAD.unpack_from(data)
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF not in (0, 1):
        raise RemoteProtocolError(f"unsupported PROXY v2 version/command 0x{ver_cmd:02x}")
    total = 16 + length
    if total > V2_MAX:
        raise RemoteProtocolError(f"PROXY v2 header of {total} bytes exceeds {V2_MAX}")
    if len(data) < total:
        return None
    if ver_cmd & 0xF == 0:  # LOCAL: health check from the balancer itself
        return None, total
    family = fam >> 4
    body = data[16:total]
    if family == 1 and len(body) >= 12:
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack_from(">HH", body, 8)
    elif family == 2 and len(body) >= 36:
        src = str(ipaddress.IPv6Address(body[0:16]))
        dst = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack_from(">HH", body, 32)
    elif family in (0, 3):  # UNSPEC or UNIX: no usable address
        return None, total
    else:
        raise RemoteProtocolError(f"PROXY v2 header with bad family 0x{fam:02x} or length")
    return ProxyInfo((src, sport), (dst, dport)), total
