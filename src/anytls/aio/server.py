"""The AnyTLS server: TLS listener, preface check, per-stream dial and relay.

Each accepted TLS connection gets a :class:`ServerConnection`. Until the preface names a
known user nothing is sent; a wrong password, a short or malformed preface, or silence
past the preface timeout gets one INFO line with the peer address and a close (no reply,
as every Go server does). Each stream's destination is read from the stream bytes, dialled
with a timeout, acknowledged with SYNACK (empty on success, the error text on failure,
v2 clients only) and then spliced to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..core.address import Address, AddressReader
from ..core.auth import UserTable, password_hash
from ..core.auth_limit import AuthFailureLimiter, source_key
from ..core.events import Authenticated, Event, SettingsReceived, StreamOpened
from ..core.padding import PaddingScheme
from ..core.proxy_protocol import V2_MAX, parse_proxy_header
from ..core.session import Session, SessionConfig
from ..core.uot import uot_version
from ..errors import AuthenticationError, RemoteProtocolError
from .buffers import shared_buffer
from .connection import SessionConnection
from .limits import DeviceLimitExceeded, Limiter, SessionThrottle, UserPolicy
from .outbound import DestinationDenied, resolve_allowed
from .relay import SocketSide, StreamSide, relay_to
from .stats import ServerStats, UserStats
from .stream import Stream
from .tls import ACME_TLS_ALPN
from .tls_transport import TlsServerTransport
from .uot_server import SESSION_HELD_LIMIT, UDP_IDLE_TIMEOUT, UotServerRelay

log = logging.getLogger("anytls.server")

#: Pending connections the kernel queues. asyncio's default of 100 overflows when a
#: sing-box client opens 200 sessions at once (measured: 1.1 s instead of 0.3 s).
LISTEN_BACKLOG = 4096
#: SO_LINGER on, 0 s: close() resets the connection at once.
_LINGER_RESET = struct.pack("ii", 1, 0)

#: Bytes kept from an unauthenticated client for replay to the fallback.
PREAUTH_LIMIT = 128 * 1024
#: Bytes a stream may buffer while its destination is being dialled before reads pause.
DIAL_BUFFER_LIMIT = 256 * 1024
#: Name lookups one session may have under way at once, the others waiting: the
#: resolver's threads are shared by every session, and one client asking for ever new
#: names (or a stalled resolver) must not take them all. Real clients carry one or a few
#: streams per session.
LOOKUPS_PER_SESSION = 8
_T = TypeVar("_T")
#: Bytes all the streams of one session may buffer while their destinations are being
#: dialled; past it the session's reads pause until the dial of the stream that crossed
#: it ends (1024 streams of DIAL_BUFFER_LIMIT each would otherwise be 256 MiB).
SESSION_DIAL_BUFFER_LIMIT = SESSION_HELD_LIMIT
#: Seconds a new stream may take to send its destination before it is closed.
DESTINATION_TIMEOUT = 10.0
#: Streams one session may hold open by default (sing-box and anytls-go clients carry one
#: at a time, ours a few during a burst): a bound on what one session can make the
#: server keep, not a limit real clients meet.
MAX_STREAMS_PER_SESSION = 1024


@dataclass
class ServerConfig:
    """Settings of an AnyTLS server."""

    users: Mapping[str, str]
    """User name → password."""
    padding: PaddingScheme = field(default_factory=PaddingScheme.default)
    """Scheme pushed to clients whose ``padding-md5`` differs."""
    connect_timeout: float = 5.0
    """Seconds to dial a destination before reporting failure."""
    handshake_timeout: float = 10.0
    """Seconds for the TLS handshake."""
    preface_timeout: float = 10.0
    """Seconds after the handshake for the auth preface to arrive."""
    max_streams_per_session: int = MAX_STREAMS_PER_SESSION
    """Streams a session may hold open at once (0 = no limit); those beyond get an error
    SYNACK."""
    idle_session_timeout: float = 600.0
    """Seconds a session with no open stream and no traffic is kept (0 = forever)."""
    heartbeat_interval: float = 0.0
    """Seconds of client silence before the server sends a heartbeat (v2 only; 0 = off)."""
    heartbeat_timeout: float = 10.0
    """Seconds to wait for the heartbeat answer before the session is closed."""
    udp_idle_timeout: float = UDP_IDLE_TIMEOUT
    """Seconds without a datagram before a UDP-over-TCP stream is closed."""
    allow_private: bool = False
    """Let streams reach loopback, private, link-local, CGNAT and ULA destinations (by
    default they are refused, checked after name resolution: an SSRF guard)."""
    deny_private: bool = False
    """Kept for compatibility: True refuses private destinations even with allow_private."""
    fallback: Address | None = None
    """Relay connections that fail authentication to this web server instead of closing."""
    stream_buffer: int = 256 * 1024
    """Bytes buffered towards one destination before the session's reads pause."""
    session_buffer: int = 1024 * 1024
    """Bytes buffered towards one client before its streams' sources pause."""
    accept_proxy_protocol: bool = False
    """Expect a PROXY protocol v1/v2 header (from HAProxy or another L4 balancer) first."""
    tcp_fast_open: bool = False
    """Accept TCP Fast Open SYN data on the listeners (see :mod:`anytls.aio.tfo`; needs
    ``net.ipv4.tcp_fastopen`` with bit 2 set)."""
    max_connections: int = 4096
    """Simultaneous TLS connections accepted (0 = no limit)."""
    auth_fail_limit: int = 10
    """Failed authentications per minute per source (IPv4 address, IPv6 /64) after which
    its attempts fail without a password check, answered as a wrong password (0 = off)."""
    version: int = 2
    """Protocol version to speak (1 only for testing v1 interop)."""
    speed_limit: float = 0.0
    """Mbit/s per user and direction, for users without their own (0 = none)."""
    limits: Mapping[str, UserPolicy] = field(default_factory=dict)
    """User name → its own limits (speed, devices); see :mod:`anytls.aio.limits`."""
    refused: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Configured users kept out of ``users`` (over quota, expired): name → (password,
    reason). Their logins fail exactly as a wrong password does, but the log says why
    and they do not count towards ``auth_fail_limit``."""

    @functools.cached_property
    def session_config(self) -> SessionConfig:
        """The per-session knobs, built once and shared by every session."""
        return SessionConfig(
            version=self.version,
            max_streams=self.max_streams_per_session,
            idle_timeout=self.idle_session_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
        )

    @property
    def refuse_private(self) -> bool:
        """True when private destinations are refused (the default)."""
        return self.deny_private or not self.allow_private


def _dial_error_text(exc: BaseException, destination: Address) -> str:
    if isinstance(exc, DestinationDenied):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"dial tcp {destination}: i/o timeout"
    if isinstance(exc, socket.gaierror):
        return f"lookup {destination.host}: no such host ({exc.strerror})"
    if isinstance(exc, UnicodeError):  # a name the IDNA codec refuses (a label too long)
        return f"lookup {destination.host}: invalid domain name ({exc})"
    if isinstance(exc, OSError):
        code = exc.errno
        if code == errno.ECONNREFUSED:
            text = "connection refused"
        elif code in (errno.ENETUNREACH,):
            text = "network is unreachable"
        elif code in (errno.EHOSTUNREACH,):
            text = "no route to host"
        else:
            text = (exc.strerror or str(exc)).lower()
            if "multiple exceptions" in str(exc).lower() and "refused" in str(exc).lower():
                text = "connection refused"
        return f"dial tcp {destination}: connect: {text}"
    return f"dial tcp {destination}: {exc}"


def _now() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return 0.0


class _HeldSocketSide(SocketSide):
    """Destination socket whose reads wait until the SYNACK is queued."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]


