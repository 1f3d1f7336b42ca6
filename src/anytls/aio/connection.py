"""The asyncio side of one session: a buffered protocol on the TLS transport.

:class:`SessionConnection` is the single pump between a TLS transport and a sans-IO
:class:`~anytls.core.session.Session`: ``buffer_updated`` feeds the core, events are
dispatched to :class:`~anytls.aio.stream.Stream` objects, and queued output is flushed
once per loop iteration (``call_soon``), so many small writes coalesce. Flow control both
ways: a stream whose consumer is slow pauses TLS reads; a congested TLS transport pauses
every stream's producer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..core.address import Address
from ..core.events import Event, SessionTerminated, StreamDataReceived, StreamEnded
from ..core.session import Session
from ..errors import RemoteProtocolError, SessionClosedError
from .buffers import shared_buffer
from .stream import Stream

log = logging.getLogger("anytls.session")

#: The close reason when the peer's side of the connection ended.
PEER_CLOSED = "the peer closed the connection"

#: Unflushed stream bytes that make a write go to the transport at once rather than at
#: the end of the loop iteration (small writes still coalesce into one TLS record).
FLUSH_THRESHOLD = 256 * 1024


class SessionConnection(asyncio.BufferedProtocol):
    """Base protocol for both ends; subclasses handle role-specific events."""

    def __init__(self, core: Session, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.core = core
        self.loop = loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.peer = "?"
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.bytes_in = 0
        self.bytes_out = 0
        self._flush_scheduled = False
        #: A write was flushed at once in this loop iteration (the next ones coalesce).
        self._flushed_at_once = False
        #: Stream bytes queued in the core since the last flush.
        self._unflushed = 0
        self._read_pauses = 0
        self._write_paused = False
        self._close_reason: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._buffer = shared_buffer()
        core.touch(self.loop.time())

    # ---------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = str(Address(peer[0], peer[1]))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        try:
            events = self.core.receive_data(self._buffer[:nbytes], self.loop.time())
        except RemoteProtocolError as exc:
            self.protocol_error(exc)
            return
        if events:
            self.handle_events(events)
        self.flush()
        self.arm_timer()

    def eof_received(self) -> bool:
        # The peer's TCP side is gone: a TLS close_notify exchange could only time out.
        self.close(PEER_CLOSED, abort=True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_reason or (f"connection lost: {exc}" if exc else "connection closed")
        self._close_reason = reason
        self.core.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._end_streams(reason)
        if not self.closed.done():
            self.closed.set_result(None)
        self.session_closed(reason)

    @property
    def writing_paused(self) -> bool:
        """True while the TLS transport is congested (its producers are paused)."""
        return self._write_paused

    def pause_writing(self) -> None:
        self._write_paused = True
        for stream in list(self.streams.values()):
            stream.session_writing(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            stream.session_writing(False)

    # ---------------------------------------------------------------- events
    def handle_events(self, events: list[Event]) -> None:
        """Dispatch stream events; hand the rest to :meth:`handle_event`."""
        streams = self.streams
        for event in events:
            if type(event) is StreamDataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.feed_data(event.data)
            elif type(event) is StreamEnded:
                stream = streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.feed_end(None)
                    self.stream_closed(stream)
            elif type(event) is SessionTerminated:
                self.close(event.reason)  # flushes what is queued first
            else:
                self.handle_event(event)

    def handle_event(self, event: Event) -> None:
        """Role-specific events; the default ignores them."""

    def protocol_error(self, exc: RemoteProtocolError) -> None:
        """The peer broke the protocol: log and close."""
        log.info("closing session with %s: %s", self.peer, exc)
        self.close(str(exc), abort=True)

    def session_closed(self, reason: str) -> None:
        """Called once when the connection is gone."""

    def stream_closed(self, stream: Stream) -> None:
        """Called when a stream leaves the session (either side closed it)."""

    # ---------------------------------------------------------------- for streams
    def add_stream(self, stream_id: int) -> Stream:
        """Create and register the :class:`Stream` for ``stream_id``."""
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream  # (its protocol learns a pause when attached)
        return stream

    def send_stream_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue stream bytes and flush them now or at the end of the loop iteration.

        The first write of an iteration, with nothing else queued, goes out at once (a
        request or a datagram leaves before the loop reads its sockets again); writes
        after it are coalesced until the end of the iteration. Past
        :data:`FLUSH_THRESHOLD` unflushed bytes they go to the transport at once, so its
        write-buffer limits (``pause_writing``, and so ``drain()``) also bound a writer
        that never yields to the loop.
        """
        self.core.send_data(stream_id, data)
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_THRESHOLD:
            self.flush()
        elif self._flush_scheduled or self._flushed_at_once:
            self.schedule_flush()
        else:
            self._flushed_at_once = True
            self.loop.call_soon(self._next_iteration)
            self.flush()

    def _next_iteration(self) -> None:
        self._flushed_at_once = False

    def send_synack(self, stream_id: int, error: str | None = None) -> None:
        """Server: answer ``stream_id``'s SYN (v2 clients only), ``error`` if it failed.

        Success goes out at once (the client may be waiting to send); an error is flushed
        with the FIN that follows it, in one record.
        """
        self.core.send_synack(stream_id, error)
        if error is None:
            self.flush()
        else:
            self.schedule_flush()

    def end_stream(self, stream_id: int) -> None:
        """Queue FIN for ``stream_id`` and forget it."""
        self.core.end_stream(stream_id)
        stream = self.streams.pop(stream_id, None)
        self.schedule_flush()
        if stream is not None:
            self.stream_closed(stream)

    @property
    def reads_held(self) -> bool:
        """True while this side keeps the session's reads paused for one of its streams."""
        return self._read_pauses > 0

    def stream_reading_paused(self, paused: bool) -> None:
        """A stream's consumer paused (or resumed); TLS reads stop while any is paused."""
        self._read_pauses += 1 if paused else -1
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if paused and self._read_pauses == 1:
            transport.pause_reading()
        elif not paused and self._read_pauses == 0:
            transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Extra info of the TLS transport."""
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        """Bytes waiting in the TLS transport."""
        return self.transport.get_write_buffer_size() if self.transport else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The TLS transport's write buffer limits."""
        if self.transport is None:
            return (0, 0)
        return self.transport.get_write_buffer_limits()

    # ---------------------------------------------------------------- timers
    def arm_timer(self) -> None:
        """Make sure the one timer fires by the core's next deadline."""
        deadline = self.core.next_deadline()
        if deadline is None or self.core.closed:
            return
        if self._timer_at is not None and self._timer_at <= deadline:
            return  # an earlier wake-up re-checks and re-arms
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        # The only event a timer yields is SessionTerminated (watchdog, heartbeat or idle
        # timeout): the peer is gone or unwanted.
        for event in self.core.handle_timer(self.loop.time()):
            assert type(event) is SessionTerminated
            self.close(event.reason, abort=True)
        self.flush()
        self.arm_timer()

    # ---------------------------------------------------------------- output
    def schedule_flush(self) -> None:
        """Flush queued output at the end of this loop iteration."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write everything the core has queued."""
        self._flush_scheduled = False
        self._unflushed = 0
        chunks = self.core.data_to_send()
        if not chunks:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.bytes_out += sum(map(len, chunks))
        if len(chunks) == 1:
            transport.write(chunks[0])
        else:
            transport.writelines(chunks)

    @property
    def is_closed(self) -> bool:
        """True once the session is closing or closed."""
        return self.core.closed or self.transport is None or self.transport.is_closing()

    def close(self, reason: str = "closed", abort: bool = False) -> None:
        """Flush what is queued and close the TLS connection."""
        if self._close_reason is None:
            self._close_reason = reason
        transport = self.transport
        self.flush()
        self.core.close()
        if transport is not None and not transport.is_closing():
            if abort:
                transport.abort()
            else:
                transport.close()
        # Streams learn at once; a TLS shutdown with a dead peer can take a while.
        self._end_streams(self._close_reason)

    def _end_streams(self, reason: str) -> None:
        streams = list(self.streams.values())
        if not streams:
            return
        self.streams.clear()
        error = SessionClosedError(f"session with {self.peer} ended: {reason}")
        for stream in streams:
            stream.feed_end(error)

    async def wait_closed(self) -> None:
        """Wait until the connection is gone."""
        await asyncio.shield(self.closed)
