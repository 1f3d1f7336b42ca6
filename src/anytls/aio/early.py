"""Relaying a local connection before the server acknowledged its stream (0-RTT opens).

The Go clients answer a SOCKS/HTTP CONNECT at once and let the application's first bytes
follow the SYN without waiting for the server's SYNACK; :class:`EarlyRelay` does the same
for a local transport that has already been answered:

* while no session is ready (a new TLS session is being set up), local bytes are kept and
  go out in the same PSH frame as the destination, so SYN, address and the first request
  leave in one TLS record;
* on a pooled v2 session, whatever the local side sends before the SYNACK is also kept
  (up to :data:`REPLAY_LIMIT`; past it, local reads pause until the SYNACK): if the pooled
  session turns out dead before answering, the stream is opened again on a fresh session
  and those bytes are replayed, so a stale session costs a delay rather than a failure;
* an error SYNACK (or a session that died with no retry left) ends the local connection
  with a TCP reset and a log line, since the local client was already told "connected"
  (callers that have not answered yet, e.g. an absolute-URI HTTP request, pass a
  ``failure`` that turns the error into a reply instead).

After the SYNACK the local socket is spliced to the stream as in
:func:`~anytls.aio.relay.splice`: no per-chunk work is added on the relay path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.address import Address
from ..errors import AnyTLSError, SessionClosedError, StreamClosedError
from .buffers import shared_buffer
from .diagnose import hint
from .relay import SocketSide
from .stream import Stream

if TYPE_CHECKING:
    from .client import Client, ClientConnection

log = logging.getLogger("anytls.inbound")

#: Bytes a local client may send before its stream is acknowledged (kept for a replay on a
#: fresh session); past this, its socket is not read until the SYNACK comes.
REPLAY_LIMIT = 256 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.BaseTransport) -> None:
    """Close a TCP ``transport`` with a reset (SO_LINGER 0) rather than a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()  # type: ignore[attr-defined]


