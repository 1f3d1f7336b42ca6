"""ClientHello capture and JA4 (FoxIO's TLS client fingerprint), written from the spec.

:class:`HelloCapture` is a plain TCP server that reads each client's first TLS handshake
message (the ClientHello, possibly spread over several records), parses it and closes the
connection. :func:`ja4` computes the fingerprint:

``t`` + TLS version (highest in supported_versions, else the hello's version) + ``d``/``i``
(SNI present or not) + cipher count + extension count (2 digits each, GREASE not counted)
+ first and last character of the first ALPN value (``00`` without ALPN; the first and
last hex digit when one of them is not alphanumeric) ``_`` 12 hex of SHA-256 over the
sorted ciphers ``_`` 12 hex of SHA-256 over the sorted extensions without SNI and ALPN,
``_`` and the signature algorithms in their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from dataclasses import dataclass, field

__all__ = ["ClientHello", "HelloCapture", "is_grease", "ja4", "parse_client_hello"]

_VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}


def is_grease(value: int) -> bool:
    """RFC 8701 GREASE values: 0x0a0a, 0x1a1a, ... 0xfafa."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass
class ClientHello:
    """The parts of a ClientHello that fingerprints use (GREASE kept, in wire order)."""

    legacy_version: int
    ciphers: list[int]
    extensions: list[int]
    sni: str | None = None
    alpn: list[bytes] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)
    signature_algorithms: list[int] = field(default_factory=list)
    size: int = 0
    """Length of the handshake message (bytes)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def vec(self, length_bytes: int) -> bytes:
        return self.take(int.from_bytes(self.take(length_bytes), "big"))


def _u16_list(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)]


def parse_client_hello(message: bytes) -> ClientHello:
    """Parse a handshake message (type 1 + 3-byte length + body)."""
    r = _Reader(message)
    if r.u8() != 1:
        raise ValueError("not a ClientHello")
    body = _Reader(r.take(int.from_bytes(r.take(3), "big")))
    legacy_version = body.u16()
    body.take(32)  # random
    body.vec(1)  # session id
    ciphers = _u16_list(body.vec(2))
    body.vec(1)  # compression methods
    hello = ClientHello(legacy_version, ciphers, [], size=len(message))
    if body.pos == len(body.data):
        return hello
    exts = _Reader(body.vec(2))
    while exts.pos < len(exts.data):
        ext_type = exts.u16()
        data = exts.vec(2)
        hello.extensions.append(ext_type)
        if ext_type == 0x0000 and len(data) > 5:  # server_name: list, type, name
            hello.sni = _Reader(data[3:]).vec(2).decode("ascii", "replace")
        elif ext_type == 0x0010:
            alpn = _Reader(_Reader(data).vec(2))
            while alpn.pos < len(alpn.data):
                hello.alpn.append(alpn.vec(1))
        elif ext_type == 0x002B:
            hello.supported_versions = _u16_list(data[1:])
        elif ext_type == 0x000D:
            hello.signature_algorithms = _u16_list(_Reader(data).vec(2))
    return hello


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def _alpn_chars(alpn: list[bytes]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    value = alpn[0]
    first, last = value[0], value[-1]
    if chr(first).isalnum() and chr(last).isalnum() and first < 128 and last < 128:
        return chr(first) + chr(last)
    text = value.hex()
    return text[0] + text[-1]


def ja4(hello: ClientHello, transport: str = "t") -> str:
    """The JA4 fingerprint of ``hello`` (``transport``: ``t`` TCP, ``q`` QUIC)."""
    versions = [v for v in hello.supported_versions if not is_grease(v)]
    version = _VERSIONS.get(max(versions) if versions else hello.legacy_version, "00")
    ciphers = [c for c in hello.ciphers if not is_grease(c)]
    extensions = [e for e in hello.extensions if not is_grease(e)]
    a = (
        f"{transport}{version}{'d' if hello.sni else 'i'}"
        f"{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{_alpn_chars(hello.alpn)}"
    )
    b = _hash12(",".join(sorted(f"{c:04x}" for c in ciphers)))
    listed = ",".join(sorted(f"{e:04x}" for e in extensions if e not in (0x0000, 0x0010)))
    sigs = ",".join(f"{s:04x}" for s in hello.signature_algorithms if not is_grease(s))
    c = _hash12(f"{listed}_{sigs}" if sigs else listed)
    return f"{a}_{b}_{c}"


class HelloCapture:
    """A TCP server that records every client's ClientHello, then hangs up."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.hellos: list[ClientHello] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HelloCapture:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def wait_for(self, count: int, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` hellos were captured."""
        async with asyncio.timeout(timeout):
            while len(self.hellos) < count:
                self.arrived.clear()
                await self.arrived.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = b""
            while len(message) < 4 or len(message) < 4 + int.from_bytes(message[1:4], "big"):
                header = await reader.readexactly(5)
                if header[0] != 22:  # not a handshake record
                    return
                message += await reader.readexactly(int.from_bytes(header[3:5], "big"))
            self.hellos.append(parse_client_hello(message))
            self.arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
