"""A tunnelled stream exposed as an :class:`asyncio.Transport`.

Whatever protocol sits on a :class:`Stream` (a relay to a socket, or a
``StreamReaderProtocol`` for the ``open_connection`` API) sees an ordinary transport:
``write`` queues PSH frames on the session, ``close`` sends FIN, ``pause_reading`` stops
the session's TLS reads (AnyTLS has no per-stream flow control, so a slow consumer holds
the session back exactly as Go's blocking pipe does, but memory stays bounded), and the
protocol's ``pause_writing`` is called while the session's TLS transport is congested.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ..errors import SessionClosedError, StreamClosedError, StreamOpenError


class StreamOwner(Protocol):
    """What a :class:`Stream` needs from the session that carries it (in practice a
    :class:`~anytls.aio.connection.SessionConnection`)."""

    loop: asyncio.AbstractEventLoop

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def send_stream_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None: ...
    def end_stream(self, stream_id: int) -> None: ...
    def stream_reading_paused(self, paused: bool) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: ...
    @property
    def writing_paused(self) -> bool: ...


class Stream(asyncio.Transport):
    """One AnyTLS stream of a session.

    Its owner feeds it through the ``feed_*`` methods and :meth:`session_writing`; the
    protocol on top sees an ordinary transport.
    """

    def __init__(self, connection: StreamOwner, stream_id: int) -> None:
        super().__init__()
        self.connection = connection
        self.stream_id = stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        #: What the protocol was last told: ``pause_writing`` (True) or nothing / resumed.
        self._protocol_paused = False
        self._closing = False
        self._lost = False
        self._reading_paused = False
        self._pending: list[bytes] = []
        self._pending_eof: Exception | bool | None = False
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Client side: opened on a session the server had already answered on (a pooled
        #: one), so the session's death before the SYNACK means it was stale, and the
        #: stream may be retried on a fresh session. False for the first stream of a new
        #: session and for the streams that waited for that session with it.
        self.on_answered_session = False
        #: Client side: resolved when the server acknowledges the stream (SYNACK).
        self.acknowledged: asyncio.Future[str | None] = connection.loop.create_future()

    # ---------------------------------------------------------------- transport API
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Stream id under ``"stream_id"``; the rest from the session's transport."""
        if name == "stream_id":
            return self.stream_id
        return self.connection.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Attach ``protocol``; data that arrived before it is delivered now, and a
        congested session is reported to it at once (``pause_writing``)."""
        self._protocol = protocol
        self._protocol_paused = False
        if self.connection.writing_paused:
            self.session_writing(True)
        if self._pending or self._pending_eof is not False:
            self.connection.loop.call_soon(self._drain_pending)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The attached protocol."""
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        """True once the stream is closing or closed."""
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for the peer."""
        if self._closing:
            raise StreamClosedError(f"stream {self.stream_id} is closed")
        n = len(data)
        if n:
            self.bytes_sent += n
            self.connection.send_stream_data(self.stream_id, data)

    def writelines(self, list_of_data: Any) -> None:
        """Queue each buffer in ``list_of_data``."""
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        """AnyTLS has no half-close: FIN ends both directions."""
        return False

    def write_eof(self) -> None:
        """Close the stream (AnyTLS has no half-close)."""
        self.close()

    def close(self) -> None:
        """Send FIN and end the stream; the protocol's ``connection_lost`` follows."""
        if self._closing:
            return
        self._closing = True
        self.connection.end_stream(self.stream_id)
        self._set_reading(False)
        self.connection.loop.call_soon(self._lose, None)

    def abort(self) -> None:
        """Same as :meth:`close` (queued data still goes out with the session)."""
        self.close()

    def pause_reading(self) -> None:
        """Stop delivering data: pauses the whole session's reads until resumed."""
        self._set_reading(True)

    def resume_reading(self) -> None:
        """Resume delivering data."""
        self._set_reading(False)

    def is_reading(self) -> bool:
        """False while paused."""
        return not self._reading_paused

    def get_write_buffer_size(self) -> int:
        """Bytes queued on the session's TLS transport (shared by all its streams)."""
        return self.connection.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Limits belong to the session's TLS transport; ignored here."""

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """Limits of the session's TLS transport."""
        return self.connection.get_write_buffer_limits()

    # ---------------------------------------------------------------- from the owner
    def _set_reading(self, paused: bool) -> None:
        if paused != self._reading_paused:
            self._reading_paused = paused
            self.connection.stream_reading_paused(paused)

    def feed_data(self, data: bytes) -> None:
        """The peer sent ``data`` on this stream."""
        self.bytes_received += len(data)
        protocol = self._protocol
        if protocol is None or self._pending:
            self._pending.append(data)
            return
        protocol.data_received(data)  # type: ignore[attr-defined]

    def feed_end(self, exc: Exception | None) -> None:
        """The peer sent FIN (``exc`` None) or the session died (``exc`` says why)."""
        if self._lost:
            return
        self._closing = True
        self._set_reading(False)
        self._resolve_ack(exc)
        if self._protocol is None or self._pending:
            self._pending_eof = exc
            return
        self._lose(exc, eof=exc is None)

    def _resolve_ack(self, exc: BaseException | None) -> None:
        """The stream ended: whoever waits for its SYNACK learns why."""
        ack = self.acknowledged
        if not ack.done():
            if not isinstance(exc, SessionClosedError | StreamOpenError):
                exc = StreamClosedError(
                    f"stream {self.stream_id} ended before the server acknowledged it"
                    + (f": {exc}" if exc else "")
                )
            ack.set_exception(exc)
            ack.exception()  # retrieved here: nobody may be waiting

    def feed_ack(self, error: str | None) -> None:
        """The server answered the SYN: ``None`` for success, else its error text."""
        if not self.acknowledged.done():
            self.acknowledged.set_result(error)

    def _drain_pending(self) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        pending, self._pending = self._pending, []
        for data in pending:
            protocol.data_received(data)  # type: ignore[attr-defined]
        if self._pending_eof is not False:
            exc = self._pending_eof
            self._pending_eof = False
            self._lose(exc if isinstance(exc, Exception) else None, eof=exc is None)

    def fail(self, exc: Exception) -> None:
        """End the stream at once because of ``exc`` (e.g. an error SYNACK)."""
        self._lose(exc)

    def _lose(self, exc: Exception | None, eof: bool = False) -> None:
        if self._lost:
            return
        self._closing = True
        self._lost = True
        self._set_reading(False)
        self._resolve_ack(exc)
        protocol = self._protocol
        if protocol is None:
            return
        if eof and hasattr(protocol, "eof_received"):
            protocol.eof_received()
        protocol.connection_lost(exc)

    def session_writing(self, paused: bool) -> None:
        """The session's TLS transport is congested (``True``) or drained again."""
        protocol = self._protocol
        if protocol is None or self._lost or paused == self._protocol_paused:
            return
        self._protocol_paused = paused
        if paused:
            protocol.pause_writing()
        else:
            protocol.resume_writing()
