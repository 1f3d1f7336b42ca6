"""Kept-alive absolute-URI HTTP proxy connections of the mixed inbound.

:class:`HttpForwardRelay` runs :class:`~anytls.core.http_forward.HttpForward` on a local
connection: each origin connection is an AnyTLS stream opened by an
:class:`~anytls.aio.early.EarlyRelay` (so the request leaves with the SYN, a stale pooled
session is retried, and a destination that cannot be reached becomes a 502/504 response),
whose "local transport" is an :class:`_OriginLeg`: what the stream returns is parsed as
the origin's responses, and the requests go to it as if read from a socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..aio.early import EarlyRelay, reset
from ..core.http_forward import (
    Action,
    CloseLocal,
    CloseOrigin,
    Handoff,
    HttpForward,
    OpenOrigin,
    PauseLocal,
    ToLocal,
    ToOrigin,
)
from ..errors import AnyTLSError

if TYPE_CHECKING:
    from .mixed import MixedInbound

log = logging.getLogger("anytls.inbound")

#: Seconds a kept-alive local connection may sit between requests before it is closed
#: (the origin's stream closes with it).
IDLE_TIMEOUT = 300.0
#: Seconds the rest of a request head may take once its first bytes came.
HEAD_TIMEOUT = 30.0


class _OriginLeg(asyncio.Transport):
    """One origin connection, seen by its :class:`EarlyRelay` as the local socket."""

    def __init__(self, relay: HttpForwardRelay) -> None:
        super().__init__()
        self._relay = relay
        self._protocol: asyncio.BaseProtocol | None = None
        self._closing = False
        self._reading = True

    # ------------------------------------------------ what the EarlyRelay sees
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return default  # not a socket: reset() only aborts
        return self._relay.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._relay.origin_data(self, bytes(data))

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._relay.origin_ended(self)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self._reading = False
        self._relay.update_reading()

    def resume_reading(self) -> None:
        self._reading = True
        self._relay.update_reading()

    def is_reading(self) -> bool:
        return self._reading

    # ------------------------------------------------ what the forwarder does with it
    def send(self, data: bytes) -> None:
        """Hand request bytes to the stream's side, as if read from a socket."""
        protocol = self._protocol
        if self._closing or protocol is None:
            return
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view and not self._closing:
                buf = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            protocol.data_received(data)  # type: ignore[attr-defined]

    def end(self) -> None:
        """End this origin connection (the stream is closed)."""
        if self._closing:
            return
        self._closing = True
        if self._protocol is not None:
            self._protocol.connection_lost(None)

    def writing_paused(self, paused: bool) -> None:
        """The local client is (or no longer is) taking responses in."""
        protocol = self._protocol
        if protocol is not None and not self._closing:
            if paused:
                protocol.pause_writing()
            else:
                protocol.resume_writing()


