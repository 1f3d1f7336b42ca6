"""SOCKS5-style destination addresses (RFC 1928 §5; PROTOCOL.md §6.1).

Wire format, used for the first bytes of every AnyTLS stream, for the UoT request and
for SOCKS5 requests/replies::

    ATYP u8 | address | port u16be

    ATYP 01  IPv4    4 bytes
    ATYP 03  domain  1-byte length L (1..255) + L bytes (UTF-8, no NUL)
    ATYP 04  IPv6    16 bytes

The longest address is therefore 1 + 1 + 255 + 2 = 259 bytes. A host that is an IP
literal is always sent as that IP, and a received domain that is an IP literal is
normalised to the IP, as sing's ``M.SocksaddrSerializer`` does. UDP-over-TCP packets use
the same layout with other ATYP codes; :class:`AddressCodes` selects them.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ConfigError, LocalProtocolError, RemoteProtocolError

Buffer = bytes | bytearray | memoryview

#: Largest encoded address: ATYP + length + 255-byte domain + port.
MAX_ADDRESS_SIZE = 1 + 1 + 255 + 2
#: Longest domain name the one-byte length field can carry.
MAX_DOMAIN_SIZE = 255

_PORT = struct.Struct(">H")
#: Bytes no host name has (C0 controls, DEL): NUL, line breaks, terminal escapes.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_unpack_port = _PORT.unpack_from
_IPV4_CHARS = frozenset("0123456789.")


class AddressCodes(NamedTuple):
    """The ATYP values a wire format uses for IPv4, domain and IPv6 addresses."""

    ipv4: int
    domain: int
    ipv6: int


#: RFC 1928 codes: 01 IPv4, 03 domain, 04 IPv6.
SOCKS_CODES = AddressCodes(ipv4=0x01, domain=0x03, ipv6=0x04)


@functools.lru_cache(maxsize=4096)
def _parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return ``host`` as an IP address, or None when it is not an IP literal.

    Cached: the same destinations recur on every stream, and ``ipaddress`` parsing is
    slow next to the rest of a stream open.
    """
    # Cheap pre-check so ordinary domain names never pay for an exception.
    if not host or (":" not in host and not _IPV4_CHARS.issuperset(host)):
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 address rather than a name."""
    return _parse_ip(host) is not None


@dataclass(frozen=True, slots=True)
class Address:
    """A destination: ``host`` is a domain name, or an IPv4/IPv6 literal without brackets."""

    host: str
    port: int

    def __post_init__(self) -> None:
        port = self.port
        if type(port) is not int or not 0 <= port <= 0xFFFF:
            raise LocalProtocolError(f"port {port!r} is not an integer in 0..65535")

    @property
    def is_ip(self) -> bool:
        """True when ``host`` is an IPv4 or IPv6 literal."""
        return is_ip_literal(self.host)

    def encode(self, codes: AddressCodes = SOCKS_CODES) -> bytes:
        """Return ``ATYP | address | port`` (SOCKS5 codes unless ``codes`` says otherwise)."""
        ip = _parse_ip(self.host)
        port = _PORT.pack(self.port)
        if ip is not None:
            code = codes.ipv4 if ip.version == 4 else codes.ipv6
            return bytes((code,)) + ip.packed + port
        name = self.host.encode("utf-8")
        n = len(name)
        if not 0 < n <= MAX_DOMAIN_SIZE:
            raise LocalProtocolError(
                f"domain name must be 1..{MAX_DOMAIN_SIZE} bytes, got {n}: {self.host[:40]!r}"
            )
        if b"\x00" in name:
            raise LocalProtocolError(f"domain name contains NUL: {self.host[:40]!r}")
        return bytes((codes.domain, n)) + name + port

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``host:port`` or ``[v6]:port``; raise :class:`ConfigError` when invalid."""
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep:
                raise ConfigError(f"{text!r}: missing ']' after the IPv6 address")
            if not rest.startswith(":"):
                raise ConfigError(f"{text!r}: expected [IPv6]:port, e.g. [::1]:8443")
            port_text = rest[1:]
            ip = _parse_ip(host)
            if ip is None or ip.version != 6:
                raise ConfigError(f"{text!r}: {host!r} in brackets is not an IPv6 address")
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ConfigError(f"{text!r}: expected host:port, e.g. 127.0.0.1:8443")
            if ":" in host:
                raise ConfigError(f"{text!r}: put IPv6 addresses in brackets, e.g. [::1]:8443")
            if not host:
                raise ConfigError(
                    f"{text!r}: missing host (use 0.0.0.0{text} to mean all interfaces)"
                )
            if any(c.isspace() or c in "/@[]" for c in host):
                raise ConfigError(f"{text!r}: {host!r} is not a valid host name")
            try:
                size = len(host.encode("utf-8"))
            except UnicodeEncodeError:  # lone surrogates, e.g. undecodable bytes in argv
                raise ConfigError(f"{text!r}: {host!r} is not valid UTF-8") from None
            if size > MAX_DOMAIN_SIZE:
                raise ConfigError(f"{text!r}: host name longer than {MAX_DOMAIN_SIZE} bytes")
        # Leading zeros off and length first: int() raises ValueError past 4300 digits.
        digits = port_text.lstrip("0") or "0"
        if (
            not (port_text.isascii() and port_text.isdigit())
            or len(digits) > 5
            or int(digits) > 0xFFFF
        ):
            raise ConfigError(f"{text!r}: port {port_text!r} is not a number in 0..65535")
        return cls(host, int(digits))


