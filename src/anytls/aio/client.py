"""The AnyTLS client: sessions to one server, a simple pool, and the stream API.

:class:`Client` opens TLS sessions on demand, reuses idle ones newest first (one active
stream per session, as the Go clients do), and remembers a padding scheme the server pushed
so every later session uses it. :meth:`Client.open_stream` is 0-RTT: the SYN and the
destination go out at once; :meth:`Client.open_connection` waits for the server's SYNACK
when the server speaks protocol v2, so a refused destination is an exception, not a
silently closed socket.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from dataclasses import dataclass

from .. import __version__
from ..core.address import Address
from ..core.events import (
    AlertReceived,
    Event,
    PaddingSchemeRejected,
    PaddingSchemeUpdated,
    ServerSettingsReceived,
    StreamAcknowledged,
)
from ..core.padding import PaddingScheme
from ..core.session import Session
from ..errors import SessionClosedError, StreamOpenError
from .connection import SessionConnection
from .stream import Stream

log = logging.getLogger("anytls.client")

CLIENT_NAME = f"anytls-py/{__version__}"


@dataclass
class ClientConfig:
    """Settings of an AnyTLS client."""

    server_host: str
    server_port: int
    password: str
    sni: str | None = None
    """TLS server name; ``None`` uses the server host (no SNI when it is an IP)."""
    insecure: bool = False
    """Skip certificate verification."""
    connect_timeout: float = 10.0
    """Seconds for TCP connect plus TLS handshake to the server."""
    ack_timeout: float = 15.0
    """Seconds to wait for a v2 server's SYNACK in :meth:`Client.open_connection`."""
    version_probe_timeout: float = 1.0
    """Seconds a first session waits to learn whether the server speaks v2."""
    idle_session_timeout: float = 30.0
    idle_session_check_interval: float = 30.0
    min_idle_session: int = 0
    reuse_sessions: bool = True
    version: int = 2
    """Protocol version to advertise (1 only for testing v1 interop)."""
    client_name: str = CLIENT_NAME


class ClientConnection(SessionConnection):
    """One TLS session to the server, as seen by the client."""

    def __init__(self, client: Client, seq: int) -> None:
        super().__init__(
            Session.client(client.config.password, padding=client.padding,
                           client_name=client.config.client_name, version=client.config.version)
        )
        self.client = client
        self.seq = seq
        self.idle_since = 0.0
        #: Resolved with the peer's version once it is known (ServerSettings or data).
        self.version_known: asyncio.Future[int] = self.loop.create_future()

    def open_stream(self, destination: Address) -> Stream:
        """Open a stream to ``destination`` (0-RTT: nothing is awaited)."""
        stream_id = self.core.open_stream(destination.encode())
        stream = self.add_stream(stream_id)
        self.schedule_flush()
        return stream

    def handle_events(self, events: list[Event]) -> None:
        super().handle_events(events)
        if not self.version_known.done() and self.core.frames_received:
            self._learn_version(self.core.peer_version or 1)

    def _learn_version(self, version: int) -> None:
        if not self.version_known.done():
            self.version_known.set_result(version)
            self.client.server_version = version

    def handle_event(self, event: Event) -> None:
        if type(event) is StreamAcknowledged:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._acked(event.error)
                if event.error is not None:
                    self.streams.pop(event.stream_id, None)
                    stream._lose(StreamOpenError(f"remote: {event.error}"))
                    self.stream_closed(stream)
        elif type(event) is ServerSettingsReceived:
            self._learn_version(event.peer_version)
        elif type(event) is PaddingSchemeUpdated:
            log.info("server pushed a new padding scheme (md5 %s)", event.scheme.md5)
            self.client.padding = event.scheme
        elif type(event) is PaddingSchemeRejected:
            log.warning("ignored the server's padding scheme: %s", event.reason)
        elif type(event) is AlertReceived:
            log.warning("[Alert from server] %s", event.message)

    def stream_closed(self, stream: Stream) -> None:
        self.client._stream_closed(self)

    def session_closed(self, reason: str) -> None:
        if not self.version_known.done():
            self.version_known.cancel()
        self.client._session_closed(self, reason)