class _ServerStream(asyncio.Protocol):
    """Reads the destination from a new stream, dials it, then splices."""

    def __init__(self, connection: ServerConnection, stream: Stream) -> None:
        self.connection = connection
        self.stream = stream
        self.reader = AddressReader()
        self.destination: Address | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.task: asyncio.Task[None] | None = None
        self.dial_timed_out = False
        #: Ends a stream whose destination does not come (a client opening streams and
        #: leaving them would hold their state for the session's life).
        self.timer: asyncio.TimerHandle | None = connection.loop.call_later(
            DESTINATION_TIMEOUT, self._no_destination
        )

    def _no_destination(self) -> None:
        self.timer = None
        connection = self.connection
        throttle = connection.throttle
        if connection.reads_held or (throttle is not None and throttle.up_paused):
            # The server is not reading the session (full dial buffers, a speed limit):
            # the destination may be sitting unread. Give it another period.
            self.timer = connection.loop.call_later(DESTINATION_TIMEOUT, self._no_destination)
            return
        if self.destination is None and not self.stream.is_closing():
            log.info(
                "%s stream %d: no destination within %g s, closing the stream",
                self.connection.peer,
                self.stream.stream_id,
                DESTINATION_TIMEOUT,
            )
            self.stream.close()

    def data_received(self, data: bytes) -> None:
        if self.destination is None:
            try:
                destination = self.reader.feed(data)
            except RemoteProtocolError as exc:
                log.info(
                    "%s stream %d: bad destination: %s",
                    self.connection.peer,
                    self.stream.stream_id,
                    exc,
                )
                self.stream.close()
                return
            if destination is None:
                return
            self.destination = destination
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            data = self.reader.leftover
            version = uot_version(destination)
            if version is not None:
                relay = UotServerRelay(
                    self.connection,
                    self.stream,
                    version,
                    data,
                    self.connection.config.udp_idle_timeout,
                    deny_private=self.connection.config.refuse_private,
                    stats=self.connection.user_stats,
                )
                relay.paused = self.connection._write_paused
                return
            self.task = self.connection.start_task(self.dial(destination))
        if data:
            self.pending.append(data)
            self.pending_size += len(data)
            connection = self.connection
            connection.dial_buffered += len(data)
            if (
                self.pending_size > DIAL_BUFFER_LIMIT
                or connection.dial_buffered > SESSION_DIAL_BUFFER_LIMIT
            ):
                self.stream.pause_reading()  # (the session's reads: until this dial ends)

    def _release_pending(self) -> list[bytes]:
        """The bytes kept for the destination, no longer counted against the session."""
        self.connection.dial_buffered -= self.pending_size
        self.pending_size = 0
        pending, self.pending = self.pending, []
        return pending

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.pending_size:
            self._release_pending()

    def _dial_timed_out(self) -> None:
        if self.task is not None and not self.task.done():
            self.dial_timed_out = True
            self.task.cancel()

    def _dial_failed(self, exc: BaseException) -> None:
        """Tell the client why the destination could not be reached, and end the stream."""
        stream = self.stream
        assert self.destination is not None
        text = _dial_error_text(exc, self.destination)
        advice = " (--allow-private allows it)" if isinstance(exc, DestinationDenied) else ""
        log.info("%s stream %d: %s%s", self.connection.peer, stream.stream_id, text, advice)
        self.connection.send_synack(stream.stream_id, text)
        self._release_pending()
        stream.close()

    async def _connect(self, candidates: list[tuple[int, str]], port: int) -> asyncio.Transport:
        """Connect to the first of ``candidates`` (resolved addresses, in the resolver's
        order) that answers."""
        loop = asyncio.get_running_loop()
        error: OSError = OSError(f"no address to connect to on port {port}")
        for _, ip in candidates:
            try:
                transport, _ = await loop.create_connection(
                    lambda: _HeldSocketSide(self.stream), ip, port
                )
            except OSError as exc:
                error = exc
                continue
            return transport
        raise error

    async def dial(self, destination: Address) -> None:
        loop = asyncio.get_running_loop()
        stream = self.stream
        config = self.connection.config
        # A plain timer rather than asyncio.timeout: cheaper, and this runs per stream.
        timer = loop.call_later(config.connect_timeout, self._dial_timed_out)
        try:
            # Dial the addresses that were checked, never the name again.
            refuse = config.refuse_private
            if destination.is_ip:
                candidates = await resolve_allowed(destination, refuse)
            else:
                candidates = await self.connection.looked_up(
                    lambda: resolve_allowed(destination, refuse)
                )
            transport = await self._connect(candidates, destination.port)
        except asyncio.CancelledError:
            if not self.dial_timed_out:
                raise
            self._dial_failed(TimeoutError(f"timed out after {config.connect_timeout:g} s"))
            return
        except Exception as exc:
            if not isinstance(exc, OSError | UnicodeError):  # TimeoutError is an OSError
                log.error(
                    "%s stream %d: dialling %s failed",
                    self.connection.peer,
                    stream.stream_id,
                    destination,
                    exc_info=exc,
                )
            self._dial_failed(exc)
            return
        finally:
            timer.cancel()
        if stream.is_closing():  # the client ended the stream meanwhile
            transport.close()
            return
        log.debug(
            "%s stream %d: connected to %s", self.connection.peer, stream.stream_id, destination
        )
        self.connection.send_synack(stream.stream_id)
        for chunk in self._release_pending():
            transport.write(chunk)
        # Per-stream cap: past this many unsent bytes towards the destination, the session
        # stops reading (AnyTLS has no per-stream flow control).
        transport.set_write_buffer_limits(high=config.stream_buffer)
        stream.set_protocol(StreamSide(transport))
        stream.resume_reading()
        # The session's producers may be paused (congested TLS, or a speed limit) since
        # before this protocol existed: then its resume_writing starts the reads.
        if not self.connection._write_paused:
            transport.resume_reading()


