"""A man in the middle: a TLS server with its own self-signed certificate that records
every byte a client sends it after the handshake.

    async with Impostor(tmp_path, port) as mitm:
        ... point a client at 127.0.0.1:mitm.port ...
        await wait_until(lambda: mitm.connections)
    assert mitm.received == b""

It runs TLS by hand over memory BIOs, so a client that aborts the handshake (Go checks a
pin before its Finished) is still counted in ``connections`` and ``hellos``.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from types import TracebackType

from anytls.aio.tls import generate_self_signed

__all__ = ["Impostor"]


class Impostor:
    """The impostor server (async context manager); port 0 picks a free one."""

    def __init__(self, workdir: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = generate_self_signed([host, "localhost"])
        (workdir / "mitm.crt").write_bytes(cert_pem)
        (workdir / "mitm.key").write_bytes(key_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(workdir / "mitm.crt", workdir / "mitm.key")
        self.host, self.port = host, port
        #: TCP connections accepted.
        self.connections = 0
        #: Connections whose first bytes were a TLS handshake record (a ClientHello).
        self.hellos = 0
        #: Handshakes completed (the client accepted this certificate, as far as TLS went).
        self.handshakes = 0
        #: Connections that ended (any way).
        self.ended = 0
        #: Every application byte received, all connections together.
        self.received = bytearray()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()

    def _factory(self) -> asyncio.Protocol:
        return _ImpostorProtocol(self)

    async def __aenter__(self) -> Impostor:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for transport in list(self._transports):
            transport.abort()


class _ImpostorProtocol(asyncio.Protocol):
    """TLS by hand over memory BIOs, so every byte and every stage is seen."""

    def __init__(self, owner: Impostor) -> None:
        self.owner = owner
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = owner.ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.transport: asyncio.Transport | None = None
        self.first = True
        self.shaken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.owner.connections += 1
        self.owner._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.first:
            self.first = False
            if data[:1] == b"\x16":
                self.owner.hellos += 1
        self.incoming.write(data)
        try:
            if not self.shaken:
                try:
                    self.tls.do_handshake()
                except ssl.SSLWantReadError:
                    return
                finally:
                    if pending := self.outgoing.read():
                        self.transport.write(pending)
                self.shaken = True
                self.owner.handshakes += 1
            while True:
                try:
                    chunk = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                if not chunk:
                    break
                self.owner.received.extend(chunk)
        except (ssl.SSLError, ssl.SSLZeroReturnError):
            self.transport.abort()
        if pending := self.outgoing.read():
            self.transport.write(pending)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.ended += 1
        if self.transport is not None:
            self.owner._transports.discard(self.transport)
