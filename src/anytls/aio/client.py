"""The AnyTLS client: sessions to one server, their pool, and the stream API.

:class:`Client` opens TLS sessions on demand and reuses them as
:class:`~anytls.core.pool_policy.PoolPolicy` decides (newest first; one active stream per
session like the Go clients, or several up to a cap), reaps idle ones, and remembers a
padding scheme the server pushed so every later session uses it.
:meth:`Client.open_stream` is 0-RTT: the SYN and the destination go out at once;
:meth:`Client.open_connection` waits for the server's SYNACK when the server speaks v2, so
a refused destination is an exception, not a silently closed socket.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..core.address import Address, is_ip_literal
from ..core.events import (
    AlertReceived,
    Event,
    HeartbeatAcknowledged,
    PaddingSchemeRejected,
    PaddingSchemeUpdated,
    PeerVersionKnown,
    StreamAcknowledged,
)
from ..core.padding import PaddingScheme
from ..core.pool_policy import PoolPolicy, SessionInfo, normalise_interval
from ..core.session import Session, SessionConfig
from ..errors import (
    AnyTLSError,
    CertificatePinError,
    FailureReason,
    SessionClosedError,
    StreamClosedError,
    StreamOpenError,
)
from .connection import PEER_CLOSED, SessionConnection
from .diagnose import SILENT_CLOSE, FailureLog
from .outbound import DnsCache, ordered_addresses
from .stream import Stream

log = logging.getLogger("anytls.client")

CLIENT_NAME = f"anytls-py/{__version__}"


#: How long a server address whose connect failed is tried after the name's others.
_FAILED_ADDRESS_SECONDS = 60.0


@dataclass
class ClientConfig:
    """Settings of an AnyTLS client."""

    server_host: str
    server_port: int
    password: str
    sni: str | None = None
    """TLS server name; ``None`` uses the server host (no SNI when it is an IP)."""
    insecure: bool = False
    """Skip certificate verification (logs a warning: a man in the middle gets the
    credential). A pin, when also given, is still checked."""
    pin_sha256: str | None = None
    """Hex SHA-256 of the server certificate's DER (the ``pinSHA256`` link parameter).
    When set, the certificate must be exactly this one (CA and name checks are not needed
    for a pinned, e.g. self-signed, certificate); it is checked before any byte of the
    authentication preface is sent."""
    ca_file: str | None = None
    """PEM file of CA certificates to verify the server with (a private CA)."""
    fingerprint: str = "chrome"
    """The TLS ClientHello to send: a browser profile of curl-impersonate (``chrome``,
    the default, is the newest Chrome it knows; ``firefox``, ``safari``, ``chrome131``
    ...) or ``openssl`` for Python's own TLS (see :mod:`anytls.aio.impersonate`)."""
    connect_timeout: float = 10.0
    """Seconds for TCP connect plus TLS handshake to the server."""
    ack_timeout: float = 15.0
    """Seconds to wait for a v2 server's SYNACK before a stream open fails."""
    version_probe_timeout: float = 1.0
    """Seconds a first session waits to learn whether the server speaks v2."""
    synack_timeout: float = 3.0
    """Seconds a stream on a reused v2 session may wait for SYNACK before that session is
    declared dead (the reference watchdog; 0 disables it)."""
    retry_dead_session: bool = True
    """Retry a stream once on a fresh session when its session died before the SYNACK."""
    heartbeat_interval: float = 0.0
    """Seconds of silence before a heartbeat is sent to a v2 server (0 = off)."""
    heartbeat_timeout: float = 10.0
    """Seconds to wait for the heartbeat answer before the session is closed."""
    idle_session_timeout: float = 30.0
    idle_session_check_interval: float = 30.0
    min_idle_session: int = 0
    max_streams_per_session: int = 1
    """A pooled session takes a new stream while it carries fewer (1: only idle ones, as
    the Go clients); a burst at ``max_handshakes`` may put more on a new session."""
    max_handshakes: int = 16
    """Sessions set up (TCP + TLS) for new streams at a time. A stream that finds no
    usable session while this many are being set up waits for one of them and shares it
    (see :meth:`~anytls.core.pool_policy.PoolPolicy.join`); 0 = no limit, one new session
    per busy stream, as the Go clients. Fresh sessions for retried streams and sessions
    with ``reuse_sessions=False`` are not shared nor counted."""
    reuse_sessions: bool = True
    tcp_fast_open: bool = False
    """Connect to the server with TCP Fast Open, so a reconnect carries the ClientHello in
    its SYN (see :mod:`anytls.aio.tfo`)."""
    wait_for_synack: bool = False
    """Local proxy inbounds: answer a SOCKS5/HTTP CONNECT only once the server reported
    the destination connected (real SOCKS/HTTP error codes, one round trip more). By
    default they answer at once and the first bytes go out with the SYN, as the Go
    clients do (see :class:`~anytls.aio.early.EarlyRelay`)."""
    version: int = 2
    """Protocol version to advertise (1 only for testing v1 interop)."""
    client_name: str = CLIENT_NAME

    @functools.cached_property
    def session_config(self) -> SessionConfig:
        """The per-session knobs, built once and shared by every session."""
        return SessionConfig(
            version=self.version,
            client_name=self.client_name,
            synack_timeout=self.synack_timeout,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
        )

    def policy(self) -> PoolPolicy:
        """The pool policy these settings describe."""
        return PoolPolicy(
            idle_timeout=normalise_interval(self.idle_session_timeout),
            check_interval=normalise_interval(self.idle_session_check_interval),
            min_idle=max(0, self.min_idle_session),
            max_streams=max(1, self.max_streams_per_session),
            max_handshakes=max(0, self.max_handshakes),
        )


