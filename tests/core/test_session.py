from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.core.constants import HEADER, Command
from anytls.core.events import (
    AlertReceived,
    Authenticated,
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
from anytls.core.frame import encode_frame
from anytls.core.padding import PaddingScheme
from anytls.core.session import ALERT_NO_SETTINGS, PEER_TEXT_LIMIT, Session, SessionConfig
from anytls.errors import AuthenticationError, RemoteProtocolError

DEST = bytes.fromhex("030b6578616d706c652e636f6d01bb")  # example.com:443


def pump(src: Session, dst: Session) -> list:
    events = []
    for chunk in src.data_to_send():
        events += dst.receive_data(chunk)
    return events


def merge_data(events: list) -> list:
    """Merge consecutive StreamDataReceived of the same stream (PSH may arrive in pieces)."""
    out: list = []
    for e in events:
        if (
            isinstance(e, StreamDataReceived)
            and out
            and isinstance(out[-1], StreamDataReceived)
            and out[-1].stream_id == e.stream_id
        ):
            out[-1] = StreamDataReceived(e.stream_id, out[-1].data + e.data)
        else:
            out.append(e)
    return out


def new_pair(server_scheme: PaddingScheme | None = None) -> tuple[Session, Session]:
    client = Session.client("pw")
    server = Session.server({"alice": "pw"}, padding=server_scheme)
    client.initiate()
    return client, server


def test_first_packet_holds_settings_syn_and_address() -> None:
    client, server = new_pair()
    sid = client.open_stream(DEST)
    records = client.data_to_send()
    assert len(records[0]) == 64  # preface: 32 + 2 + 30 padding
    stream = b"".join(records[1:])
    cmd, _, length = HEADER.unpack_from(stream, 0)
    assert cmd == Command.SETTINGS
    settings = stream[7 : 7 + length].decode().split("\n")
    assert "v=2" in settings and "padding-md5=75cff2ad89aadf5e257059ee571ebe11" in settings
    assert any(s.startswith("client=anytls-py") for s in settings)
    # packet 1 of the default scheme is one record of 100..399 bytes; when the size drawn
    # is below what settings, SYN and address take (101 bytes), the rest follows in a
    # record of its own, as anytls-go writes it (2 runs in 1000; one failed CI)
    assert 100 <= len(records[1]) < 400
    assert len(records) == 2 or (len(records) == 3 and len(records[1]) < 110)
    events = merge_data(server.receive_data(b"".join(records)))
    assert events == [
        Authenticated("alice"),
        SettingsReceived(events[1].settings, 2),
        StreamOpened(sid),
        StreamDataReceived(sid, DEST),
    ]
    # server answers with ServerSettings v=2 only (md5 matches)
    back = server.data_to_send()
    assert back == [bytes.fromhex("0a000000000003763d32")]
    assert client.receive_data(back[0]) == [
        ServerSettingsReceived({"v": "2"}, 2),
        PeerVersionKnown(2),
    ]
    assert client.peer_version == 2


def test_padding_update_pushed_and_adopted() -> None:
    custom = PaddingScheme.parse(b"stop=3\n0=10-10\n1=200-300\n2=300-400")
    client, server = new_pair(custom)
    client.open_stream(DEST)
    pump(client, server)
    events = pump(server, client)
    assert isinstance(events[0], PaddingSchemeUpdated)
    assert events[0].scheme.md5 == custom.md5
    assert isinstance(events[1], ServerSettingsReceived)
    assert client.padding.md5 == custom.md5


def test_bad_padding_update_is_ignored() -> None:
    client, _ = new_pair()
    events = client.receive_data(encode_frame(Command.UPDATE_PADDING_SCHEME, 0, b"junk"))
    assert isinstance(events[0], PaddingSchemeRejected)
    assert client.padding.md5 == PaddingScheme.default().md5


def test_syn_before_settings_alerts_and_closes() -> None:
    server = Session.server(None)
    events = server.receive_data(encode_frame(Command.SYN, 1))
    assert events == [SessionTerminated(ALERT_NO_SETTINGS)]
    assert server.closed
    (alert,) = server.data_to_send()
    client = Session.client("pw")
    assert client.receive_data(alert)[0] == AlertReceived(ALERT_NO_SETTINGS)
    assert client.closed


def test_v1_client_gets_no_server_settings_nor_synack() -> None:
    server = Session.server(None)
    server.receive_data(
        encode_frame(Command.SETTINGS, 0, b"v=1\npadding-md5=75cff2ad89aadf5e257059ee571ebe11")
    )
    server.receive_data(encode_frame(Command.SYN, 1))
    assert server.peer_version == 1
    server.send_synack(1)
    assert server.data_to_send() == []


def test_synack_error_closes_client_stream() -> None:
    client, server = new_pair()
    sid = client.open_stream(DEST)
    pump(client, server)
    pump(server, client)
    server.send_synack(sid, "dial tcp: connection refused")
    server.end_stream(sid)
    events = pump(server, client)
    assert events == [StreamAcknowledged(sid, "dial tcp: connection refused")]
    assert not client.is_stream_open(sid)


def test_a_peers_text_is_escaped_and_cut_before_it_reaches_a_log() -> None:
    client, server = new_pair()
    sid = client.open_stream(DEST)
    pump(client, server)
    pump(server, client)
    forged = "refused\n2026-12-02 WARNING anytls.server: FORGED\x1b[2J" + "x" * 65000
    server.send_synack(sid, forged)
    (event,) = pump(server, client)
    assert isinstance(event, StreamAcknowledged) and event.error is not None
    assert event.error.startswith("refused\\n2026-12-02 WARNING anytls.server: FORGED\\x1b[2J")
    assert "\n" not in event.error and "\x1b" not in event.error
    assert len(event.error) == PEER_TEXT_LIMIT + 1 and event.error.endswith("…")
    server.send_alert("bye\r\nforged line")
    events = pump(server, client)
    assert AlertReceived("bye\\r\\nforged line") in events


def test_fin_not_echoed_and_data_before_fin_delivered() -> None:
    client, server = new_pair()
    sid = client.open_stream(DEST)
    pump(client, server)
    server.send_data(sid, b"hello")
    server.end_stream(sid)
    events = pump(server, client)
    assert events[0] == ServerSettingsReceived({"v": "2"}, 2)
    assert events[1:] == [StreamDataReceived(sid, b"hello"), StreamEnded(sid), PeerVersionKnown(2)]
    assert client.data_to_send() == []
    # data for a closed stream is dropped silently
    assert client.receive_data(encode_frame(Command.PSH, sid, b"late")) == []


def test_heartbeat_round_trip() -> None:
    client, server = new_pair()
    client.open_stream(DEST)
    pump(client, server)
    pump(server, client)
    client.send_heartbeat()
    assert any(isinstance(e, HeartbeatRequested) for e in pump(client, server))
    assert pump(server, client) == [HeartbeatAcknowledged(0)]


def test_unknown_command_and_waste_skipped() -> None:
    client, _ = new_pair()
    data = encode_frame(42, 0, b"xyz") + encode_frame(Command.WASTE, 0, b"\0" * 10)
    data += encode_frame(Command.SERVER_SETTINGS, 0, b"v=2")
    assert client.receive_data(data) == [
        ServerSettingsReceived({"v": "2"}, 2),
        PeerVersionKnown(2),
    ]


def test_wrong_password_raises_remote_error() -> None:
    client = Session.client("bad")
    client.initiate()
    server = Session.server({"a": "good"})
    with pytest.raises(AuthenticationError):
        server.receive_data(client.data_to_send()[0])


def test_padding_stops_after_stop_packets() -> None:
    client, _server = new_pair()
    sid = client.open_stream(DEST)
    client.data_to_send()
    for _ in range(6):  # packets 2..7 are shaped
        client.send_data(sid, b"x")
        assert sum(len(r) for r in client.data_to_send()) >= 400
    client.send_data(sid, b"y")
    assert client.data_to_send() == [encode_frame(Command.PSH, sid, b"y")]


def test_small_frames_coalesce_into_one_write_once_padding_is_over() -> None:
    client, server = new_pair()
    sid = client.open_stream(DEST)
    pump(client, server)
    client.send_data(sid, b"x")
    client.send_data(sid, b"z")
    assert len(client.data_to_send()) >= 2  # packets 2 and 3 are shaped one by one
    for _ in range(4):  # packets 4..7
        client.send_data(sid, b"x")
        client.data_to_send()
    sid2 = client.open_stream(DEST)
    client.send_data(sid2, b"hello")
    client.end_stream(sid)
    (chunk,) = client.data_to_send()  # SYN + destination + data + FIN: one TLS record
    assert chunk == b"".join(
        [
            encode_frame(Command.SYN, sid2),
            encode_frame(Command.PSH, sid2, DEST),
            encode_frame(Command.PSH, sid2, b"hello"),
            encode_frame(Command.FIN, sid),
        ]
    )
    big = bytes(40000)
    client.send_data(sid2, big)
    client.send_data(sid2, b"tail")
    assert len(client.data_to_send()) == 2  # past one record's worth: no copying join


def _client_stream_bytes() -> tuple[bytes, list]:
    """A realistic client byte stream and the events the server must produce."""
    client, server = new_pair()
    sid = client.open_stream(DEST)
    client.send_data(sid, bytes(range(256)) * 300)
    sid2 = client.open_stream(DEST)
    client.send_data(sid2, b"second")
    client.end_stream(sid)
    client.send_heartbeat()
    data = b"".join(client.data_to_send())
    return data, merge_data(server.receive_data(data))


STREAM, EXPECTED = _client_stream_bytes()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_every_split_gives_same_events(cuts: list[int]) -> None:
    server = Session.server({"alice": "pw"})
    points = [*sorted(set(cuts)), len(STREAM)]
    events: list = []
    prev = 0
    for p in points:
        events += server.receive_data(STREAM[prev:p])
        prev = p
    assert merge_data(events) == EXPECTED


def _frame_boundaries(stream: bytes) -> list[int]:
    """Offsets where the preface and each frame of ``stream`` end."""
    pos = 32 + 2 + int.from_bytes(stream[32:34], "big")  # sha256, padding length, padding
    points = [pos]
    while pos < len(stream):
        pos += 7 + HEADER.unpack_from(stream, pos)[2]
        points.append(pos)
    return points


def test_frame_at_a_time_gives_same_events() -> None:
    """Every frame in a read of its own (a PSH frame alone takes the short way)."""
    server = Session.server({"alice": "pw"})
    events: list = []
    prev = 0
    for point in _frame_boundaries(STREAM):
        events += server.receive_data(STREAM[prev:point])
        prev = point
    assert merge_data(events) == EXPECTED
    # Data for a stream that has ended, alone in a read, is dropped as in any other read.
    stream_id = next(e.stream_id for e in EXPECTED if isinstance(e, StreamEnded))
    assert server.receive_data(encode_frame(Command.PSH, stream_id, b"late")) == []


def test_byte_at_a_time() -> None:
    server = Session.server({"alice": "pw"})
    events: list = []
    for i in range(len(STREAM)):
        events += server.receive_data(STREAM[i : i + 1])
    assert merge_data(events) == EXPECTED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from(["client", "server", "server-auth"]))