class HttpForwardRelay(asyncio.Protocol):
    """The local connection's protocol once it sent an absolute-URI request.

    ``first`` are the bytes read so far, from the start of that request. ``failure``
    turns a stream that could not be opened into the response to send (a 502 or 504).
    """

    def __init__(
        self,
        inbound: MixedInbound,
        transport: asyncio.Transport,
        peer: str,
        first: bytes,
        failure: Callable[[AnyTLSError], bytes],
    ) -> None:
        self.inbound = inbound
        self.transport = transport
        self.peer = peer
        self.failure = failure
        self.core = HttpForward(inbound.auth)
        self.leg: _OriginLeg | None = None
        self._core_paused = False
        self._writing_paused = False
        self._gone = False
        self._handoff_pending: Handoff | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_head = False
        transport.set_protocol(self)
        self._apply(self.core.receive_local(first))

    # ------------------------------------------------------------ local transport
    def data_received(self, data: bytes) -> None:
        self._apply(self.core.receive_local(data))

    def eof_received(self) -> bool:
        self._apply(self.core.receive_local(b""))
        return not self.core.closed  # keep writing while a response is under way

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self.core.closed = True
        self._cancel_timer()
        self._end_leg()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.leg is not None:
            self.leg.writing_paused(True)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.leg is not None:
            self.leg.writing_paused(False)
        pending, self._handoff_pending = self._handoff_pending, None
        if pending is not None and not self._gone:
            self._handoff(pending)

    # ------------------------------------------------------------ origin legs
    def origin_data(self, leg: _OriginLeg, data: bytes) -> None:
        if leg is self.leg:
            self._apply(self.core.receive_origin(data))

    def origin_ended(self, leg: _OriginLeg) -> None:
        if leg is self.leg:
            self.leg = None
            self._apply(self.core.origin_ended())
            self.update_reading()

    def update_reading(self) -> None:
        """Read the local client unless the core waits or the stream is congested."""
        if self._gone or self.transport.is_closing():
            return
        if self._core_paused or self._leg_paused() or self._handoff_pending is not None:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
        self._arm_timer()

    def _leg_paused(self) -> bool:
        return self.leg is not None and not self.leg.is_reading()

    def _end_leg(self) -> None:
        leg, self.leg = self.leg, None
        if leg is not None:
            leg.end()

    # ------------------------------------------------------------ actions
    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is ToLocal:
                if not self.transport.is_closing():
                    self.transport.write(action.data)
            elif type(action) is ToOrigin:
                if self.leg is not None:
                    self.leg.send(action.data)
            elif type(action) is OpenOrigin:
                self._open(action)
            elif type(action) is CloseOrigin:
                self._end_leg()
                self.update_reading()
            elif type(action) is PauseLocal:
                self._core_paused = action.paused
                self.update_reading()
            elif type(action) is CloseLocal:
                self._close(action)
            elif type(action) is Handoff:
                if self._writing_paused:
                    # The tunnel's protocols could not learn that the local socket is
                    # congested: hand over once it has drained.
                    self._handoff_pending = action
                    self.update_reading()
                else:
                    self._handoff(action)
        self._arm_timer()

    # ------------------------------------------------------------ idle connections
    def _arm_timer(self) -> None:
        """Between requests the connection may idle for IDLE_TIMEOUT, and a started head
        must be complete within HEAD_TIMEOUT; otherwise no timer runs."""
        core = self.core
        if not core.idle or self._gone or self._handoff_pending is not None or self._leg_paused():
            # (while the stream is congested the client's next head may wait unread)
            self._cancel_timer()
            return
        head = core.head_started
        if self._timer is not None and self._timer_head == head:
            return
        self._cancel_timer()
        self._timer_head = head
        delay = HEAD_TIMEOUT if head else IDLE_TIMEOUT
        self._timer = asyncio.get_running_loop().call_later(delay, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        what = "the rest of a request head" if self._timer_head else "another request"
        log.debug("local client %s: no %s in time; closing", self.peer, what)
        self._close(CloseLocal())

    def _open(self, action: OpenOrigin) -> None:
        self._end_leg()
        leg = self.leg = _OriginLeg(self)
        label = f"local client {self.peer}: {action.method}"
        log.debug("%s %s", label, action.address)
        relay = EarlyRelay(
            self.inbound.client,
            action.address,
            leg,
            action.data,
            label=label,
            failure=self.failure,
        )
        relay.start()
        if self._writing_paused:
            leg.writing_paused(True)

    def _close(self, action: CloseLocal) -> None:
        if action.reason:
            log.info("local client %s: %s; closing", self.peer, action.reason)
        self.core.closed = True
        self._cancel_timer()
        self._end_leg()
        if self.transport.is_closing():
            return
        if action.reset:
            reset(self.transport)
        else:
            self.transport.close()

    def _handoff(self, action: Handoff) -> None:
        """A CONNECT or Upgrade request after forwarded ones: the handshake code tunnels it."""
        from .mixed import _Handshake

        self._cancel_timer()
        self._end_leg()
        transport = self.transport
        if transport.is_closing():
            return
        handshake = _Handshake(self.inbound)
        transport.set_protocol(handshake)
        handshake.connection_made(transport)
        transport.resume_reading()
        handshake.data_received(action.data)
        if action.eof:
            # The client closed its side behind the request; tell whoever reads now.
            protocol = transport.get_protocol()
            if not protocol.eof_received():  # type: ignore[attr-defined]
                transport.close()


__all__ = ["HttpForwardRelay"]