class EarlyRelay:
    """Tunnel an already answered local ``transport`` to ``destination`` without waiting.

    ``initial`` are bytes already read from the local client that belong to the stream.
    ``label`` prefixes log lines (e.g. ``"local client 127.0.0.1:5000: CONNECT"``).
    ``failure``, if given, turns an error into bytes for the local client, used only while
    nothing has come back from the server (otherwise the connection is reset).
    """

    def __init__(
        self,
        client: Client,
        destination: Address,
        transport: asyncio.Transport,
        initial: bytes,
        *,
        label: str,
        failure: Callable[[AnyTLSError], bytes] | None = None,
    ) -> None:
        self.client = client
        self.destination = destination
        self.transport = transport
        self.label = label
        self.failure = failure
        #: Local bytes not yet written to a stream (no stream open at the moment).
        self.buf = bytearray(initial)
        #: Bytes written to the current stream before its SYNACK, for a replay.
        self.replay: bytearray | None = None
        self.stream: Stream | None = None
        self.conn: ClientConnection | None = None  # the current stream's session
        self.fresh = False
        self.task: asyncio.Task[ClientConnection] | None = None
        self.finished = False  # the local side is gone, or the relay failed
        self.held = False  # local reads paused because too much is kept
        self.local_congested = False  # the local socket's write buffer is full
        transport.set_protocol(_LocalSide(self))

    def start(self) -> None:
        """Open the stream now on a pooled session, or once a new session is ready."""
        conn = self.client.pooled_session()
        if conn is not None:
            self._open_on(conn)
        else:
            self._acquire(fresh=False)
        kept = self.buf if self.stream is None else self.replay
        if kept is not None and len(kept) > REPLAY_LIMIT:
            self._hold()

    # ---------------------------------------------------------------- opening
    def _acquire(self, fresh: bool) -> None:
        self.fresh = fresh
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self.client.acquire_session(fresh=fresh))
        self.task.add_done_callback(self._acquired)

    def _acquired(self, task: asyncio.Task[ClientConnection]) -> None:
        self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if self.finished:
            return
        if exc is not None:
            if not isinstance(exc, AnyTLSError):
                log.error("%s %s: no session", self.label, self.destination, exc_info=exc)
                exc = AnyTLSError(f"opening a session failed: {exc!r}")
            self._fail(exc)
            return
        conn = task.result()
        if conn.is_closed:
            self._fail(SessionClosedError("the new session closed before the stream opened"))
            return
        self._open_on(conn)

    def _open_on(self, conn: ClientConnection) -> None:
        early, self.buf = bytes(self.buf), bytearray()
        stream = self.stream = conn.open_stream(self.destination, early)
        self.conn = conn
        v2 = conn.core.peer_version >= 2
        if v2 and self._may_retry(stream):
            self.replay = bytearray(early)
        stream.set_protocol(_StreamSide(self, stream))
        # (e.g. a retry's stream while the local socket is still full)
        stream.acknowledged.add_done_callback(self._ack_congestion)
        if not conn.version_known.done():
            conn.version_known.add_done_callback(
                lambda _: self._ack_congestion(stream.acknowledged)
            )
        self.apply_congestion()
        if self.replay is None:
            self._settle(stream)  # nothing to replay: relay directly from now on
        else:
            stream.acknowledged.add_done_callback(self._acknowledged)

    def _may_retry(self, stream: Stream) -> bool:
        return (
            not self.fresh
            and stream.on_answered_session  # not a new session (its first streams)
            and self.client.config.retry_dead_session
        )

    def apply_congestion(self) -> None:
        """Hold the stream back while the local socket's write buffer is full.

        Not before the SYNACK, nor while the server's version is unknown: pausing a stream
        pauses its session's reads, so the SYNACK could not arrive, and the watchdog would
        declare a reused session dead (nothing but the SYNACK comes first anyway). Applied
        once the stream is acknowledged (or the server is known to be v1).
        """
        stream = self.stream
        if stream is None:
            return
        if not self.local_congested:
            stream.resume_reading()
        elif self._nothing_to_wait_for(stream):
            stream.pause_reading()

    def _ack_congestion(self, ack: asyncio.Future[str | None]) -> None:
        stream = self.stream
        if stream is not None and ack is stream.acknowledged and not self.finished:
            self.apply_congestion()

    def _nothing_to_wait_for(self, stream: Stream) -> bool:
        """The stream is acknowledged, or its server is known to be v1 (no SYNACK)."""
        if stream.acknowledged.done():
            return True
        known = self.conn.version_known if self.conn is not None else None
        v1 = known is not None and known.done() and not known.cancelled()
        return v1 and self.conn is not None and self.conn.core.peer_version < 2

    def _acknowledged(self, ack: asyncio.Future[str | None]) -> None:
        stream = self.stream
        if stream is None or ack is not stream.acknowledged or self.finished:
            return
        if not ack.cancelled() and ack.exception() is None and ack.result() is None:
            self._settle(stream)
        # Failures are handled when the stream is lost (_StreamSide.connection_lost).

    def _settle(self, stream: Stream) -> None:
        """Nothing more to keep: splice the local socket to ``stream``."""
        self.replay = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.set_protocol(SocketSide(stream))
        if self.held:
            self.held = False
            transport.resume_reading()

    # ---------------------------------------------------------------- from the local side
    def local_data(self, data: memoryview) -> None:
        stream = self.stream
        if stream is None:
            self.buf += data
            kept = len(self.buf)
        else:
            if stream.is_closing():
                return
            stream.write(data)
            if self.replay is None:
                return
            self.replay += data
            kept = len(self.replay)
        if kept > REPLAY_LIMIT:
            self._hold()

    def _hold(self) -> None:
        if not self.held and not self.transport.is_closing():
            self.held = True
            self.transport.pause_reading()

    def local_lost(self) -> None:
        """The local client left (or was closed): drop whatever is under way."""
        self.finished = True
        self.replay = None
        if self.task is not None:
            self.task.cancel()
        if self.stream is not None:
            self.stream.resume_reading()
            self.stream.close()

    # ---------------------------------------------------------------- from the stream
    def stream_lost(self, stream: Stream, exc: Exception | None) -> None:
        if stream is not self.stream or self.finished:
            if not self.transport.is_closing():
                self.transport.close()
            return
        error = self._why_ended(stream)
        replay = self.replay
        if replay is not None and error and self.client._may_retry(stream, error, self.fresh):
            # The pooled session died before answering: again on a fresh session, with
            # everything the local client sent so far.
            self.client._note_retry(self.destination, error)
            self.stream = None
            self.buf = replay + self.buf
            self.replay = None
            self._acquire(fresh=True)
            return
        if error is not None:
            self._fail(error)
            return
        self.finished = True
        if not self.transport.is_closing():
            self.transport.close()

    def _why_ended(self, stream: Stream) -> AnyTLSError | None:
        """The failure that ended ``stream``, or None for an ordinary end."""
        ack = stream.acknowledged
        if not ack.done() or ack.cancelled():
            return None
        ack_exc = ack.exception()
        if ack_exc is None:
            text = ack.result()
            if text is None:
                return None  # acknowledged: an ordinary end
            from .client import remote_error

            return remote_error(text)
        if isinstance(ack_exc, AnyTLSError) and not isinstance(ack_exc, StreamClosedError):
            return ack_exc  # session lost, or no answer in time
        v2 = self.conn is not None and self.conn.core.peer_version >= 2
        if v2 and not stream.bytes_received:
            # Ended before any answer, although a v2 server always answers first.
            return AnyTLSError(str(ack_exc))
        return None  # a v1 server never answers: its FIN is an ordinary end

    def _fail(self, error: AnyTLSError) -> None:
        self.finished = True
        self.replay = None
        if self.stream is not None and not self.stream.is_closing():
            self.stream.close()
        transport = self.transport
        if transport.is_closing():
            return
        answered = self.stream is not None and self.stream.bytes_received
        replied = self.failure is not None and not answered
        what = f"{self.label} {self.destination} failed"
        if isinstance(error, SessionClosedError):
            # The server could not be reached or refused us: say why, once a minute.
            self.client.failures.report(
                what if replied else f"{what} (local connection reset)", error
            )
        elif replied:
            log.info("%s: %s%s", what, error, hint(error))
        else:
            log.info("%s: %s%s (local connection reset)", what, error, hint(error))
        if replied:
            assert self.failure is not None
            transport.write(self.failure(error))
            transport.close()
            return
        reset(transport)


class _LocalSide(asyncio.BufferedProtocol):
    """The local socket until the stream is acknowledged."""

    def __init__(self, relay: EarlyRelay) -> None:
        self.relay = relay
        self._buffer = shared_buffer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.relay.local_data(self._buffer[:nbytes])

    def eof_received(self) -> bool:
        return False  # AnyTLS has no half-close: the transport closes, local_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.local_lost()

    def pause_writing(self) -> None:
        self.relay.local_congested = True
        self.relay.apply_congestion()

    def resume_writing(self) -> None:
        self.relay.local_congested = False
        self.relay.apply_congestion()


class _StreamSide(asyncio.Protocol):
    """Stream bytes to the local socket; an unacknowledged stream's end is judged."""

    def __init__(self, relay: EarlyRelay, stream: Stream) -> None:
        self.relay = relay
        self.stream = stream
        self.transport = relay.transport

    def data_received(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.stream_lost(self.stream, exc)

    def pause_writing(self) -> None:
        transport = self.relay.transport
        if not transport.is_closing():
            transport.pause_reading()

    def resume_writing(self) -> None:
        relay = self.relay
        if not relay.held and not relay.transport.is_closing():
            relay.transport.resume_reading()