def _is_acme_validation(transport: asyncio.BaseTransport) -> bool:
    ssl_obj = transport.get_extra_info("ssl_object")
    return ssl_obj is not None and ssl_obj.selected_alpn_protocol() == ACME_TLS_ALPN


class ServerConnection(SessionConnection):
    """One client's TLS connection on the server."""

    def __init__(self, server: AnyTLSServer, real_peer: tuple[str, int] | None = None) -> None:
        config = server.config
        super().__init__(
            Session.server(server.user_table, config.session_config, padding=config.padding)
        )
        self.server = server
        self.config = config
        self.tasks: set[asyncio.Task[None]] = set()
        self._real_peer = real_peer
        self._preauth: bytearray | None = bytearray() if config.fallback else None
        self._preface_timer: asyncio.TimerHandle | None = None
        #: This session's user's counters, once authenticated.
        self.user_stats: UserStats | None = None
        self.authenticated_at: float | None = None
        #: The client's IP address (the real one behind a PROXY-protocol balancer).
        self.client_ip = real_peer[0] if real_peer is not None else ""
        #: Speed limit of this session's user, if it has one.
        self.throttle: SessionThrottle | None = None
        #: True while the TLS transport asked us to stop writing.
        self.tls_congested = False
        self._admitted = False
        #: Over --auth-fail-limit: this preface fails whatever it says.
        self.limited = False
        self._lookup_slots: asyncio.Semaphore | None = None
        #: Bytes the session's streams hold while their destinations are being dialled.
        self.dial_buffered = 0

    async def looked_up(self, lookup: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """``await lookup()`` (a name lookup) in one of the session's
        :data:`LOOKUPS_PER_SESSION` slots, waiting for one if need be. The slot stays
        taken until the lookup itself ends, even if the caller gives up meanwhile (a dial
        timing out): the resolver's thread is busy until then."""
        if self._lookup_slots is None:
            self._lookup_slots = asyncio.Semaphore(LOOKUPS_PER_SESSION)
        slots = self._lookup_slots
        await slots.acquire()
        task = asyncio.get_running_loop().create_task(lookup())

        def done(task: asyncio.Task[_T]) -> None:
            slots.release()
            if not task.cancelled():
                task.exception()  # (retrieved: its caller may have gone)

        task.add_done_callback(done)
        return await asyncio.shield(task)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.server.challenge_responder is not None and _is_acme_validation(transport):
            # An ACME CA checked the TLS-ALPN-01 certificate; the handshake was the answer.
            log.info("answered an ACME TLS-ALPN-01 validation from %s", self.peer)
            self.close("ACME validation", abort=True)
            return
        transport.set_write_buffer_limits(high=self.config.session_buffer)  # type: ignore[attr-defined]
        if self._real_peer is not None:
            # Behind a PROXY-protocol balancer: log and limit the real client.
            self.peer = str(Address(*self._real_peer))
        else:
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        limit = self.config.max_connections
        if limit and len(self.server.connections) >= limit:
            log.warning("refused %s: %d connections already open (limit)", self.peer, limit)
            self.close("connection limit", abort=True)
            return
        if self.server.draining:
            self.close("server shutting down", abort=True)
            return
        self.server.connections.add(self)
        if self.server.auth_limiter.limited(
            self.client_ip, self.loop.time(), self.config.auth_fail_limit
        ):
            self.limited = True
            self.core.refuse_preface()
        self._preface_timer = self.loop.call_later(
            self.config.preface_timeout, self._preface_timed_out
        )

    def buffer_updated(self, nbytes: int) -> None:
        # Kept only until authentication, for --fallback (bounded by the preface size).
        if self._preauth is not None and len(self._preauth) < PREAUTH_LIMIT:
            self._preauth += shared_buffer()[:nbytes]
        super().buffer_updated(nbytes)
        if self.throttle is not None:
            self.throttle.received(nbytes)
        if self._preauth is not None and self.core.user is not None:
            self._preauth = None

    def pause_writing(self) -> None:
        self.tls_congested = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.tls_congested = False
        if self.throttle is None or not self.throttle.down_paused:
            super().resume_writing()

    #: The streams' producers stop / go on (TLS congestion or a speed limit).
    pause_producers = SessionConnection.pause_writing
    resume_producers = SessionConnection.resume_writing

    def _preface_timed_out(self) -> None:
        self._preface_timer = None
        self._reject(f"no auth preface within {self.config.preface_timeout:g} s")

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        if self.core.user is None:
            if not isinstance(exc, AuthenticationError):
                self._reject(str(exc))
                return
            refused = self.server.refused_table.get(exc.digest or b"")
            if refused is not None and not self.limited:
                # A known user the server refuses now: answered as a wrong password (as
                # every AnyTLS server answers), logged with the reason, not counted as a
                # failed login (one such client must not lock out its address).
                self._reject(f"user {refused[0]} is refused: {refused[1]}")
                return
            self._auth_failed()
            if self.limited:
                self._reject("auth-fail-limit reached, password not checked", logging.DEBUG)
            else:
                self._reject(f"wrong password ({exc})")
            return
        log.info("closing session with %s: %s", self.peer, exc)
        self.close(str(exc), abort=True)

    def _auth_failed(self) -> None:
        limit = self.config.auth_fail_limit
        if self.server.auth_limiter.failed(self.client_ip, self.loop.time(), limit):
            log.warning(
                "%s failed to authenticate %d times within a minute (--auth-fail-limit): "
                "its attempts fail without a password check for the rest of the minute",
                source_key(self.client_ip),
                limit,
                extra={"event": "auth_fail_limit", "source": source_key(self.client_ip)},
            )

    def _reject(self, reason: str, level: int = logging.INFO) -> None:
        self.server.stats.rejected += 1
        fallback = self.config.fallback
        if fallback is None or self.transport is None or self.transport.is_closing():
            log.log(level, "rejected %s: %s", self.peer, reason)
            self._refuse(reason)
            return
        log.log(
            level, "rejected %s: %s; relaying it to the fallback %s", self.peer, reason, fallback
        )
        if self._preface_timer is not None:
            self._preface_timer.cancel()
            self._preface_timer = None
        initial = bytes(self._preauth or b"")
        self._preauth = None
        self.core.close()
        self.start_task(self._fallback(fallback, initial))

    def _refuse(self, reason: str) -> None:
        """End the connection as sing-box (Go) ends one that failed authentication: a TLS
        close_notify, then at once a reset (SO_LINGER 0) instead of waiting for the peer."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        self.close(reason)  # hands the close_notify to the socket now
        if transport is None:
            return
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    async def _fallback(self, fallback: Address, initial: bytes) -> None:
        assert self.transport is not None
        try:
            await relay_to(
                self.transport, fallback.host, fallback.port, initial, self.config.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            log.warning("fallback %s unreachable for %s: %s", fallback, self.peer, exc)
            self.close("fallback unreachable", abort=True)
            return
        # The transport now belongs to the relay; this session is over.
        self.server.connections.discard(self)

    def handle_event(self, event: Event) -> None:
        if type(event) is StreamOpened:
            stream = self.add_stream(event.stream_id)
            if self.user_stats is not None:
                self.user_stats.stream_opened()
            if self.server.draining:
                # Shutting down: streams already open may finish, new ones are refused.
                self.send_synack(event.stream_id, "server is shutting down")
                stream.close()
                return
            stream.set_protocol(_ServerStream(self, stream))
        elif type(event) is Authenticated:
            if self._preface_timer is not None:
                self._preface_timer.cancel()
                self._preface_timer = None
            if self.server.limiter.active and not self._admit(event.user):
                return
            self.server.sessions_accepted += 1
            self.user_stats = self.server.stats.session_opened(self, event.user)
            self.authenticated_at = self.loop.time()
            log.info(
                "session from %s: user %s",
                self.peer,
                event.user,
                extra={"event": "session_open", "peer": self.peer, "user": event.user},
            )
        elif type(event) is SettingsReceived:
            log.debug(
                "%s settings %s (peer version %d)", self.peer, event.settings, event.peer_version
            )

    def _admit(self, user: str) -> bool:
        try:
            throttle = self.server.limiter.admit(self, user, self.client_ip)
        except DeviceLimitExceeded as exc:
            self.server.stats.rejected += 1
            log.warning(
                "refused %s: %s",
                self.peer,
                exc,
                extra={"event": "device_limit", "peer": self.peer, "user": user},
            )
            self.close("device limit", abort=True)
            return False
        self._admitted = True
        if throttle is not None:
            self._throttle(throttle)
        return True

    def _throttle(self, throttle: SessionThrottle) -> None:
        self.throttle = throttle
        self.flush = throttle.flush  # type: ignore[method-assign]

    def limits_changed(self) -> None:
        """New limits: an open session follows its user's speed limit from now on."""
        user = self.core.user
        if user is None or self.is_closed:
            return
        limiter = self.server.limiter
        if not self._admitted:
            self._admitted = True
            throttle = limiter.track(self, user, self.client_ip)
        elif self.throttle is None:
            throttle = limiter.throttle_for(self, user)
        else:
            return  # its throttle reads the user's buckets, whose rate was just changed
        if throttle is not None:
            self._throttle(throttle)

    def start_task(self, coro: object) -> asyncio.Task[None]:
        """Run ``coro`` owned by this connection (cancelled when it closes)."""
        task: asyncio.Task[None] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: stream handler failed", self.peer, exc_info=task.exception())

    def stream_closed(self, stream: Stream) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s stream %d closed: %d bytes up, %d bytes down",
                self.peer,
                stream.stream_id,
                stream.bytes_received,
                stream.bytes_sent,
                extra={
                    "event": "stream_close",
                    "peer": self.peer,
                    "user": self.core.user,
                    "stream": stream.stream_id,
                    "bytes_up": stream.bytes_received,
                    "bytes_down": stream.bytes_sent,
                },
            )
        if self.server.draining and not self.streams:
            self.close("server shutting down")

    def session_closed(self, reason: str) -> None:
        if self._preface_timer is not None:
            self._preface_timer.cancel()
        for task in list(self.tasks):
            task.cancel()
        self.server.connections.discard(self)
        if self.user_stats is not None:
            self.server.stats.session_closed(self, self.user_stats)
        if self._admitted and self.core.user is not None:
            self._admitted = False
            self.server.limiter.release(self.core.user, self.client_ip)
        if self.throttle is not None:
            self.throttle.cancel()
        if self.core.user is not None:
            duration = self.loop.time() - (self.authenticated_at or self.loop.time())
            log.info(
                "session from %s (user %s) ended after %.1f s: %s, %d bytes in, %d bytes out",
                self.peer,
                self.core.user,
                duration,
                reason,
                self.bytes_in,
                self.bytes_out,
                extra={
                    "event": "session_close",
                    "peer": self.peer,
                    "user": self.core.user,
                    "duration": round(duration, 3),
                    "reason": reason,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                },
            )