class ClientConnection(SessionConnection):
    """One TLS session to the server, as seen by the client."""

    def __init__(self, client: Client, seq: int) -> None:
        config = client.config
        super().__init__(
            Session.client(config.password, config.session_config, padding=client.padding)
        )
        self.client = client
        self.seq = seq
        self.idle_since: float | None = None
        self.heartbeats_answered = 0
        #: Resolved with the peer's version once it is known (ServerSettings or data).
        self.version_known: asyncio.Future[int] = self.loop.create_future()

    def info(self) -> SessionInfo:
        """This session as the pool policy sees it."""
        return SessionInfo(self.seq, len(self.streams), self.idle_since, not self.is_closed)

    def open_stream(self, destination: Address, early: bytes = b"") -> Stream:
        """Open a stream to ``destination`` (0-RTT: nothing is awaited).

        ``early`` are the stream's first bytes: they follow the SYN in the same flush
        (one flight), as the next padding packet, as a Go client's first write would.
        """
        if self.is_closed:  # e.g. the server refused the preface before the first stream
            reason = self._close_reason or "closed"
            raise SessionClosedError(f"session with {self.peer} ended: {reason}")
        answered = self.version_known.done()
        stream_id = self.core.open_stream(destination.encode(), self.loop.time())
        stream = self.add_stream(stream_id)
        stream.on_answered_session = answered
        if early:
            stream.write(early)
        self.idle_since = None
        self.client._update_available(self)
        self.schedule_flush()
        self.arm_timer()
        return stream

    def _learn_version(self, version: int) -> None:
        if not self.version_known.done():
            self.version_known.set_result(version)
            self.client.server_version = version
            self.arm_timer()

    def handle_event(self, event: Event) -> None:
        if type(event) is StreamAcknowledged:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.feed_ack(event.error)
                if event.error is not None:
                    self.streams.pop(event.stream_id, None)
                    stream.fail(remote_error(event.error))
                    self.stream_closed(stream)
        elif type(event) is PeerVersionKnown:
            self._learn_version(event.peer_version)
        elif type(event) is PaddingSchemeUpdated:
            log.info("server pushed a new padding scheme (md5 %s)", event.scheme.md5)
            self.client.padding = event.scheme
        elif type(event) is PaddingSchemeRejected:
            log.warning("ignored the server's padding scheme: %s", event.reason)
        elif type(event) is AlertReceived:
            log.warning("[Alert from server] %s", event.message)
        elif type(event) is HeartbeatAcknowledged:
            self.heartbeats_answered += 1

    def stream_closed(self, stream: Stream) -> None:
        self.client._stream_closed(self)

    def close(self, reason: str = "closed", abort: bool = False) -> None:
        if reason == PEER_CLOSED:
            reason = self._answered_in_http() or self._closed_unanswered() or reason
        super().close(reason, abort)
        self.client._session_closed(self, reason)  # leaves the pool at once

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_reason is None:
            early = self._answered_in_http()
            if early is None and isinstance(exc, ConnectionError):
                early = self._closed_unanswered()
            self._close_reason = early
        super().connection_lost(exc)

    def _closed_unanswered(self) -> str | None:
        """The reason to give when the server closed before its first frame: v2 servers
        answer the settings at once, so it most likely refused the password."""
        if self.core.frames_received or self.core.unparsed():
            return None
        return SILENT_CLOSE

    def _answered_in_http(self) -> str | None:
        """The reason to give when the server's first bytes were an HTTP response."""
        if self.core.frames_received:
            return None
        first = self.core.unparsed()
        if not first.startswith(b"HTTP/"):
            return None
        status = first.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        return (
            f"the server answered in HTTP ({status!r}): a web server, not AnyTLS, answers "
            "there (wrong port, or a wrong password sent to the server's fallback site)"
        )

    def session_closed(self, reason: str) -> None:
        if not self.version_known.done():
            self.version_known.cancel()
        self.client._session_closed(self, reason)