class Client:
    """Sessions to one AnyTLS server."""

    def __init__(self, config: ClientConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        from .tls import client_context

        self.config = config
        self.ssl_context = ssl_context or client_context(insecure=config.insecure)
        self.padding = PaddingScheme.default()
        #: The server's protocol version once a session learned it (0 = unknown).
        self.server_version = 0
        self.sessions: set[ClientConnection] = set()
        self.idle: list[ClientConnection] = []
        self.sessions_opened = 0
        self._seq = itertools.count(1)
        self._reaper: asyncio.TimerHandle | None = None
        self._closed = False

    # ---------------------------------------------------------------- sessions
    async def _new_session(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        config = self.config
        server_hostname = config.sni if config.sni is not None else config.server_host
        seq = next(self._seq)
        try:
            async with asyncio.timeout(config.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: ClientConnection(self, seq), config.server_host, config.server_port,
                    ssl=self.ssl_context, server_hostname=server_hostname or None,
                    ssl_handshake_timeout=config.connect_timeout,
                )
        except TimeoutError as exc:
            raise SessionClosedError(
                f"connecting to {config.server_host}:{config.server_port} timed out "
                f"after {config.connect_timeout:.0f} s"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise SessionClosedError(
                f"the certificate of {config.server_host}:{config.server_port} failed "
                f"verification ({exc.verify_message}); use insecure=1 for a self-signed server"
            ) from exc
        except OSError as exc:
            raise SessionClosedError(
                f"cannot connect to {config.server_host}:{config.server_port}: {exc}"
            ) from exc
        conn.core.initiate()
        conn.flush()
        self.sessions.add(conn)
        self.sessions_opened += 1
        log.debug("session %d to %s:%d opened", seq, config.server_host, config.server_port)
        self._arm_reaper()
        return conn

    async def _acquire(self) -> ClientConnection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.is_closed:
                return conn
        return await self._new_session()

    def _stream_closed(self, conn: ClientConnection) -> None:
        if conn.streams or conn.is_closed or self._closed:
            return
        if not self.config.reuse_sessions:
            conn.close("reuse disabled")
            return
        conn.idle_since = conn.loop.time()
        if conn not in self.idle:
            self.idle.append(conn)
            self.idle.sort(key=lambda c: c.seq)

    def _session_closed(self, conn: ClientConnection, reason: str) -> None:
        self.sessions.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        log.debug("session %d closed: %s", conn.seq, reason)

    def _arm_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            interval = self.config.idle_session_check_interval
            self._reaper = asyncio.get_running_loop().call_later(interval, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        now = asyncio.get_running_loop().time()
        kept = 0
        for conn in sorted(self.idle, key=lambda c: c.seq, reverse=True):
            if now - conn.idle_since < self.config.idle_session_timeout:
                kept += 1
            elif kept < self.config.min_idle_session:
                kept += 1
                conn.idle_since = now
            else:
                self.idle.remove(conn)
                conn.close("idle timeout")
        if self.sessions:
            self._arm_reaper()

    # ---------------------------------------------------------------- streams
    async def open_stream(self, destination: Address) -> Stream:
        """Open a stream to ``destination`` without waiting for the server."""
        conn = await self._acquire()
        return conn.open_stream(destination)

    async def wait_acknowledged(self, stream: Stream) -> None:
        """Wait until the server reported that ``stream`` is connected.

        Raises :class:`StreamOpenError` with the server's reason on failure. A v1 server
        never acknowledges, so against one this returns as soon as that is known.
        """
        conn = stream.connection
        assert isinstance(conn, ClientConnection)
        timeout = self.config.ack_timeout
        if not conn.version_known.done():
            probe = (
                timeout if self.server_version >= 2 else self.config.version_probe_timeout
            )
            done, _ = await asyncio.wait(
                [conn.version_known, stream.acknowledged], timeout=probe,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                return  # nothing said v2: treat as a v1 server
        if stream.acknowledged.done() or conn.core.peer_version >= 2:
            try:
                async with asyncio.timeout(timeout):
                    error = await asyncio.shield(stream.acknowledged)
            except TimeoutError as exc:
                stream.close()
                raise StreamOpenError(
                    f"the server did not acknowledge the stream within {timeout:.0f} s"
                ) from exc
            if error is not None:
                stream.close()
                raise StreamOpenError(f"remote: {error}")

    async def open_connection(
        self, host: str, port: int, *, limit: int = 2**18
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a tunnelled TCP connection and return an asyncio stream pair."""
        stream = await self.open_stream(Address(host, port))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        stream.set_protocol(protocol)
        protocol.connection_made(stream)
        writer = asyncio.StreamWriter(stream, protocol, reader, loop)
        await self.wait_acknowledged(stream)
        return reader, writer

    async def close(self) -> None:
        """Close every session."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        conns = list(self.sessions)
        self.idle.clear()
        for conn in conns:
            conn.close("client closed")
        for conn in conns:
            try:
                async with asyncio.timeout(5):
                    await conn.wait_closed()
            except TimeoutError:
                conn.close("client closed", abort=True)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_connection(
    host: str, port: int, *, client: Client
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection to ``host:port`` through ``client``'s server."""
    return await client.open_connection(host, port)