def decode_address(
    buf: Buffer, offset: int = 0, codes: AddressCodes = SOCKS_CODES
) -> tuple[Address, int] | None:
    """Decode one address at ``buf[offset:]``.

    Returns ``(address, end_offset)``, or None when more bytes are needed. Raises
    :class:`RemoteProtocolError` on an unknown ATYP or a malformed domain name.
    """
    avail = len(buf) - offset
    if avail < 1:
        return None
    atyp = buf[offset]
    if atyp == codes.ipv4:
        end = offset + 7
        if avail < 7:
            return None
        a, b, c, d = buf[offset + 1 : offset + 5]
        host = f"{a}.{b}.{c}.{d}"
    elif atyp == codes.ipv6:
        end = offset + 19
        if avail < 19:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[offset + 1 : offset + 17])))
    elif atyp == codes.domain:
        if avail < 2:
            return None
        n = buf[offset + 1]
        if n == 0:
            raise RemoteProtocolError("address has an empty domain name")
        end = offset + 4 + n
        if avail < n + 4:
            return None
        raw = bytes(buf[offset + 2 : offset + 2 + n])
        bad = _CONTROL.search(raw)
        if bad is not None:
            # NUL ends a C string early; a line break or an escape would forge log lines
            raise RemoteProtocolError(
                f"domain name in address contains a control character ({bad.group()!r})"
            )
        try:
            host = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                f"domain name in address is not UTF-8: {raw[:40]!r}"
            ) from None
        ip = _parse_ip(host)
        if ip is not None:
            host = str(ip)
    else:
        raise RemoteProtocolError(f"unknown address type 0x{atyp:02x}")
    return Address(host, _unpack_port(buf, end - 2)[0]), end


class AddressReader:
    """Incrementally read one SOCKS5 address from a byte stream.

    Feed chunks until :meth:`feed` returns the address; the bytes that followed it are then
    in :attr:`leftover`. At most :data:`MAX_ADDRESS_SIZE` bytes are ever buffered.
    """

    __slots__ = ("_address", "_buf", "_codes", "_leftover")

    def __init__(self, codes: AddressCodes = SOCKS_CODES) -> None:
        self._buf = bytearray()
        self._codes = codes
        self._address: Address | None = None
        self._leftover = b""

    @property
    def address(self) -> Address | None:
        """The decoded address, once complete."""
        return self._address

    @property
    def leftover(self) -> bytes:
        """Bytes received after the address (empty until the address is complete)."""
        return self._leftover

    def feed(self, data: Buffer) -> Address | None:
        """Add ``data``; return the address once complete, else None."""
        if self._address is not None:
            raise LocalProtocolError("address already complete; read .leftover instead")
        if not self._buf:
            result = decode_address(data, 0, self._codes)
            if result is None:
                # Incomplete means shorter than one address, so this stays bounded.
                self._buf += data
                return None
            self._address, end = result
            self._leftover = bytes(data[end:])
            return self._address
        take = MAX_ADDRESS_SIZE - len(self._buf)
        self._buf += data[:take]
        result = decode_address(self._buf, 0, self._codes)
        if result is None:
            return None
        self._address, end = result
        self._leftover = bytes(self._buf[end:]) + bytes(data[take:])
        self._buf = bytearray()
        return self._address


__all__ = [
    "MAX_ADDRESS_SIZE",
    "SOCKS_CODES",
    "Address",
    "AddressCodes",
    "AddressReader",
    "decode_address",
]