def test_garbage_raises_only_remote_errors(data: bytes, role: str) -> None:
    if role == "client":
        session = Session.client("pw")
        session.initiate()
    elif role == "server":
        session = Session.server(None)
    else:
        session = Session.server({"a": "pw"})
    try:
        session.receive_data(data)
        session.receive_data(data)
    except RemoteProtocolError:
        return
    session.data_to_send()
    assert len(session._rbuf) <= 7 + 65535


def test_rejected_preface_is_not_kept() -> None:
    server = Session.server({"a": "b"})
    with pytest.raises(AuthenticationError):
        server.receive_data(bytes(70034))
    assert server.closed
    assert server.receive_data(bytes(1000)) == []


# Frames a peer may send only in the other direction (the role table in core/session.py):
# what a server must ignore coming from a client, and the reverse.
_SERVER_BOUND_ONLY = (Command.SYN, Command.SETTINGS)
_CLIENT_BOUND_ONLY = (Command.SYNACK, Command.SERVER_SETTINGS, Command.UPDATE_PADDING_SCHEME)


@st.composite
def unexpected_frames(draw: st.DrawFn, commands: tuple[Command, ...]) -> bytes:
    """Well-formed frames, each one its receiver's role must not act on."""
    frames = draw(
        st.lists(
            st.tuples(
                st.sampled_from(commands),
                st.integers(0, 2**32 - 1),
                st.one_of(
                    st.just(b""),
                    st.just(b"v=2\nclient=x\npadding-md5=0"),  # plausible Settings text
                    st.just(b"stop=2\n0=10-10"),  # a valid padding scheme
                    st.binary(max_size=300),
                ),
            ),
            min_size=1,
            max_size=8,
        )
    )
    return b"".join(encode_frame(cmd, sid, data) for cmd, sid, data in frames)


