"""Server side of SOCKS5 (RFC 1928) with username/password auth (RFC 1929), sans-IO.

Client → server, in order::

    greeting:  VER=05 | NMETHODS | METHODS...           → reply 05 METHOD (FF = none acceptable)
    auth:      VER=01 | ULEN | UNAME | PLEN | PASSWD     → reply 01 STATUS (00 ok, 01 failure)
               (only when method 02 was selected)
    request:   VER=05 | CMD | RSV | ATYP addr port       → reply 05 REP 00 ATYP BND.ADDR BND.PORT

The caller sends the final reply with :func:`reply` once it knows the outcome. UDP
ASSOCIATE datagrams carry ``RSV RSV FRAG ATYP addr port DATA``; fragments (FRAG ≠ 0) are
not supported and are dropped, as most servers do.
"""

from __future__ import annotations

import enum
import hmac

from ..errors import LocalProtocolError, RemoteProtocolError
from .address import Address, Buffer, decode_address

_NO_AUTH = 0x00
_USER_PASS = 0x02
_NO_ACCEPTABLE = 0xFF
_ATYPS = frozenset((0x01, 0x03, 0x04))


class Reply(enum.IntEnum):
    """SOCKS5 reply codes (REP)."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class Command(enum.IntEnum):
    """SOCKS5 request commands (CMD)."""

    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


_COMMANDS = frozenset(int(c) for c in Command)


class _Phase(enum.Enum):
    GREETING = enum.auto()
    AUTH = enum.auto()
    REQUEST = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


_UNSPECIFIED = Address("0.0.0.0", 0)


_UNSPECIFIED_ENCODED = _UNSPECIFIED.encode()


def reply(code: Reply, bind: Address | None = None) -> bytes:
    """Return the request reply ``05 REP 00 ATYP BND.ADDR BND.PORT`` (bind 0.0.0.0:0)."""
    return bytes((5, code, 0)) + (bind.encode() if bind else _UNSPECIFIED_ENCODED)


class Socks5Handshake:
    """SOCKS5 server handshake: feed client bytes, send back what :meth:`receive_data` returns.

    ``credentials=(user, password)`` requires RFC 1929 auth; None allows only "no auth".
    When :attr:`request` becomes non-None the handshake is over: reply with :func:`reply`
    and relay, starting with :attr:`leftover`. When :attr:`failed` is set, send the returned
    bytes and close.
    """

    __slots__ = ("_buf", "_credentials", "_phase", "failed", "leftover", "request")

    reply = staticmethod(reply)

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self._credentials = (
            None
            if credentials is None
            else (credentials[0].encode("utf-8"), credentials[1].encode("utf-8"))
        )
        self._phase = _Phase.GREETING
        self._buf = bytearray()
        #: ``(command, destination)`` once the request has been read.
        self.request: tuple[Command, Address] | None = None
        #: Bytes the client sent after the request.
        self.leftover = b""
        #: Why the handshake was refused (the returned bytes already say so to the client).
        self.failed: str | None = None

    def receive_data(self, data: Buffer) -> bytes:
        """Consume client bytes; return the bytes to send back (possibly empty)."""
        if self._phase is _Phase.DONE:
            raise LocalProtocolError("SOCKS5 handshake already complete; relay .leftover")
        if self._phase is _Phase.FAILED:
            return b""
        buf = self._buf
        buf += data
        out = bytearray()
        while True:
            phase = self._phase
            if phase is _Phase.GREETING:
                used = self._greeting(buf, out)
            elif phase is _Phase.AUTH:
                used = self._auth(buf, out)
            elif phase is _Phase.REQUEST:
                used = self._request(buf, out)
            else:
                break
            if not used:
                break
            del buf[:used]
        final: _Phase = self._phase  # the handlers above moved it on
        if final is _Phase.DONE:
            self.leftover = bytes(buf)
            buf.clear()
        elif final is _Phase.FAILED:
            buf.clear()
        return bytes(out)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._phase = _Phase.FAILED

    def _greeting(self, buf: bytearray, out: bytearray) -> int:
        if len(buf) < 2:
            return 0
        if buf[0] != 5:
            raise RemoteProtocolError(f"not SOCKS5: version byte 0x{buf[0]:02x}")
        n = buf[1]
        if len(buf) < 2 + n:
            return 0
        methods = buf[2 : 2 + n]
        wanted = _NO_AUTH if self._credentials is None else _USER_PASS
        if wanted in methods:
            out += bytes((5, wanted))
            self._phase = _Phase.REQUEST if wanted == _NO_AUTH else _Phase.AUTH
        else:
            out += bytes((5, _NO_ACCEPTABLE))
            offered = ", ".join(f"0x{m:02x}" for m in methods) or "none"
            need = "no-auth (0x00)" if wanted == _NO_AUTH else "username/password (0x02)"
            self._fail(f"SOCKS5 client offered methods {offered}; this proxy requires {need}")
        return 2 + n

    def _auth(self, buf: bytearray, out: bytearray) -> int:
        if len(buf) < 2:
            return 0
        if buf[0] != 1:
            raise RemoteProtocolError(f"SOCKS5 auth version 0x{buf[0]:02x}, expected 0x01")
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return 0
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return 0
        user = bytes(buf[2 : 2 + ulen])
        password = bytes(buf[3 + ulen : end])
        assert self._credentials is not None
        want_user, want_password = self._credentials
        # Evaluate both comparisons so timing does not reveal which one failed.
        ok = hmac.compare_digest(user, want_user) & hmac.compare_digest(password, want_password)
        if ok:
            out += b"\x01\x00"
            self._phase = _Phase.REQUEST
        else:
            out += b"\x01\x01"
            name = user.decode("utf-8", "replace")[:64]
            self._fail(f"SOCKS5 authentication failed for user {name!r}")
        return end

    def _request(self, buf: bytearray, out: bytearray) -> int:
        if len(buf) < 4:
            return 0
        if buf[0] != 5:
            raise RemoteProtocolError(f"SOCKS5 request version 0x{buf[0]:02x}, expected 0x05")
        cmd = buf[1]
        if cmd not in _COMMANDS:
            out += reply(Reply.COMMAND_NOT_SUPPORTED)
            self._fail(f"SOCKS5 command 0x{cmd:02x} is not supported")
            return len(buf)
        if buf[3] not in _ATYPS:
            out += reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
            self._fail(f"SOCKS5 address type 0x{buf[3]:02x} is not supported")
            return len(buf)
        try:
            result = decode_address(buf, 3)
        except RemoteProtocolError as exc:  # an empty name, a control character ...
            out += reply(Reply.GENERAL_FAILURE)
            self._fail(f"SOCKS5 request: {exc}")
            return len(buf)
        if result is None:
            return 0
        address, end = result
        self.request = (Command(cmd), address)
        self._phase = _Phase.DONE
        return end


def parse_udp_datagram(data: Buffer) -> tuple[Address, memoryview] | None:
    """Split a SOCKS5 UDP datagram into ``(destination, payload)``.

    Returns None for fragments (FRAG ≠ 0), which are dropped. Raises
    :class:`RemoteProtocolError` when the header is malformed or truncated.
    """
    view = memoryview(data)
    if len(view) < 4:
        raise RemoteProtocolError(f"SOCKS5 UDP datagram of {len(view)} bytes is too short")
    if view[2] != 0:
        return None
    result = decode_address(view, 3)
    if result is None:
        raise RemoteProtocolError("SOCKS5 UDP datagram header is truncated")
    address, end = result
    return address, view[end:]


def build_udp_datagram(address: Address, payload: Buffer) -> bytes:
    """Return ``00 00 00 ATYP addr port payload``."""
    return b"".join((b"\x00\x00\x00", address.encode(), payload))


__all__ = [
    "Command",
    "Reply",
    "Socks5Handshake",
    "build_udp_datagram",
    "parse_udp_datagram",
    "reply",
]
