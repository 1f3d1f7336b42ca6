"""Events a :class:`~anytls.core.session.Session` returns from ``receive_data``.

Past-tense names, slotted dataclasses. Data payloads are ``bytes`` the caller may keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from .padding import PaddingScheme


class Event:
    """Base class of session events."""

    __slots__ = ()


@dataclass(slots=True)
class Authenticated(Event):
    """Server: the preface named a known user."""

    user: str


@dataclass(slots=True)
class SettingsReceived(Event):
    """Server: the client's Settings arrived (``peer_version`` is now known)."""

    settings: dict[str, str]
    peer_version: int


@dataclass(slots=True)
class ServerSettingsReceived(Event):
    """Client: the server's ServerSettings arrived; it speaks ``peer_version``."""

    settings: dict[str, str]
    peer_version: int


@dataclass(slots=True)
class PeerVersionKnown(Event):
    """Client: the server's protocol version is now known, once per session.

    A v2 server's first flight carries ServerSettings; a server whose first frames came
    without one speaks v1 (it sends no ServerSettings, SYNACK nor heartbeats).
    """

    peer_version: int


@dataclass(slots=True)
class StreamOpened(Event):
    """Server: the client opened stream ``stream_id`` (SYN)."""

    stream_id: int


@dataclass(slots=True)
class StreamDataReceived(Event):
    """Bytes arrived for ``stream_id`` (PSH)."""

    stream_id: int
    data: bytes


@dataclass(slots=True)
class StreamEnded(Event):
    """The peer closed ``stream_id`` (FIN); both directions are over."""

    stream_id: int


@dataclass(slots=True)
class StreamAcknowledged(Event):
    """Client: the server reported the outcome of opening ``stream_id`` (SYNACK).

    ``error`` is ``None`` on success, else the server's error text.
    """

    stream_id: int
    error: str | None


@dataclass(slots=True)
class PaddingSchemeUpdated(Event):
    """Client: the server pushed a padding scheme; new sessions must use it."""

    scheme: PaddingScheme


@dataclass(slots=True)
class PaddingSchemeRejected(Event):
    """Client: the server pushed a padding scheme that does not parse; it was ignored."""

    reason: str


@dataclass(slots=True)
class HeartbeatRequested(Event):
    """The peer asked for a heartbeat; the response is already queued."""

    stream_id: int


@dataclass(slots=True)
class HeartbeatAcknowledged(Event):
    """The peer answered a heartbeat."""

    stream_id: int


@dataclass(slots=True)
class AlertReceived(Event):
    """Client: the server sent an Alert; the session is over."""

    message: str


@dataclass(slots=True)
class SessionTerminated(Event):
    """The session must end: flush what is queued, then close the connection."""

    reason: str