def _established_pair() -> tuple[Session, Session, int]:
    client, server = new_pair()
    stream_id = client.open_stream(DEST)
    pump(client, server)
    server.send_synack(stream_id)
    pump(server, client)
    return client, server, stream_id


@given(unexpected_frames(_CLIENT_BOUND_ONLY))
def test_server_ignores_frames_only_a_client_may_receive(frames: bytes) -> None:
    client, server, stream_id = _established_pair()
    before = (server.padding.md5, server.peer_version, server.open_streams, server.state)
    assert server.receive_data(frames) == []
    assert server.data_to_send() == []
    assert (server.padding.md5, server.peer_version, server.open_streams, server.state) == before
    # and the session still works afterwards
    client.send_data(stream_id, b"still here")
    assert merge_data(pump(client, server)) == [StreamDataReceived(stream_id, b"still here")]


@given(unexpected_frames(_SERVER_BOUND_ONLY))
def test_client_ignores_frames_only_a_server_may_receive(frames: bytes) -> None:
    client, server, stream_id = _established_pair()
    before = (client.padding.md5, client.peer_version, client.open_streams, client.state)
    assert client.receive_data(frames) == []
    assert client.data_to_send() == []
    assert (client.padding.md5, client.peer_version, client.open_streams, client.state) == before
    server.send_data(stream_id, b"still here")
    assert merge_data(pump(server, client)) == [StreamDataReceived(stream_id, b"still here")]


@pytest.mark.parametrize("server_version", [1, 2])
def test_client_learns_the_server_version_once(server_version: int) -> None:
    client = Session.client("pw")
    server = Session.server({"alice": "pw"}, SessionConfig(version=server_version))
    client.initiate()
    stream_id = client.open_stream(DEST)
    pump(client, server)
    server.send_synack(stream_id)  # nothing for a v1 peer
    server.send_data(stream_id, b"hello")
    first = pump(server, client)
    assert [e for e in first if isinstance(e, PeerVersionKnown)] == [
        PeerVersionKnown(server_version)
    ]
    server.send_data(stream_id, b"again")
    assert not [e for e in pump(server, client) if isinstance(e, PeerVersionKnown)]