async def _wait_readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: None if ready.done() else ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_proxy_header(sock: socket.socket) -> tuple[str, int] | None:
    """Consume the PROXY header at the start of ``sock``; return the real client address.

    Peeks rather than reads, so not one byte of the TLS ClientHello behind the header is
    taken from the socket. Raises ``RemoteProtocolError``/``ConnectionError``.
    """
    loop = asyncio.get_running_loop()
    seen = -1
    while True:
        await _wait_readable(loop, sock)
        data = sock.recv(V2_MAX, socket.MSG_PEEK)
        if not data:
            raise ConnectionError("connection closed before the PROXY header")
        parsed = parse_proxy_header(data)
        if parsed is not None:
            info, length = parsed
            while length:
                length -= len(sock.recv(length))
            return info.source if info else None
        if len(data) == seen:
            await asyncio.sleep(0.01)  # more of the header has not arrived yet
        seen = len(data)


def _refused_table(refused: Mapping[str, tuple[str, str]]) -> dict[bytes, tuple[str, str]]:
    """Password digest → (user name, reason), for :attr:`ServerConfig.refused`."""
    return {password_hash(pw): (name, why) for name, (pw, why) in refused.items()}


class AnyTLSServer:
    """A listening AnyTLS server; create it with :func:`serve`."""

    def __init__(self, config: ServerConfig, ssl_context: ssl.SSLContext) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.connections: set[ServerConnection] = set()
        self.servers: list[asyncio.Server] = []
        #: Sessions that passed authentication since start.
        self.sessions_accepted = 0
        #: Per-user traffic counters (see :mod:`anytls.aio.stats`).
        self.stats = ServerStats(lambda: len(self.connections))
        for name in config.users:
            self.stats.user(name)  # every configured user is reported, even at zero
        #: The users indexed by password digest, shared by every new session.
        self.user_table = UserTable(config.users)
        #: Refused users by password digest: (name, reason), for the log.
        self.refused_table = _refused_table(config.refused)
        #: Per-user speed and device limits (see :mod:`anytls.aio.limits`).
        self.limiter = Limiter()
        self.limiter.configure(config.limits, UserPolicy(config.speed_limit), 0.0)
        #: True once :meth:`shutdown` began: no new connections or streams.
        self.draining = False
        #: Failed authentications per source, for ``config.auth_fail_limit``.
        self.auth_limiter = AuthFailureLimiter()
        self._ssl_current = ssl_context
        self._previous_sni: Callable[..., int | None] | None = None
        #: Picks another context for some handshakes (see :meth:`set_challenge_responder`).
        self.challenge_responder: Callable[[str | None], ssl.SSLContext | None] | None = None
        self._raw_sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def update(
        self, config: ServerConfig | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Use ``config`` and/or ``ssl_context`` for connections accepted from now on.

        Sessions already open keep the settings they started with. The listening socket
        keeps its original context, whose SNI callback hands each new handshake to the
        current one (asyncio cannot change a server's context).
        """
        if config is not None:
            self.config = config
            for name in config.users:
                self.stats.user(name)
            self.user_table = UserTable(config.users)
            self.refused_table = _refused_table(config.refused)
            self.limiter.configure(config.limits, UserPolicy(config.speed_limit), _now())
            if self.limiter.active:
                for conn in list(self.connections):
                    conn.limits_changed()
        if ssl_context is not None and ssl_context is not self._ssl_current:
            self._ssl_current = ssl_context
            self._hook_sni()

    def set_challenge_responder(
        self, responder: Callable[[str | None], ssl.SSLContext | None]
    ) -> None:
        """Let ``responder(server_name)`` pick the context of a handshake, first.

        For ACME TLS-ALPN-01: the responder returns a context with the challenge
        certificate for a CA's validation handshake and None for everything else, which
        then gets the current context. Such a validation connection is closed right after
        the handshake.
        """
        self.challenge_responder = responder
        self._hook_sni()

    def _hook_sni(self) -> None:
        listening = self.ssl_context
        if listening.sni_callback != self._use_current_context:
            self._previous_sni = listening.sni_callback
            listening.sni_callback = self._use_current_context

    def _use_current_context(
        self, ssl_obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        responder = self.challenge_responder
        if responder is not None:
            special = responder(name)
            if special is not None:
                ssl_obj.context = special
                return None
        current = self._ssl_current
        if current is not ctx:
            ssl_obj.context = current
            callback = current.sni_callback  # the new context's own, if any
        else:
            callback = self._previous_sni
        if callback is None:
            return None
        # Without SNI the name is None, which typeshed's ``str`` does not admit.
        return callback(ssl_obj, name, current)  # type: ignore[arg-type]

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets."""
        listening = [s for srv in self.servers for s in srv.sockets]
        return listening + self._raw_sockets

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        sockets: list[socket.socket] | None = None,
        **kwargs: Any,
    ) -> None:
        """Bind and start accepting (``reuse_port=True`` lets worker processes share it).

        ``sockets``: accept on these listening sockets (bound by the caller, e.g. before
        forking workers) instead of binding ``host:port``.
        """
        loop = asyncio.get_running_loop()
        if sockets is not None:
            for sock in sockets:
                if self.config.tcp_fast_open:
                    self._enable_fast_open(sock)  # Linux takes it on a listening socket
                if self.config.accept_proxy_protocol:
                    self._raw_sockets.append(sock)
                    self._track(loop.create_task(self._accept_loop(sock)))
                    continue
                self.servers.append(
                    await loop.create_server(self._tls, sock=sock, backlog=LISTEN_BACKLOG)
                )
            return
        if self.config.accept_proxy_protocol:
            await self._start_proxied(host, port, bool(kwargs.get("reuse_port")))
            return
        server = await loop.create_server(
            self._tls,
            host or None,
            port,
            reuse_address=True,
            backlog=LISTEN_BACKLOG,
            **kwargs,
        )
        self.servers.append(server)
        if self.config.tcp_fast_open:
            for sock in server.sockets:
                self._enable_fast_open(sock)

    def _tls(self, real_peer: tuple[str, int] | None = None) -> TlsServerTransport:
        """The TCP protocol of one accepted connection: TLS, then a ServerConnection."""
        return TlsServerTransport(
            self.ssl_context,
            lambda: ServerConnection(self, real_peer),
            self.config.handshake_timeout,
        )

    def _enable_fast_open(self, sock: socket.socket) -> None:
        from .tfo import enable_on_listener

        if not enable_on_listener(sock):
            log.warning("TCP Fast Open could not be enabled on %s", sock.getsockname())

    async def _start_proxied(self, host: str | None, port: int, reuse_port: bool) -> None:
        # The PROXY header precedes the TLS ClientHello, so connections are accepted as
        # plain sockets, the header is consumed, and only then is TLS started on them.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, type_, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(LISTEN_BACKLOG)
            if self.config.tcp_fast_open:
                self._enable_fast_open(sock)
            sock.setblocking(False)
            self._raw_sockets.append(sock)
            self._track(loop.create_task(self._accept_loop(sock)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            self._track(loop.create_task(self._serve_proxied(conn, addr)))

    async def _serve_proxied(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                real_peer = await read_proxy_header(conn)
            await loop.connect_accepted_socket(lambda: self._tls(real_peer), conn)
        except (RemoteProtocolError, OSError, TimeoutError) as exc:
            log.info("rejected %s:%s: %s", addr[0], addr[1], exc or type(exc).__name__)
            conn.close()

    def stop_listening(self) -> None:
        """Accept no more connections; open sessions go on."""
        for task in list(self._tasks):
            task.cancel()
        for sock in self._raw_sockets:
            sock.close()
        self._raw_sockets.clear()
        for server in self.servers:
            server.close()

    def kick(self, users: Iterable[str], reason: str = "kicked") -> int:
        """Close every session of ``users`` at once (their streams end); returns how many."""
        closed = 0
        for name in users:
            stats = self.stats.users.get(name)
            if stats is None:
                continue
            for conn in list(stats.sessions):
                if isinstance(conn, ServerConnection):
                    log.info(
                        "closing session from %s (user %s): %s",
                        conn.peer,
                        name,
                        reason,
                        extra={"event": "kick", "peer": conn.peer, "user": name},
                    )
                    conn.close(reason, abort=True)
                    closed += 1
        return closed

    @property
    def open_streams(self) -> int:
        """Streams open now over all sessions."""
        return sum(len(conn.streams) for conn in self.connections)

    async def shutdown(self, grace: float) -> int:
        """Stop accepting, let open streams finish for up to ``grace`` seconds, then close.

        Sessions without streams close at once, the others as soon as their last stream
        ends; new streams on them are refused ("server is shutting down"). Returns the
        number of streams still open when the grace period ran out (and were cut off).
        """
        self.draining = True
        self.stop_listening()
        for conn in list(self.connections):
            if conn.core.user is None or not conn.streams:
                conn.close("server shutting down")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        remaining = self.open_streams
        await self.close()
        return remaining

    async def close(self) -> None:
        """Stop listening and close every session."""
        self.stop_listening()
        for conn in list(self.connections):
            conn.close("server shutting down", abort=True)
        for server in self.servers:
            await server.wait_closed()

    async def __aenter__(self) -> AnyTLSServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(
    config: ServerConfig,
    host: str | None = "0.0.0.0",
    port: int = 8443,
    ssl_context: ssl.SSLContext | None = None,
) -> AnyTLSServer:
    """Start an AnyTLS server; with no ``ssl_context`` a self-signed one is made."""
    from .tls import server_context

    if ssl_context is None:
        ssl_context = server_context(hosts=["localhost", host or ""])
    server = AnyTLSServer(config, ssl_context)
    await server.start(host, port)
    return server
