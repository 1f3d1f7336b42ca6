"""One local port for SOCKS5 and HTTP proxy clients, told apart by the first byte.

``0x05`` starts SOCKS5 (CONNECT, and UDP ASSOCIATE when a UDP handler is installed);
anything else is read as an HTTP proxy request (CONNECT, or an absolute-URI request that
is forwarded in origin form). The handshake runs in a plain protocol on the accepted
transport. By default a CONNECT is answered at once and the transport handed to an
:class:`~anytls.aio.early.EarlyRelay`, so the application's first bytes leave with the SYN
(no round trip to the server first, as the Go clients do; a destination the server cannot
reach then ends the local connection with a reset). With
``ClientConfig.wait_for_synack`` the reply waits for the server's answer instead, so
failures get real SOCKS/HTTP error codes. Either way the transport ends up spliced to the
stream: the relay path has no task and no ``StreamReader``. Absolute-URI requests are the
exception: :class:`~anytls.inbound.http_forward.HttpForwardRelay` keeps the local
connection (and the stream to each origin) alive from one request to the next.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ..aio.client import Client, PendingOpen
from ..aio.diagnose import hint
from ..aio.early import EarlyRelay
from ..aio.relay import splice
from ..aio.stream import Stream
from ..core.address import Address
from ..core.http_proxy import HttpProxyRequest, check_basic_auth, parse_request_head, response
from ..core.socks5 import Command, Reply, Socks5Handshake, reply
from ..errors import (
    AnyTLSError,
    FailureReason,
    ProtocolError,
    SessionClosedError,
    StreamOpenError,
)
from .http_forward import HttpForwardRelay

log = logging.getLogger("anytls.inbound")

#: Seconds a local client has to finish its SOCKS5/HTTP handshake.
HANDSHAKE_TIMEOUT = 30.0
#: Connections the kernel queues for the listener before it accepts them (a browser or a
#: benchmark opening a few hundred at once must not lose SYNs).
LISTEN_BACKLOG = 4096
#: Bytes a local client may send after its request, before the reply, that are buffered
#: for the stream; past this, reading pauses until the stream is connected.
EARLY_DATA_LIMIT = 256 * 1024

UdpHandler = Callable[[asyncio.Transport, Address], Coroutine[Any, Any, None]]
OpenCallback = Callable[[Stream | None, AnyTLSError | None], None]
_SOCKS_SUCCEEDED = reply(Reply.SUCCEEDED)


#: The SOCKS5 reply for each way a destination can fail (PROTOCOL.md; RFC 1928 §6).
SOCKS_REPLIES: dict[FailureReason, Reply] = {
    FailureReason.REFUSED: Reply.CONNECTION_REFUSED,
    FailureReason.TIMED_OUT: Reply.TTL_EXPIRED,
    FailureReason.NETWORK_UNREACHABLE: Reply.NETWORK_UNREACHABLE,
    FailureReason.HOST_UNREACHABLE: Reply.HOST_UNREACHABLE,
    FailureReason.NOT_ALLOWED: Reply.NOT_ALLOWED,
    FailureReason.OTHER: Reply.GENERAL_FAILURE,
}


def socks_reply_for(error: BaseException) -> Reply:
    """The SOCKS5 reply code for ``error``.

    Only a destination the server tried (:class:`StreamOpenError`) gets a specific code:
    when our session to the AnyTLS server failed (down, TLS or auth failure) the
    destination was never tried, and "connection refused" etc. would blame it falsely.
    """
    if isinstance(error, StreamOpenError):
        return SOCKS_REPLIES[error.reason]
    return Reply.GENERAL_FAILURE


def http_status_for(error: BaseException) -> tuple[int, str]:
    """The HTTP status for ``error``: 504 when something timed out, else 502."""
    if isinstance(error, StreamOpenError | SessionClosedError) and (
        error.reason is FailureReason.TIMED_OUT
    ):
        return 504, "Gateway Timeout"
    return 502, "Bad Gateway"


def _socks_failure(error: AnyTLSError) -> bytes:
    return reply(socks_reply_for(error))


def _http_failure(error: AnyTLSError) -> bytes:
    # A short text body, so a browser shows the reason instead of an empty page.
    return response(*http_status_for(error), body=f"anytls-client: {error}{hint(error)}\n")


class _Handshake(asyncio.Protocol):
    def __init__(self, inbound: MixedInbound) -> None:
        self.inbound = inbound
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.socks: Socks5Handshake | None = None
        self.http = False
        self.task: asyncio.Task[None] | None = None
        self.pending: PendingOpen | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer = "?"
        self.address: Address | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._timeout)
        self.inbound.handshakes.add(self)

    def _timeout(self) -> None:
        log.info("local client %s: handshake timed out", self.peer)
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.pending is not None:
            self.pending.cancel()  # the local client left before the server answered

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.inbound.handshakes.discard(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.task is not None or self.pending is not None:
            # Early data while the server dials: kept for the stream, within a bound.
            self.buf += data
            if len(self.buf) > EARLY_DATA_LIMIT:
                self.transport.pause_reading()
            return
        try:
            if self.socks is None and not self.http:
                if data[:1] == b"\x05":
                    self.socks = Socks5Handshake(self.inbound.auth)
                else:
                    self.http = True
            if self.socks is not None:
                self._socks(data)
            else:
                self._http(data)
        except ProtocolError as exc:
            log.info("local client %s: %s", self.peer, exc)
            if self.http and self.transport is not None and not self.transport.is_closing():
                # An HTTP client gets the reason (e.g. a browser pointed at the proxy port).
                self.transport.write(response(400, "Bad Request", body=f"anytls-client: {exc}\n"))
            self._abort()

    def _socks(self, data: bytes) -> None:
        assert self.socks is not None and self.transport is not None
        out = self.socks.receive_data(data)
        if out:
            self.transport.write(out)
        if self.socks.failed:
            log.info("local client %s: %s", self.peer, self.socks.failed)
            self._abort()
            return
        request = self.socks.request
        if request is None:
            return
        command, address = request
        self.buf += self.socks.leftover
        if command == Command.CONNECT:
            if self.inbound.client.config.wait_for_synack:
                self._open(address, self._socks_opened)
            else:
                self.transport.write(_SOCKS_SUCCEEDED)
                self._relay_early("CONNECT", address, bytes(self.buf), None)
        elif command == Command.UDP_ASSOCIATE and self.inbound.udp_handler is not None:
            self._done()
            self.transport.pause_reading()
            self.task = asyncio.get_running_loop().create_task(
                self.inbound.udp_handler(self.transport, address)
            )
        else:
            log.info(
                "local client %s: SOCKS5 %s to %s is not supported (CONNECT and UDP ASSOCIATE are)",
                self.peer,
                command.name,
                address,
            )
            self.transport.write(reply(Reply.COMMAND_NOT_SUPPORTED))
            self._abort()

    def _http(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        received = bytes(self.buf)
        request = parse_request_head(received)
        if request is None:
            return
        self.buf = bytearray(request.leftover)
        creds = self.inbound.auth
        if creds is not None and not (
            request.proxy_authorization
            and check_basic_auth(request.proxy_authorization, creds[0], creds[1])
        ):
            self.transport.write(response(407, "Proxy Authentication Required"))
            self._abort()
            return
        if not request.is_connect and not request.upgrade and not request.host_added:
            # A plain absolute-URI request: kept alive, request by request, with the
            # stream to its origin kept for the next request to the same origin.
            self._done()
            HttpForwardRelay(self.inbound, self.transport, self.peer, received, _http_failure)
        elif self.inbound.client.config.wait_for_synack:
            self._open(request.target, lambda s, exc: self._http_opened(request, s, exc))
        elif request.is_connect:
            self.transport.write(response(200, "Connection established"))
            self._relay_early(request.method, request.target, bytes(self.buf), None)
        else:
            # Nothing has been answered yet: a failure can still be a 502/504.
            initial = request.forward_head + self.buf
            self._relay_early(request.method, request.target, initial, _http_failure)

    def _relay_early(
        self,
        method: str,
        address: Address,
        initial: bytes,
        failure: Callable[[AnyTLSError], bytes] | None,
    ) -> None:
        """Tunnel without waiting for the server (see :class:`EarlyRelay`)."""
        assert self.transport is not None
        self._done()
        self.address = address
        self.buf = bytearray()
        log.debug("local client %s: %s %s", self.peer, method, address)
        label = f"local client {self.peer}: {method}"
        relay = EarlyRelay(
            self.inbound.client, address, self.transport, initial, label=label, failure=failure
        )
        relay.start()

    def eof_received(self) -> bool:
        if self.pending is not None:
            # Gone before the server answered (reading stays on while it dials, so this is
            # noticed): abandon the stream now rather than when the dial ends.
            log.info("local client %s: left before %s was connected", self.peer, self.address)
            self.pending.cancel()
            self.pending = None
        return False

    def _open(self, address: Address, then: OpenCallback) -> None:
        assert self.transport is not None
        if len(self.buf) > EARLY_DATA_LIMIT:
            self.transport.pause_reading()
        self.address = address
        self.pending = self.inbound.client.open_stream_then(address, then)

    def _socks_opened(self, stream: Stream | None, exc: AnyTLSError | None) -> None:
        self._opened("CONNECT", stream, exc, _socks_failure, self._socks_start)

    def _socks_start(self, stream: Stream) -> None:
        assert self.transport is not None
        self.transport.write(_SOCKS_SUCCEEDED)

    def _http_opened(
        self, request: HttpProxyRequest, stream: Stream | None, exc: AnyTLSError | None
    ) -> None:
        def start(stream: Stream) -> None:
            assert self.transport is not None
            if request.is_connect:
                self.transport.write(response(200, "Connection established"))
            else:
                stream.write(request.forward_head)

        self._opened(request.method, stream, exc, _http_failure, start)

    def _opened(
        self,
        method: str,
        stream: Stream | None,
        exc: AnyTLSError | None,
        failure: Callable[[AnyTLSError], bytes],
        start: Callable[[Stream], None],
    ) -> None:
        """The stream open ended: answer the local client, then relay or close."""
        assert self.transport is not None
        self.pending = None
        self._done()
        if stream is None:
            error = exc or AnyTLSError("failed")
            if isinstance(error, SessionClosedError):
                # The server could not be reached or refused us: say why, once a minute.
                self.inbound.client.failures.report(f"{method} {self.address} failed", error)
            else:
                log.info(
                    "local client %s: %s %s failed: %s%s",
                    self.peer,
                    method,
                    self.address,
                    error,
                    hint(error),
                )
            if not self.transport.is_closing():
                self.transport.write(failure(error))
                self._abort()
            return
        if self.transport.is_closing():
            stream.close()
            return
        log.debug("local client %s: %s %s", self.peer, method, self.address)
        start(stream)
        self._splice(stream)

    def _splice(self, stream: Stream) -> None:
        assert self.transport is not None
        initial, self.buf = bytes(self.buf), bytearray()
        splice(self.transport, stream, initial)
        self.transport.resume_reading()


class MixedInbound:
    """SOCKS5 + HTTP proxy listener that tunnels through a :class:`Client`."""

    def __init__(
        self,
        client: Client,
        auth: tuple[str, str] | None = None,
        udp_handler: UdpHandler | None = None,
    ) -> None:
        self.client = client
        self.auth = auth
        self.udp_handler = udp_handler
        self.handshakes: set[_Handshake] = set()
        self.server: asyncio.Server | None = None
        self.extra_servers: list[asyncio.Server] = []

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        """Start listening (``reuse_port``: share the port with other processes).

        ``sockets``: accept on these listening sockets (bound before forking workers).
        """
        loop = asyncio.get_running_loop()
        if sockets:
            # create_server listens again on a given socket, with its own backlog
            # (100 by default): a burst of more connections than that would lose SYNs
            # and wait a second for their retransmission.
            self.server = await loop.create_server(
                lambda: _Handshake(self), sock=sockets[0], backlog=LISTEN_BACKLOG
            )
            for sock in sockets[1:]:
                self.extra_servers.append(
                    await loop.create_server(
                        lambda: _Handshake(self), sock=sock, backlog=LISTEN_BACKLOG
                    )
                )
            return
        self.server = await loop.create_server(
            lambda: _Handshake(self),
            host,
            port,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
            reuse_port=reuse_port or None,
        )

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop connections still in their handshake."""
        servers = [s for s in (self.server, *self.extra_servers) if s is not None]
        for server in servers:
            server.close()
        for hs in list(self.handshakes):
            hs._abort()
        for server in servers:
            await server.wait_closed()


__all__ = [
    "MixedInbound",
    "SessionClosedError",
    "StreamOpenError",
    "http_status_for",
    "socks_reply_for",
]
