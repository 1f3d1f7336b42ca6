"""Look at a server's TLS handshake from the client side: the records of its first flight,
the ServerHello's cipher suite, key-share group and extensions, and the ALPN it selected.

    flight = first_flight("127.0.0.1", port, alpn=["h2", "http/1.1"])
    assert flight.group == "x25519" and flight.alpn == "http/1.1"

The client is CPython's ``ssl`` (memory BIOs over a plain socket), so every byte the
server sends before the client's Finished is seen as it arrived.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "GROUPS",
    "FirstFlight",
    "Rejection",
    "client_hello_alpn",
    "first_flight",
    "rejection",
    "split_records",
]

#: Named groups by code point (the ones that matter here).
GROUPS = {
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
    0x001D: "x25519",
    0x001E: "x448",
    0x11EC: "X25519MLKEM768",
}


def split_records(data: bytes) -> list[tuple[int, bytes]]:
    """Whole TLS records in ``data`` as ``(content_type, fragment)``."""
    out, pos = [], 0
    while pos + 5 <= len(data):
        length = struct.unpack_from(">H", data, pos + 3)[0]
        if pos + 5 + length > len(data):
            break
        out.append((data[pos], data[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def _extensions(data: bytes, pos: int) -> dict[int, bytes]:
    end = pos + 2 + struct.unpack_from(">H", data, pos)[0]
    pos += 2
    found = {}
    while pos + 4 <= end:
        ext, length = struct.unpack_from(">HH", data, pos)
        found[ext] = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
    return found


def client_hello_alpn(record: bytes) -> list[str] | None:
    """The ALPN list of the ClientHello in ``record`` (a whole TLS record), None if absent."""
    body = split_records(record)[0][1]
    assert body[0] == 1, "not a ClientHello"
    pos = 4 + 2 + 32
    pos += 1 + body[pos]  # session id
    pos += 2 + struct.unpack_from(">H", body, pos)[0]  # cipher suites
    pos += 1 + body[pos]  # compression methods
    alpn = _extensions(body, pos).get(16)
    if alpn is None:
        return None
    names, i = [], 2
    while i < len(alpn):
        names.append(alpn[i + 1 : i + 1 + alpn[i]].decode())
        i += 1 + alpn[i]
    return names


@dataclass
class FirstFlight:
    """What the server sent before the client's Finished."""

    #: ``(content_type, length)`` of each record.
    records: list[tuple[int, int]]
    #: Cipher suite code point of the ServerHello.
    suite: int
    #: Key-share group of the ServerHello (a name from :data:`GROUPS`, else hex).
    group: str | None
    #: Extension code points of the ServerHello, sorted.
    extensions: list[int]
    #: The negotiated ALPN protocol (None: none).
    alpn: str | None


def first_flight(host: str, port: int, alpn: Sequence[str] | None = None) -> FirstFlight:
    """Handshake with ``host:port`` (no verification) and report the server's first flight."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    received = bytearray()
    with socket.create_connection((host, port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if pending := outgoing.read():
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed during the handshake")
            received += data
            incoming.write(data)
        selected = tls.selected_alpn_protocol()
        if pending := outgoing.read():
            sock.sendall(pending)  # the client's Finished
    records = split_records(bytes(received))
    hello = records[0][1]
    assert records[0][0] == 22 and hello[0] == 2, "the first record is not a ServerHello"
    pos = 4 + 2 + 32
    pos += 1 + hello[pos]
    suite = struct.unpack_from(">H", hello, pos)[0]
    extensions = _extensions(hello, pos + 3)
    share = extensions.get(51)
    code = struct.unpack_from(">H", share)[0] if share else None
    group = None if code is None else GROUPS.get(code, hex(code))
    return FirstFlight(
        [(ctype, len(body)) for ctype, body in records], suite, group, sorted(extensions), selected
    )


@dataclass
class Rejection:
    """How a server ended a TLS connection whose first application bytes it refused."""

    #: The server sent close_notify.
    close_notify: bool
    #: The TCP connection ended with a reset (else a FIN).
    reset: bool
    #: Seconds from the refused bytes to the end of the TCP connection.
    seconds: float


def rejection(host: str, port: int, payload: bytes, timeout: float = 35.0) -> Rejection:
    """Handshake, send ``payload`` and read until the server ends the connection."""
    import time

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            if pending := outgoing.read():
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed during the handshake")
            incoming.write(data)
        tls.write(payload)
        sock.sendall(outgoing.read())
        started = time.monotonic()
        close_notify = reset = False
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                reset = True
                break
            if not data:
                break
            incoming.write(data)
            try:
                while tls.read(65536):
                    pass
                close_notify = True  # read() gives b"" once close_notify arrived
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                close_notify = True
        return Rejection(close_notify, reset, time.monotonic() - started)
