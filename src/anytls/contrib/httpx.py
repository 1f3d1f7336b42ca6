"""httpx over AnyTLS, with no local proxy port (``pip install 'anytls[httpx]'``)::

    import httpx
    from anytls.contrib.httpx import AnyTLSTransport

    async with httpx.AsyncClient(
        transport=AnyTLSTransport("anytls://password@server:443/", http2=True)
    ) as http:
        response = await http.get("https://example.com/")

Every connection of httpx's pool is one AnyTLS stream of one pooled :class:`anytls.Client`
(streams of many connections share its sessions); TLS to the destination, HTTP/1.1 and
HTTP/2 (ALPN) are httpx's and httpcore's as usual. httpx's timeouts apply (``connect``
covers opening the stream and the server's answer), cancellation closes the stream, and
closing the transport (``AsyncClient.aclose()`` or leaving ``async with``) closes the pool
and — unless an existing :class:`Client` was passed in — the AnyTLS sessions.

:class:`AnyTLSNetworkBackend` is the layer below, for code that drives ``httpcore``
directly: ``httpcore.AsyncConnectionPool(network_backend=AnyTLSNetworkBackend(client))``.
"""

# httpcore's interface takes timeout arguments.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import ssl
import typing
from types import TracebackType

import httpcore
import httpx

from ..aio.client import Client
from ..aio.stream import Stream
from ..core.address import Address
from ..errors import AnyTLSError
from ._common import ServerSpec, client_from, start_tls

__all__ = ["AnyTLSNetworkBackend", "AnyTLSNetworkStream", "AnyTLSTransport"]

_READ_LIMIT = 2**18
_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def _attach(transport: asyncio.Transport) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    protocol.connection_made(transport)
    transport.set_protocol(protocol)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class AnyTLSNetworkStream(httpcore.AsyncNetworkStream):
    """One connection of httpcore's pool: an AnyTLS stream, with TLS on it once
    :meth:`start_tls` ran."""

    def __init__(self, stream: Stream, destination: Address) -> None:
        self._stream = stream
        self._destination = destination
        self._reader, self._writer = _attach(stream)
        self._tls: asyncio.Transport | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at the end of the stream."""
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(f"no data from {self._destination} in {timeout} s") from exc
        except (OSError, AnyTLSError, ssl.SSLError) as exc:
            raise httpcore.ReadError(f"reading from {self._destination}: {exc}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Send ``buffer``, waiting while the session is congested."""
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(f"writing to {self._destination} timed out") from exc
        except (OSError, AnyTLSError, ssl.SSLError) as exc:
            raise httpcore.WriteError(f"writing to {self._destination}: {exc}") from exc

    async def aclose(self) -> None:
        """Close TLS (close_notify) and the AnyTLS stream (FIN) at once."""
        self._writer.close()
        self._stream.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """TLS to the destination inside the stream (httpcore passes ALPN in the context)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            tls = await start_tls(self._stream, protocol, ssl_context, server_hostname, timeout)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(
                f"TLS handshake with {self._destination} timed out after {timeout} s"
            ) from exc
        except (OSError, ssl.SSLError, AnyTLSError) as exc:
            raise httpcore.ConnectError(
                f"TLS handshake with {self._destination} failed: {exc}"
            ) from exc
        self._tls = tls
        # A StreamWriter closes its transport when collected: keep the plain one alive.
        self._plain = (self._reader, self._writer)
        self._reader = reader
        self._writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        """``ssl_object`` (after TLS), ``is_readable`` (the peer closed or sent data on an
        idle connection), ``server_addr`` (the destination), ``stream_id``."""
        if info == "ssl_object":
            return self._tls.get_extra_info("ssl_object") if self._tls is not None else None
        if info == "is_readable":
            return self._reader.at_eof() or self._reader.exception() is not None
        if info == "server_addr":
            return (self._destination.host, self._destination.port)
        if info == "stream_id":
            return self._stream.stream_id
        return None


class AnyTLSNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend whose TCP connections are streams of ``client``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Open a stream to ``host:port`` and wait for the server's answer.

        The server resolves ``host``; ``local_address`` and ``socket_options`` do not apply
        to a tunnelled stream and are ignored.
        """
        destination = Address(host, port)
        try:
            async with asyncio.timeout(timeout):
                stream = await self.client.open_stream_acknowledged(destination)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(
                f"opening {destination} through the AnyTLS server timed out after {timeout} s"
            ) from exc
        except (AnyTLSError, OSError) as exc:
            raise httpcore.ConnectError(f"cannot open {destination}: {exc}") from exc
        return AnyTLSNetworkStream(stream, destination)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Not possible: AnyTLS carries TCP streams only."""
        raise httpcore.ConnectError(f"cannot reach the Unix socket {path} through AnyTLS")

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` (httpcore's retry back-off)."""
        await asyncio.sleep(seconds)


class AnyTLSTransport(httpx.AsyncHTTPTransport):
    """An ``httpx`` transport whose connections go through an AnyTLS server.

    ``server`` is an ``anytls://`` link, a :class:`~anytls.ClientConfig`, or a
    :class:`~anytls.Client` to share (then it stays open when the transport closes).
    ``verify``, ``cert``, ``trust_env``, ``http1``, ``http2``, ``limits`` and ``retries``
    mean what they mean for :class:`httpx.AsyncHTTPTransport`; ``verify`` is about the
    destination's certificate (the AnyTLS server's is the link's business).
    """

    def __init__(
        self,
        server: ServerSpec,
        *,
        verify: ssl.SSLContext | str | bool = True,
        cert: str | tuple[str, str] | tuple[str, str, str] | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = _DEFAULT_LIMITS,
        retries: int = 0,
    ) -> None:
        self.client, self._owns_client = client_from(server)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            retries=retries,
            network_backend=AnyTLSNetworkBackend(self.client),
        )

    async def aclose(self) -> None:
        """Close the connection pool, then the AnyTLS sessions if this transport made them."""
        try:
            await super().aclose()
        finally:
            if self._owns_client:
                await self.client.close()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
