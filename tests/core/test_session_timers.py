"""Watchdog, heartbeats and idle timeout, driven by an explicit clock (no sleeping)."""

from __future__ import annotations

from anytls.core.constants import Command
from anytls.core.events import HeartbeatRequested, SessionTerminated, StreamAcknowledged
from anytls.core.frame import encode_frame
from anytls.core.session import Session, SessionConfig

DEST = b"\x01\x7f\x00\x00\x01\x00\x50"


def pump(src: Session, dst: Session, now: float = 0.0) -> list:
    events = []
    for chunk in src.data_to_send():
        events += dst.receive_data(chunk, now)
    return events


def v2_pair(**client_kwargs: float) -> tuple[Session, Session]:
    client = Session.client("pw", SessionConfig(**client_kwargs))  # type: ignore[arg-type]
    server = Session.server({"a": "pw"})
    client.initiate()
    sid = client.open_stream(DEST, now=0.0)
    pump(client, server)
    pump(server, client)
    assert client.peer_version == 2
    server.send_synack(sid)
    pump(server, client)
    return client, server


def test_first_stream_is_never_watched() -> None:
    client = Session.client("pw")
    client.initiate()
    client.open_stream(DEST, now=0.0)
    assert client.next_deadline() is None
    assert client.handle_timer(100.0) == []


def test_watchdog_closes_reused_session_without_synack() -> None:
    client, _ = v2_pair()
    client.open_stream(DEST, now=10.0)
    assert client.next_deadline() == 13.0
    assert client.handle_timer(12.9) == []
    (event,) = client.handle_timer(13.0)
    assert isinstance(event, SessionTerminated) and "SYNACK" in event.reason
    assert client.closed


def test_any_synack_disarms_watchdog() -> None:
    client, server = v2_pair()
    sid = client.open_stream(DEST, now=10.0)
    pump(client, server)
    server.send_synack(sid, "refused")
    events = pump(server, client)
    assert events == [StreamAcknowledged(sid, "refused")]
    assert client.next_deadline() is None
    assert client.handle_timer(100.0) == []


def test_v1_server_never_arms_watchdog() -> None:
    client = Session.client("pw")
    server = Session.server({"a": "pw"}, SessionConfig(version=1))
    client.initiate()
    client.open_stream(DEST, now=0.0)
    pump(client, server)
    assert server.data_to_send() == []  # no ServerSettings from a v1 server
    client.open_stream(DEST, now=1.0)
    assert client.next_deadline() is None


def test_heartbeat_sent_after_silence_and_timeout_closes() -> None:
    client, server = v2_pair(heartbeat_interval=20.0, heartbeat_timeout=5.0)
    client.receive_data(encode_frame(Command.WASTE, 0, b"x"), now=100.0)
    assert client.next_deadline() == 120.0
    assert client.handle_timer(119.0) == []
    assert client.handle_timer(120.0) == []  # sends the request
    assert any(isinstance(e, HeartbeatRequested) for e in pump(client, server))
    assert client.next_deadline() == 125.0
    # the answer (any data) cancels the deadline
    pump(server, client, now=121.0)
    assert client.next_deadline() == 141.0
    client.handle_timer(141.0)
    client.data_to_send()  # request lost: no answer
    (event,) = client.handle_timer(146.0)
    assert isinstance(event, SessionTerminated) and "heartbeat" in event.reason


def test_heartbeats_off_for_v1_peer() -> None:
    client = Session.client("pw", SessionConfig(heartbeat_interval=1.0))
    client.initiate()
    client.open_stream(DEST)
    assert client.next_deadline() is None


def test_server_idle_timeout_only_without_streams() -> None:
    client = Session.client("pw")
    server = Session.server({"a": "pw"}, SessionConfig(idle_timeout=60.0))
    client.initiate()
    sid = client.open_stream(DEST)
    pump(client, server, now=0.0)
    assert server.next_deadline() is None  # a stream is open
    client.end_stream(sid)
    pump(client, server, now=10.0)
    assert server.next_deadline() == 70.0
    (event,) = server.handle_timer(70.0)
    assert isinstance(event, SessionTerminated) and "idle" in event.reason