OpenCallback = Callable[["Stream | None", "AnyTLSError | None"], None]


class PendingOpen:
    """A stream being opened for :meth:`Client.open_stream_then`; ``cancel()`` stops it."""

    def __init__(self, client: Client, destination: Address, done: OpenCallback) -> None:
        self.client = client
        self.destination = destination
        self.done = done
        self.stream: Stream | None = None
        self.task: asyncio.Task[Stream] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.finished = False

    @classmethod
    def in_task(
        cls, client: Client, destination: Address, done: OpenCallback, *, fresh: bool
    ) -> PendingOpen:
        """Run :meth:`Client.open_stream_acknowledged` in a task."""
        pending = cls(client, destination, done)
        pending._start_task(fresh)
        return pending

    @classmethod
    def on_session(
        cls,
        client: Client,
        conn: ClientConnection,
        destination: Address,
        done: OpenCallback,
    ) -> PendingOpen:
        """Open on ``conn`` (a v2 session) and wait for the SYNACK by callback."""
        pending = cls(client, destination, done)
        stream = pending.stream = conn.open_stream(destination)
        timeout = client.config.ack_timeout
        pending.timer = conn.loop.call_later(timeout, _ack_timed_out, stream, timeout)
        stream.acknowledged.add_done_callback(pending._acknowledged)
        return pending

    def _start_task(self, fresh: bool) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(
            self.client.open_stream_acknowledged(self.destination, fresh=fresh)
        )
        self.task.add_done_callback(self._task_done)

    def _acknowledged(self, ack: asyncio.Future[str | None]) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        stream = self.stream
        if stream is None:
            return
        if self.finished:
            return
        if ack.cancelled():
            stream.close()
            self._finish(None, StreamClosedError("the stream open was cancelled"))
            return
        exc = ack.exception()
        if exc is None:
            error = ack.result()
            if error is None:
                self._finish(stream, None)
                return
            stream.close()
            self._finish(None, remote_error(error))
            return
        if self.client._may_retry(stream, exc, fresh=False):
            # The pooled session died before answering: once more, on a new session.
            self.client._note_retry(self.destination, exc)
            self.stream = None
            self._start_task(fresh=True)
            return
        self._finish(None, exc if isinstance(exc, AnyTLSError) else AnyTLSError(str(exc)))

    def _task_done(self, task: asyncio.Task[Stream]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if self.finished:
            if exc is None:
                task.result().close()  # cancel() came after the task had finished
            return
        if exc is None:
            self._finish(task.result(), None)
        elif isinstance(exc, AnyTLSError):
            self._finish(None, exc)
        else:
            log.error("opening a stream to %s failed", self.destination, exc_info=exc)
            self._finish(None, AnyTLSError(f"opening a stream failed: {exc!r}"))

    def _finish(self, stream: Stream | None, exc: AnyTLSError | None) -> None:
        self.finished = True
        self.done(stream, exc)

    def cancel(self) -> None:
        """Give up: the stream (if any) is closed and ``done`` is not called."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.stream is not None:
            self.stream.close()
        if self.task is not None:
            self.task.cancel()


class _Handshake:
    """A session being set up, and how many streams wait for it."""

    __slots__ = ("claims", "task")

    def __init__(self, task: asyncio.Task[ClientConnection]) -> None:
        self.task = task
        self.claims = 0


def remote_error(error: str) -> StreamOpenError:
    """The error for a stream the server refused with ``error`` in its SYNACK."""
    return StreamOpenError(f"remote: {error}", FailureReason.from_remote_text(error))


def _ack_timed_out(stream: Stream, timeout: float) -> None:
    if not stream.acknowledged.done():
        stream.acknowledged.set_exception(
            StreamOpenError(
                f"the server did not acknowledge the stream within {timeout:g} s",
                FailureReason.TIMED_OUT,
            )
        )
        stream.close()


class Client:
    """Sessions to one AnyTLS server, pooled as :class:`ClientConfig` says."""

    def __init__(self, config: ClientConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: make the handshake with CPython's ``ssl`` and this context (as
        ``fingerprint="openssl"`` does with a context built from ``config``)."""
        from .impersonate import OPENSSL, check_fingerprint
        from .tls import client_context, normalise_pin, warn_insecure

        self.config = config
        #: Failures to reach the server, logged once per cause per minute by the inbounds.
        self.failures = FailureLog(logging.getLogger("anytls.inbound"))
        self.pin = normalise_pin(config.pin_sha256) if config.pin_sha256 else None
        if config.insecure and self.pin is None:
            warn_insecure(str(Address(config.server_host, config.server_port)))
        #: The browser profile the handshake imitates; None: CPython's ``ssl``.
        self.fingerprint: str | None = None
        if ssl_context is None and check_fingerprint(config.fingerprint) != OPENSSL:
            self.fingerprint = config.fingerprint
        elif ssl_context is None:
            ssl_context = client_context(
                insecure=config.insecure, ca_file=config.ca_file, pinned=self.pin is not None
            )
        self.ssl_context = ssl_context
        self.policy = config.policy()
        self.padding = PaddingScheme.default()
        #: The server's protocol version once a session learned it (0 = unknown).
        self.server_version = 0
        self.sessions: dict[int, ClientConnection] = {}
        #: ``seq`` of the sessions that can take one more stream (the policy's rule, kept
        #: up to date as streams open and close, so picking one builds nothing per session).
        self._available: set[int] = set()
        #: Lookups of the server's name, shared by its sessions.
        self._server_dns = DnsCache()
        #: Server addresses whose connect failed, until when they are tried last.
        self._server_failed: dict[str, float] = {}
        self.sessions_opened = 0
        self.streams_retried = 0
        self._seq = itertools.count(1)
        self._reaper: asyncio.TimerHandle | None = None
        #: Sessions being set up that new streams may share, oldest first.
        self._joinable: list[_Handshake] = []
        self._closed = False

    @property
    def idle(self) -> list[ClientConnection]:
        """Idle sessions, oldest first."""
        return sorted(
            (c for c in self.sessions.values() if not c.streams and not c.is_closed),
            key=lambda c: c.seq,
        )

    # ---------------------------------------------------------------- sessions
    async def _new_session(self) -> ClientConnection:
        config = self.config
        server_hostname = config.sni if config.sni is not None else config.server_host
        seq = next(self._seq)
        where = str(Address(config.server_host, config.server_port))
        try:
            async with asyncio.timeout(config.connect_timeout):
                conn = await self._connect_first(seq, server_hostname or None)
        except TimeoutError as exc:
            raise SessionClosedError(
                f"connecting to {where} timed out after {config.connect_timeout:g} s",
                FailureReason.TIMED_OUT,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise SessionClosedError(
                f"the certificate of {where} failed verification ({exc.verify_message}); "
                "for a self-signed server use its share link (it pins the certificate with "
                "pinSHA256; ClientConfig.pin_sha256), for a private CA --ca "
                "(ClientConfig.ca_file)"
            ) from exc
        except ssl.SSLError as exc:
            if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc):
                raise SessionClosedError(
                    f"{where} does not speak TLS (it answered the TLS handshake with something "
                    "else, e.g. plain HTTP): check the server's port"
                ) from exc
            raise SessionClosedError(f"cannot connect to {where}: {exc}") from exc
        except OSError as exc:
            raise SessionClosedError(f"cannot connect to {where}: {exc}") from exc
        if self._closed:
            conn.close("client closed")
            raise SessionClosedError("the client is closed")
        if self.pin is not None:
            self._check_pin(conn, where)
        conn.core.initiate()
        conn.flush()
        self.sessions[seq] = conn
        self._update_available(conn)
        self.sessions_opened += 1
        log.debug("session %d to %s opened", seq, where)
        self._arm_reaper()
        return conn

    async def _connect_first(self, seq: int, server_hostname: str | None) -> ClientConnection:
        """The TLS connection to the first of the server's addresses that answers; each
        address but the last gets an equal share of the connect timeout. An address that
        does not answer (refused, unreachable, timed out; not a TLS failure) is tried
        after the others for a minute."""
        config = self.config
        addresses = await self._server_addresses()
        share = config.connect_timeout / len(addresses)
        for address, following in itertools.pairwise(addresses):
            try:
                async with asyncio.timeout(share):
                    return await self._connect(seq, address, server_hostname, share)
            except OSError as exc:
                if isinstance(exc, ssl.SSLError):
                    raise  # it answered in TLS: the address works
                log.info(
                    "server %s: %s did not answer (%s); trying %s",
                    config.server_host,
                    address,
                    exc or type(exc).__name__,
                    following,
                )
        return await self._connect(seq, addresses[-1], server_hostname, config.connect_timeout)

    async def _connect(
        self,
        seq: int,
        address: str,
        server_hostname: str | None,
        timeout: float,  # noqa: ASYNC109
    ) -> ClientConnection:
        """One TLS connection to ``address`` (curl's browser hello, or Python's ``ssl``);
        if the address does not answer (or the time runs out), it is tried last for a
        minute."""
        config = self.config
        try:
            if self.fingerprint is not None:
                from .impersonate import open_connection

                _, conn = await open_connection(
                    lambda: ClientConnection(self, seq),
                    address,
                    config.server_port,
                    fingerprint=self.fingerprint,
                    server_hostname=server_hostname,
                    insecure=config.insecure,
                    ca_file=config.ca_file,
                    pinned=self.pin is not None,
                    timeout=timeout,
                    tcp_fast_open=config.tcp_fast_open,
                    display=config.server_host,
                )
            else:
                target = await self._target(address)
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: ClientConnection(self, seq),
                    **target,
                    ssl=self.ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                )
        except (OSError, asyncio.CancelledError) as exc:
            if not isinstance(exc, ssl.SSLError):
                self._address_failed(address)
            raise
        assert isinstance(conn, ClientConnection)
        return conn

    def _address_failed(self, address: str) -> None:
        """The next session asks the resolver again and tries the name's other addresses
        before ``address`` for a minute."""
        config = self.config
        if address != config.server_host:
            self._server_dns.forget(config.server_host)
            now = time.monotonic()
            failed = self._server_failed
            for stale in [ip for ip, until in failed.items() if until <= now]:
                del failed[stale]
            failed[address] = now + _FAILED_ADDRESS_SECONDS

    async def _server_addresses(self) -> list[str]:
        """The addresses to try, in order. A name is looked up with the system's resolver
        and kept for a minute, for all sessions; IPv4 first, in the resolver's order, and
        addresses that did not answer in the last minute last. Left to curl, every session
        (one per busy stream) would wait for DNS queries of its own: curl's DNS cache
        lives in the handle, and each session has handles of its own."""
        host = self.config.server_host
        if is_ip_literal(host):
            return [host]
        try:
            found = await self._server_dns.resolve(host)
        except (OSError, UnicodeError) as exc:  # (UnicodeError: an invalid name)
            raise SessionClosedError(f"cannot resolve the server's name {host}: {exc}") from exc
        if not found:
            self._server_dns.forget(host)
            raise SessionClosedError(f"the server's name {host} has no address")
        now = time.monotonic()
        failed = self._server_failed
        return ordered_addresses(found, last=lambda ip: failed.get(ip, 0.0) > now)

    async def _target(self, address: str) -> dict[str, Any]:
        """Where ``create_connection`` connects: ``address`` and the port, or a socket
        already connected with the options the config asks for (TCP Fast Open)."""
        config = self.config
        if config.tcp_fast_open:
            from .tfo import connect

            return {"sock": await connect(address, config.server_port)}
        return {"host": address, "port": config.server_port}

    def _check_pin(self, conn: ClientConnection, where: str) -> None:
        """Close ``conn`` and raise unless its certificate is the pinned one."""
        from .tls import check_pin

        assert self.pin is not None
        ssl_object = conn.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            check_pin(der, self.pin, where)
        except CertificatePinError:
            conn.close("certificate pin mismatch", abort=True)
            raise

    def pooled_session(self) -> ClientConnection | None:
        """A pooled session that can take one more stream now, if any."""
        if self._closed or not self.config.reuse_sessions:
            return None
        return self._choose()

    async def acquire_session(self, *, fresh: bool = False) -> ClientConnection:
        """A session for one more stream: pooled, or a new one (``fresh``: always new)."""
        return await self._acquire(fresh)

    async def _acquire(self, fresh: bool = False, alone: bool = False) -> ClientConnection:
        """``alone``: a pooled session, else a new one that no other stream waits for."""
        if self._closed:
            raise SessionClosedError("the client is closed")
        pooled = not fresh and self.config.reuse_sessions
        if pooled:
            conn = self._choose()
            if conn is not None:
                return conn
        # Not shared: a fresh retry's session, any without reuse, a UDP association's.
        shared = pooled and not alone
        if shared:
            # Join a handshake already under way (PoolPolicy.join says which, if any).
            joinable = [h for h in self._joinable if not h.task.done()]
            index = self.policy.join([h.claims for h in joinable])
            if index is not None:
                return await self._wait_for(joinable[index])
        task = asyncio.get_running_loop().create_task(self._new_session())
        if not shared:
            return await asyncio.shield(task)
        handshake = _Handshake(task)
        self._joinable.append(handshake)
        task.add_done_callback(lambda _: self._handshake_done(handshake))
        return await self._wait_for(handshake)

    async def _wait_for(self, handshake: _Handshake) -> ClientConnection:
        """Wait for a session being set up, counted among the streams waiting for it."""
        handshake.claims += 1
        try:
            return await asyncio.shield(handshake.task)
        finally:
            handshake.claims -= 1

    def _handshake_done(self, handshake: _Handshake) -> None:
        # (Its failure needs no retrieving here: asyncio.shield retrieves it for a
        # waiter that gave up.)
        self._joinable.remove(handshake)

    def _can_take(self, conn: ClientConnection) -> bool:
        return not conn.is_closed and self.policy.can_take(len(conn.streams))

    def _update_available(self, conn: ClientConnection) -> None:
        if self.sessions.get(conn.seq) is conn and self._can_take(conn):
            self._available.add(conn.seq)
        else:
            self._available.discard(conn.seq)

    def _choose(self) -> ClientConnection | None:
        """The newest session that can take a stream (:meth:`PoolPolicy.choose`'s rule)."""
        available = self._available
        while available:
            seq = max(available)
            conn = self.sessions.get(seq)
            if conn is not None and self._can_take(conn):
                return conn
            available.discard(seq)  # closing since it was last updated
        return None

    def _stream_closed(self, conn: ClientConnection) -> None:
        self._update_available(conn)
        if conn.streams or conn.is_closed or self._closed:
            return
        if not self.config.reuse_sessions:
            conn.close("reuse disabled")
            return
        conn.idle_since = conn.loop.time()

    def _session_closed(self, conn: ClientConnection, reason: str) -> None:
        if self.sessions.get(conn.seq) is conn:
            del self.sessions[conn.seq]
            self._available.discard(conn.seq)
            log.debug("session %d closed: %s", conn.seq, reason)

    def _arm_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            interval = self.policy.check_interval
            self._reaper = asyncio.get_running_loop().call_later(interval, self.reap)

    def reap(self) -> None:
        """Apply the idle policy now (also runs every check interval)."""
        self._reaper = None
        now = asyncio.get_running_loop().time()
        close, refresh = self.policy.expire([c.info() for c in self.sessions.values()], now)
        for seq in refresh:
            self.sessions[seq].idle_since = now
        for seq in close:
            self.sessions[seq].close("idle timeout")
        if self.sessions:
            self._arm_reaper()

    # ---------------------------------------------------------------- streams
    async def open_stream(
        self, destination: Address, *, fresh: bool = False, alone: bool = False
    ) -> Stream:
        """Open a stream to ``destination`` without waiting for the server.

        ``fresh`` forces a new session instead of a pooled one. ``alone``: never wait for
        a session being set up for other streams, nor let them wait for this one (a UDP
        association should not queue behind a burst's downloads); an idle pooled session
        is still taken.
        """
        conn = await self._acquire(fresh, alone)
        return conn.open_stream(destination)

    async def wait_acknowledged(self, stream: Stream) -> None:
        """Wait until the server reported that ``stream`` is connected.

        Raises :class:`StreamOpenError` with the server's reason on failure and
        :class:`SessionClosedError` when the session died first. A v1 server never
        acknowledges, so against one this returns as soon as that is known.
        """
        conn = stream.connection
        assert isinstance(conn, ClientConnection)
        timeout = self.config.ack_timeout
        if not conn.version_known.done():
            probe = timeout if self.server_version >= 2 else self.config.version_probe_timeout
            waits: list[asyncio.Future[Any]] = [conn.version_known, stream.acknowledged]
            done, _ = await asyncio.wait(
                waits,
                timeout=probe,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                return  # nothing said v2: treat as a v1 server
        ack = stream.acknowledged
        if ack.done() or conn.core.peer_version >= 2:
            # A timer rather than asyncio.timeout; the shield keeps a cancelled caller from
            # cancelling the stream's own future (others may watch it).
            timer = None
            if not ack.done():
                timer = conn.loop.call_later(timeout, _ack_timed_out, stream, timeout)
            try:
                error = await asyncio.shield(ack)
            except asyncio.CancelledError:
                stream.close()  # the caller gave up: do not leave the stream open
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if error is not None:
                stream.close()
                raise remote_error(error)

    async def open_stream_acknowledged(
        self, destination: Address, *, fresh: bool = False
    ) -> Stream:
        """Open a stream and wait for the server's SYNACK (see :meth:`wait_acknowledged`).

        If the session dies before the SYNACK (the watchdog fired, or the connection
        dropped) and nothing was received yet, the stream is retried once on a fresh
        session, so a stale pooled session costs a delay, not an error. ``fresh`` starts
        on a new session right away.
        """
        while True:
            stream = await self.open_stream(destination, fresh=fresh)
            try:
                await self.wait_acknowledged(stream)
                return stream
            except SessionClosedError as exc:
                if not self._may_retry(stream, exc, fresh):
                    raise
                self._note_retry(destination, exc)
                fresh = True
            except BaseException:
                stream.close()  # cancelled (even during the version probe) or failed
                raise

    def _may_retry(self, stream: Stream, exc: BaseException | None, fresh: bool) -> bool:
        """Whether ``stream``, failed with ``exc`` before its SYNACK, may be tried again on
        a new session: its pooled session died, and nothing came back on it."""
        return (
            isinstance(exc, SessionClosedError)
            and not fresh
            and stream.on_answered_session  # not a new session (its first streams)
            and self.config.retry_dead_session
            and not stream.bytes_received
        )

    def _note_retry(self, destination: Address, exc: BaseException) -> None:
        log.info("retrying %s on a fresh session: %s", destination, exc)
        self.streams_retried += 1

    def open_stream_then(self, destination: Address, done: OpenCallback) -> PendingOpen:
        """Like :meth:`open_stream_acknowledged`, reporting through a callback.

        ``done(stream, None)`` once the server acknowledged the stream, or
        ``done(None, error)`` with the :class:`AnyTLSError` that stopped it. On a pooled
        session that already spoke v2 (the common case) no task is created: the stream goes
        out at once and ``done`` runs from the SYNACK's callback. Otherwise (a new session,
        a v1 or not yet known server) it runs :meth:`open_stream_acknowledged` in a task.
        ``cancel()`` on the result abandons the attempt and closes the stream. ``done`` is
        never called before this method returns. (To relay without waiting for the
        server at all, see :class:`~anytls.aio.early.EarlyRelay`.)
        """
        conn = self.pooled_session()
        if conn is None or not conn.version_known.done() or conn.core.peer_version < 2:
            return PendingOpen.in_task(self, destination, done, fresh=False)
        return PendingOpen.on_session(self, conn, destination, done)

    async def open_connection(
        self, host: str, port: int, *, limit: int = 2**18
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a tunnelled TCP connection and return an asyncio stream pair."""
        stream = await self.open_stream_acknowledged(Address(host, port))
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        protocol.connection_made(stream)
        stream.set_protocol(protocol)
        writer = asyncio.StreamWriter(stream, protocol, reader, loop)
        return reader, writer

    async def close(self) -> None:
        """Close every session."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        conns = list(self.sessions.values())
        for conn in conns:
            conn.close("client closed")
        if conns:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(c.wait_closed()) for c in conns], timeout=5
            )
            for task in pending:
                task.cancel()
            for conn in conns:
                if not conn.closed.done():
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
