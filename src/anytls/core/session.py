"""The AnyTLS session state machine, sans-IO (PROTOCOL.md §3–§5).

Theory of operation
-------------------
A :class:`Session` is one TLS connection's worth of protocol: bytes from the peer go into
:meth:`Session.receive_data`, which returns :mod:`~anytls.core.events`; calls such as
:meth:`Session.open_stream` or :meth:`Session.send_data` only queue output, which
:meth:`Session.data_to_send` hands back as a list of byte strings, each meant to be one
transport write (one TLS record when small). No clock, socket or event loop is touched.

Receiving: after the auth preface (server side), the byte stream is a sequence of frames,
split by :class:`~anytls.core.frame.FrameDecoder` (PSH data as it arrives, other frames
whole). Each whole frame goes to the handler that ``HANDLERS_BY_ROLE`` names for this
session's role; a command the role does not accept is skipped like WASTE.

Sending (client): each queued write is one "packet" in the padding sense. Packet 0 is the
preface; Settings and the first SYN are held back and go out with the first stream's
address as packet 1, as anytls-go does. While the packet counter is below the scheme's
``stop`` each packet is cut and padded into records by :func:`~anytls.core.padding.shape_packet`;
after that packets are passed through untouched. The server never pads.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import (
    AuthenticationError,
    LocalProtocolError,
    PaddingSchemeError,
    SessionClosedError,
    StreamClosedError,
)
from .auth import PrefaceReader, build_preface
from .constants import HEADER_SIZE, MAX_FRAME_DATA, PROTOCOL_VERSION, Command, Role
from .events import (
    AlertReceived,
    Authenticated,
    Event,
    HeartbeatAcknowledged,
    HeartbeatRequested,
    PaddingSchemeRejected,
    PaddingSchemeUpdated,
    PeerVersionKnown,
    ServerSettingsReceived,
    SessionTerminated,
    SettingsReceived,
    StreamAcknowledged,
    StreamDataReceived,
    StreamEnded,
    StreamOpened,
)
from .frame import FrameDecoder, encode_data_frames, encode_frame
from .padding import PaddingScheme, shape_packet
from .settings import format_kv, parse_kv, parse_version

#: Alert text sent to a client that opens a stream before sending Settings.
ALERT_NO_SETTINGS = "client did not send its settings"
#: Once padding is over, frames queued together and totalling at most this many bytes are
#: returned as one chunk (one TLS record: the largest TLS plaintext fragment).
COALESCE_LIMIT = 16384


def _extend_coalesced(out: list[bytes], packets: list[bytes]) -> None:
    """Append unshaped ``packets`` to ``out``, joined into one write when all are small.

    Small frames queued together (SYN + destination, data + FIN) then leave as one TLS
    record instead of one record per frame; large data is never copied.
    """
    if len(packets) > 1 and sum(map(len, packets)) <= COALESCE_LIMIT:
        out.append(b"".join(packets))
    else:
        out.extend(packets)


#: Characters of a peer's text (an error SYNACK, an alert) kept for messages and logs.
PEER_TEXT_LIMIT = 300
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def peer_text(payload: bytes | memoryview) -> str:
    """A peer's text, safe to log: decoded (bad UTF-8 replaced), control characters
    escaped (no forged log lines or terminal escapes) and cut to
    :data:`PEER_TEXT_LIMIT` characters."""
    text = bytes(payload[: PEER_TEXT_LIMIT * 4]).decode("utf-8", "replace")
    if _UNPRINTABLE.search(text):
        text = _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= PEER_TEXT_LIMIT else text[:PEER_TEXT_LIMIT] + "…"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """The knobs of one session, built once per client or server (the settings that the
    asyncio layer's ``ClientConfig`` and ``ServerConfig`` hand down to each session)."""

    version: int = PROTOCOL_VERSION
    """Protocol version to advertise (1 only to act as a v1 peer in tests)."""
    client_name: str = "anytls-py"
    """Client: the ``client=`` value of the Settings frame."""
    max_streams: int = 0
    """Server: streams one session may hold open at once (0 = no limit)."""
    synack_timeout: float = 3.0
    """Client: seconds a stream on a reused v2 session may wait for SYNACK before the
    session is declared dead (0 = never)."""
    heartbeat_interval: float = 0.0
    """Seconds without traffic from the peer before a heartbeat is sent (0 = off)."""
    heartbeat_timeout: float = 10.0
    """Seconds to wait for the heartbeat answer before the session is declared dead."""
    idle_timeout: float = 0.0
    """Server: seconds a session with no streams and no traffic may live (0 = forever)."""


class SessionState(enum.Enum):
    """Life cycle of a session."""

    AUTHENTICATING = "authenticating"
    OPEN = "open"
    CLOSED = "closed"


class Session:
    """One AnyTLS session; build it with :meth:`client` or :meth:`server`."""

    def __init__(
        self,
        role: Role,
        config: SessionConfig | None = None,
        *,
        padding: PaddingScheme | None = None,
        password: str | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        config = config or SessionConfig()
        self.config = config
        self.role = role
        self._is_server = role is Role.SERVER
        # The knobs, copied from ``config`` for cheap access (see SessionConfig).
        self.synack_timeout = config.synack_timeout
        self.heartbeat_interval = config.heartbeat_interval
        self.heartbeat_timeout = config.heartbeat_timeout
        self.idle_timeout = config.idle_timeout
        self.version = config.version
        self.max_streams = config.max_streams
        self._client_name = config.client_name
        self._synack_deadline: float | None = None
        self._heartbeat_deadline: float | None = None
        self._last_activity = 0.0
        self.padding = padding or PaddingScheme.default()
        #: The protocol version the peer announced (0 until known).
        self.peer_version = 0
        self.user: str | None = None
        self._password = password
        self._preface = PrefaceReader(users) if role is Role.SERVER and users is not None else None
        self.state = SessionState.AUTHENTICATING if self._preface else SessionState.OPEN
        self._settings_received = False
        self._streams: set[int] = set()
        self._next_stream_id = 1
        # Receive side.
        self._rbuf = bytearray()
        self._decoder = FrameDecoder()
        self._handlers = HANDLERS_BY_ROLE[role]
        self._events: list[Event] = []
        self._version_reported = role is Role.SERVER
        # Send side.
        self._ready: list[bytes] = []
        self._packets: list[bytes] = []
        self._held: bytes | None = None
        self._packet_counter = 0
        self._shaping = role is Role.CLIENT

    # ------------------------------------------------------------------ constructors
    @classmethod
    def client(
        cls,
        password: str,
        config: SessionConfig | None = None,
        *,
        padding: PaddingScheme | None = None,
    ) -> Session:
        """A client session; call :meth:`initiate` before anything else."""
        return cls(Role.CLIENT, config, padding=padding, password=password)

    @classmethod
    def server(
        cls,
        users: Mapping[str, str] | None,
        config: SessionConfig | None = None,
        *,
        padding: PaddingScheme | None = None,
    ) -> Session:
        """A server session checking the preface against ``users`` (name → password).

        With ``users=None`` the preface is assumed already checked.
        """
        return cls(Role.SERVER, config, padding=padding, users=users)

    # ------------------------------------------------------------------ properties
    @property
    def frames_received(self) -> int:
        """Frames received so far (any command); lets a client tell a v1 peer apart."""
        return self._decoder.frames

    @property
    def closed(self) -> bool:
        """True once the session is over."""
        return self.state is SessionState.CLOSED

    @property
    def open_streams(self) -> int:
        """How many streams are open."""
        return len(self._streams)

    def is_stream_open(self, stream_id: int) -> bool:
        """True while ``stream_id`` is open."""
        return stream_id in self._streams

    # ------------------------------------------------------------------ client side
    @property
    def last_activity(self) -> float:
        """When data last arrived from the peer (or :meth:`touch` was called)."""
        return self._last_activity

    def touch(self, now: float) -> None:
        """Record activity at ``now`` (e.g. when the session is created)."""
        self._last_activity = now

    def initiate(self) -> None:
        """Client: queue the auth preface and hold Settings for the first packet."""
        if self.role is not Role.CLIENT or self._password is None:
            raise LocalProtocolError("only a client session with a password can initiate")
        self._ready.append(build_preface(self._password, self.padding.preface_padding_length()))
        settings = {
            "v": str(self.version),
            "client": self._client_name,
            "padding-md5": self.padding.md5,
        }
        self._held = encode_frame(Command.SETTINGS, 0, format_kv(settings))

    def open_stream(self, initial: bytes, now: float = 0.0) -> int:
        """Client: open a stream whose first bytes are ``initial`` (the destination).

        Returns the new stream id. Nothing waits for the server (0-RTT). On a reused
        session of a v2 server this arms the SYNACK watchdog (see :meth:`handle_timer`).
        """
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only clients open streams")
        self._check_open()
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        self._streams.add(stream_id)
        if stream_id >= 2 and self.peer_version >= 2 and self.synack_timeout > 0:
            # As in anytls-go: the newest stream re-arms the watchdog, any SYNACK disarms it.
            self._synack_deadline = now + self.synack_timeout
        syn = encode_frame(Command.SYN, stream_id)
        if self._held is not None:
            first = self._held + syn
            self._held = None
            self._packets.append(
                first + encode_data_frames(stream_id, initial) if initial else first
            )
        else:
            self._packets.append(syn)
            if initial:
                self._packets.append(encode_data_frames(stream_id, initial))
        return stream_id

    def send_heartbeat(self) -> None:
        """Queue a heartbeat request (only meaningful when ``peer_version >= 2``)."""
        self._check_open()
        self._queue(encode_frame(Command.HEART_REQUEST, 0))

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has something to do (None = nothing pending)."""
        deadlines = []
        if self._synack_deadline is not None:
            deadlines.append(self._synack_deadline)
        if self.heartbeat_interval > 0 and self.peer_version >= 2:
            if self._heartbeat_deadline is not None:
                deadlines.append(self._heartbeat_deadline)
            else:
                deadlines.append(self._last_activity + self.heartbeat_interval)
        if self.idle_timeout > 0 and not self._streams:
            deadlines.append(self._last_activity + self.idle_timeout)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Event]:
        """Act on expired deadlines: watchdog, heartbeats, idle timeout."""
        if self.closed:
            return []
        reason = None
        if self._synack_deadline is not None and now >= self._synack_deadline:
            reason = (
                f"no SYNACK within {self.synack_timeout:g} s on a reused session: "
                "the tunnel looks dead"
            )
        elif self.heartbeat_interval > 0 and self.peer_version >= 2:
            if self._heartbeat_deadline is not None:
                if now >= self._heartbeat_deadline:
                    reason = f"no heartbeat answer within {self.heartbeat_timeout:g} s"
            elif now >= self._last_activity + self.heartbeat_interval:
                self.send_heartbeat()
                self._heartbeat_deadline = now + self.heartbeat_timeout
        if (
            reason is None
            and self.idle_timeout > 0
            and not self._streams
            and now >= self._last_activity + self.idle_timeout
        ):
            reason = f"idle for {self.idle_timeout:g} s"
        if reason is None:
            return []
        self.close()
        return [SessionTerminated(reason)]

    # ------------------------------------------------------------------ server side
    def send_synack(self, stream_id: int, error: str | None = None) -> None:
        """Server: report the outcome of opening ``stream_id`` to a v2 client.

        Does nothing for v1 clients or closed streams.
        """
        if self.peer_version < 2 or stream_id not in self._streams or self.closed:
            return
        text = error.encode("utf-8", "replace")[:MAX_FRAME_DATA] if error else b""
        if error and not text:
            text = b"error"
        self._queue(encode_frame(Command.SYNACK, stream_id, text))

    def send_alert(self, message: str) -> None:
        """Queue an Alert and end the session (the caller closes after flushing)."""
        if self.closed:
            return
        self._queue(encode_frame(Command.ALERT, 0, message.encode()[:MAX_FRAME_DATA]))
        self.close()

    # ------------------------------------------------------------------ both sides
    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data`` for ``stream_id`` as PSH frames (split at 65535 bytes)."""
        if stream_id not in self._streams:
            raise StreamClosedError(f"stream {stream_id} is not open")
        if len(data):
            self._packets.append(encode_data_frames(stream_id, data))

    def end_stream(self, stream_id: int) -> None:
        """Close ``stream_id`` and queue its FIN; a no-op for streams already ended."""
        if stream_id in self._streams:
            self._streams.discard(stream_id)
            if not self.closed:
                self._queue(encode_frame(Command.FIN, stream_id))

    def close(self) -> None:
        """Mark the session over; every stream ends without FIN (as the spec says)."""
        self.state = SessionState.CLOSED
        self._streams.clear()

    def data_to_send(self) -> list[bytes]:
        """Return and forget queued output, one item per transport write."""
        out = self._ready
        self._ready = []
        packets = self._packets
        if not packets:
            return out
        self._packets = []
        if not self._shaping:
            _extend_coalesced(out, packets)
            return out
        padding = self.padding
        for index, packet in enumerate(packets):
            self._packet_counter += 1
            if self._packet_counter >= padding.stop:
                self._shaping = False
                _extend_coalesced(out, packets[index:])
                break
            out.extend(shape_packet(packet, padding.sizes(self._packet_counter)))
        return out

    def _queue(self, data: bytes) -> None:
        self._packets.append(data)

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosedError("the session is closed")

    def unparsed(self, size: int = 64) -> bytes:
        """Up to ``size`` received bytes not yet parsed into a frame (for diagnostics)."""
        return bytes(self._rbuf[:size])

    def refuse_preface(self) -> None:
        """Server: reject the coming auth preface as a wrong password, even a right one."""
        if self._preface is not None:
            self._preface.refuse_all()

    # ------------------------------------------------------------------ receiving
    def receive_data(
        self, data: bytes | bytearray | memoryview, now: float | None = None
    ) -> list[Event]:
        """Feed bytes from the peer; return the events they complete.

        ``now`` (any monotonic clock) records activity for heartbeats and idle timeouts.
        Raises only :class:`~anytls.errors.RemoteProtocolError` (and its subclass
        :class:`~anytls.errors.AuthenticationError`).
        """
        events: list[Event] = []
        if self.state is SessionState.CLOSED or not len(data):
            return events
        if now is not None:
            self._last_activity = now
            self._heartbeat_deadline = None
        if self.state is SessionState.AUTHENTICATING:
            assert self._preface is not None
            try:
                user = self._preface.feed(data)
            except AuthenticationError:
                self._preface = None  # drop the rejected bytes; the session is over
                self.close()
                raise
            if user is None:
                return events
            self.user = user
            self.state = SessionState.OPEN
            events.append(Authenticated(user))
            data = self._preface.leftover
            self._preface = None
            if not data:
                return events
        rbuf = self._rbuf
        self._events = events
        decode = self._decoder.decode
        if rbuf:
            rbuf += data
            with memoryview(rbuf) as view:
                consumed = decode(view, self._on_data, self._on_frame)
            del rbuf[:consumed]
        else:
            with memoryview(data) as view:
                # The usual small read (a request, a datagram): one whole PSH frame.
                stream_id = self._decoder.whole_data_frame(view)
                if stream_id:
                    self._on_data(stream_id, view[HEADER_SIZE:])
                else:
                    consumed = decode(view, self._on_data, self._on_frame)
                    if consumed < len(view) and not self.closed:
                        rbuf += view[consumed:]
        if not self._version_reported and self._decoder.frames:
            self._version_reported = True
            events.append(PeerVersionKnown(self.peer_version or 1))
        return events

    def _on_data(self, stream_id: int, chunk: memoryview) -> None:
        if stream_id in self._streams:
            self._events.append(StreamDataReceived(stream_id, bytes(chunk)))

    def _on_frame(self, command: int, stream_id: int, payload: memoryview) -> bool:
        handler = self._handlers.get(command)
        if handler is not None:  # WASTE, unknown commands, frames not for this role: skipped
            handler(self, stream_id, payload, self._events)
        return self.state is SessionState.CLOSED

    # ------------------------------------------------------------------ frame handlers
    # One method per command; _HANDLERS below says which role accepts which.

    def _on_syn(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if not self._settings_received:
            self.send_alert(ALERT_NO_SETTINGS)
            events.append(SessionTerminated(ALERT_NO_SETTINGS))
            return
        if stream_id in self._streams or stream_id == 0:
            return
        self._streams.add(stream_id)
        if self.max_streams and len(self._streams) > self.max_streams:
            self.send_synack(stream_id, f"too many streams (limit {self.max_streams})")
            self.end_stream(stream_id)
            return
        events.append(StreamOpened(stream_id))

    def _on_fin(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if stream_id in self._streams:
            self._streams.discard(stream_id)
            events.append(StreamEnded(stream_id))

    def _on_synack(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        error = peer_text(payload) if len(payload) else None
        self._synack_deadline = None
        events.append(StreamAcknowledged(stream_id, error))
        if error is not None:
            self.end_stream(stream_id)

    def _on_settings(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if not len(payload):
            return
        settings = parse_kv(payload)
        self._settings_received = True
        if settings.get("padding-md5") != self.padding.md5:
            self._queue(encode_frame(Command.UPDATE_PADDING_SCHEME, 0, self.padding.raw))
        version = parse_version(settings.get("v"))
        # A v1 peer (or our own v1 test mode) gets no ServerSettings and no SYNACK.
        self.peer_version = max(1, version if self.version >= 2 else 1)
        if self.peer_version >= 2:
            self._queue(
                encode_frame(Command.SERVER_SETTINGS, 0, format_kv({"v": str(self.version)}))
            )
        events.append(SettingsReceived(settings, self.peer_version))

    def _on_server_settings(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if not len(payload):
            return
        settings = parse_kv(payload)
        if self.version >= 2:
            self.peer_version = parse_version(settings.get("v"))
        events.append(ServerSettingsReceived(settings, self.peer_version))

    def _on_update_padding(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if not len(payload):
            return
        try:
            scheme = PaddingScheme.parse(payload)
        except PaddingSchemeError as exc:
            events.append(PaddingSchemeRejected(str(exc)))
            return
        self.padding = scheme
        events.append(PaddingSchemeUpdated(scheme))

    def _on_heart_request(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if self.version < 2:
            return
        self._queue(encode_frame(Command.HEART_RESPONSE, stream_id))
        events.append(HeartbeatRequested(stream_id))

    def _on_heart_response(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if self.version >= 2:
            events.append(HeartbeatAcknowledged(stream_id))

    def _on_alert(self, stream_id: int, payload: memoryview, events: list[Event]) -> None:
        if not len(payload):
            return
        message = peer_text(payload)
        events.append(AlertReceived(message))
        events.append(SessionTerminated(f"alert from peer: {message}"))
        self.close()


_Handler = Callable[[Session, int, memoryview, list[Event]], None]
_BOTH = frozenset(Role)

#: Frame dispatch as data: command → (handler, roles that accept it). A frame whose
#: command a role does not accept is skipped like WASTE, as anytls-go does. PSH never
#: gets here: :class:`~anytls.core.frame.FrameDecoder` streams it to ``_on_data``.
_HANDLERS: dict[Command, tuple[_Handler, frozenset[Role]]] = {
    Command.SYN: (Session._on_syn, frozenset({Role.SERVER})),
    Command.FIN: (Session._on_fin, _BOTH),
    Command.SETTINGS: (Session._on_settings, frozenset({Role.SERVER})),
    Command.ALERT: (Session._on_alert, _BOTH),
    Command.UPDATE_PADDING_SCHEME: (Session._on_update_padding, frozenset({Role.CLIENT})),
    Command.SYNACK: (Session._on_synack, frozenset({Role.CLIENT})),
    Command.HEART_REQUEST: (Session._on_heart_request, _BOTH),
    Command.HEART_RESPONSE: (Session._on_heart_response, _BOTH),
    Command.SERVER_SETTINGS: (Session._on_server_settings, frozenset({Role.CLIENT})),
}

#: Per role, the commands it accepts and their handlers (looked up once per frame).
HANDLERS_BY_ROLE: dict[Role, dict[int, _Handler]] = {
    role: {int(cmd): handler for cmd, (handler, roles) in _HANDLERS.items() if role in roles}
    for role in Role
}
