"""What the HTTP integrations share: a :class:`Client` from a link, and TLS over a stream.

TLS to the destination runs *inside* an AnyTLS stream. The stream is an
:class:`asyncio.Transport` (:class:`anytls.aio.stream.Stream`), so asyncio's own TLS
protocol (``asyncio.sslproto.SSLProtocol``, what ``loop.start_tls`` uses) is layered on it
directly. ``loop.start_tls`` itself is not used: it accepts only the loop's own socket
transports (uvloop's even more strictly), while the protocol object works on any.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from asyncio import sslproto
from typing import Any, cast

from ..aio.client import Client, ClientConfig
from ..errors import ConfigError
from ..uri import parse_uri

ServerSpec = str | ClientConfig | Client
"""An ``anytls://`` link, a :class:`ClientConfig`, or a :class:`Client` to share."""


def config_from_uri(uri: str, **overrides: Any) -> ClientConfig:
    """A :class:`ClientConfig` from an ``anytls://PASSWORD@HOST:PORT/?sni=..`` link.

    Every link parameter that has a :class:`ClientConfig` field of the same name is used
    (one the link leaves out keeps the field's default); ``overrides`` set any other field
    (``min_idle_session=2`` ...).
    """
    parsed = parse_uri(uri)
    if not parsed.password:
        raise ConfigError("the anytls:// link has no password (anytls://PASSWORD@host:port)")
    fields = {f.name for f in dataclasses.fields(ClientConfig)}
    shared = {
        f.name: getattr(parsed, f.name)
        for f in dataclasses.fields(parsed)
        if f.name in fields
        and f.name not in ("host", "port")
        and getattr(parsed, f.name) is not None
    }
    shared.update(overrides)
    return ClientConfig(parsed.host, parsed.port, **shared)


def client_from(server: ServerSpec) -> tuple[Client, bool]:
    """``(client, owned)``: a new :class:`Client` for a link or config (owned: the caller
    closes it), or the given one (not owned: its creator closes it)."""
    if isinstance(server, Client):
        return server, False
    if isinstance(server, str):
        return Client(config_from_uri(server)), True
    if isinstance(server, ClientConfig):
        return Client(server), True
    raise TypeError(
        f"expected an anytls:// link, a ClientConfig or a Client, not {type(server).__name__}"
    )


class _TLSCarrier(asyncio.Protocol):
    """The stream's protocol while TLS runs on it: hands the bytes to asyncio's
    ``SSLProtocol`` (a buffered protocol) and remembers why TLS gave up, if it did."""

    def __init__(self, stream: asyncio.Transport, tls: sslproto.SSLProtocol) -> None:
        self.stream = stream
        self.tls = tls
        self.error: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        tls = self.tls
        view = memoryview(data)
        while view:
            buffer = tls.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]

    def eof_received(self) -> bool | None:
        return cast(bool | None, self.tls.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        error = self.error
        if exc is None and isinstance(error, Exception):
            exc = error
        self.tls.connection_lost(exc)

    def pause_writing(self) -> None:
        self.tls.pause_writing()

    def resume_writing(self) -> None:
        self.tls.resume_writing()


class _TransportView(asyncio.Transport):
    """The stream as ``SSLProtocol`` expects its transport: it also calls the selector
    transports' ``_force_close`` on a fatal TLS error."""

    def __init__(self, stream: asyncio.Transport, carrier: _TLSCarrier) -> None:
        super().__init__()
        self._stream = stream
        self._carrier = carrier

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # As a socket transport does, drop what TLS still writes (a close_notify, say)
        # once the stream has ended, instead of raising inside the TLS protocol.
        if not self._stream.is_closing():
            self._stream.write(data)

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        self._stream.abort()

    def is_closing(self) -> bool:
        return self._stream.is_closing()

    def pause_reading(self) -> None:
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def is_reading(self) -> bool:
        return self._stream.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._stream.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._stream.get_extra_info(name, default)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._carrier.error is None:
            self._carrier.error = exc
        self._stream.close()


async def start_tls(
    stream: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    ssl_context: ssl.SSLContext,
    server_hostname: str | None,
    handshake_timeout: float | None = None,
) -> asyncio.Transport:
    """Run a TLS client handshake over ``stream`` and return the TLS transport.

    ``protocol`` becomes the TLS transport's protocol (its ``connection_made`` is called
    when the handshake completes). Raises :class:`ssl.SSLError` (certificate problems as
    :class:`ssl.SSLCertVerificationError`), :class:`ConnectionError` when the stream ends
    during the handshake and :class:`TimeoutError` after ``handshake_timeout`` seconds;
    the stream is closed on any failure, cancellation included.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = sslproto.SSLProtocol(
        loop,
        protocol,
        ssl_context,
        waiter,
        server_side=False,
        server_hostname=server_hostname,
    )
    carrier = _TLSCarrier(stream, tls)
    stream.set_protocol(carrier)
    tls.connection_made(_TransportView(stream, carrier))
    try:
        async with asyncio.timeout(handshake_timeout):
            await waiter
    except BaseException:
        stream.close()
        raise
    return cast(asyncio.Transport, tls._app_transport)
