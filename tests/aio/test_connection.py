"""SessionConnection: when stream writes reach the TLS transport."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from anytls.aio.connection import SessionConnection
from anytls.core.events import StreamDataReceived
from anytls.core.session import Session

DEST = b"\x01\x7f\x00\x00\x01\x00\x50"  # 127.0.0.1:80, as a SYN's address


class RecordingTransport(asyncio.Transport):
    """Keeps each write (or writelines) call as one item."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.calls.append(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.calls.append(b"".join(list_of_data))

    def is_closing(self) -> bool:
        return False


def test_first_write_of_an_iteration_goes_out_at_once_the_rest_coalesce() -> None:
    async def main() -> None:
        core = Session.client("pw")
        core.initiate()
        conn = SessionConnection(core)
        transport = RecordingTransport()
        conn.connection_made(transport)
        first, second = (conn.add_stream(core.open_stream(DEST)) for _ in "ab")
        conn.flush()  # preface, settings and the two SYNs
        await asyncio.sleep(0)
        sent = len(transport.calls)

        first.write(b"request")  # nothing queued: out before the loop reads again
        assert len(transport.calls) == sent + 1
        first.write(b"more")  # the same iteration: held, then written together
        second.write(b"other")
        assert len(transport.calls) == sent + 1
        await asyncio.sleep(0)
        assert len(transport.calls) == sent + 2
        second.write(b"next")  # a new iteration: at once again
        assert len(transport.calls) == sent + 3

        server = Session.server({"u": "pw"})
        received = server.receive_data(b"".join(transport.calls))
        per_stream: dict[int, bytes] = {}
        for event in received:
            if isinstance(event, StreamDataReceived):  # (the address comes first)
                per_stream[event.stream_id] = per_stream.get(event.stream_id, b"") + event.data
        assert per_stream == {
            first.stream_id: DEST + b"requestmore",
            second.stream_id: DEST + b"othernext",
        }

    asyncio.run(main())


class FlowRecorder(asyncio.Protocol):
    """Records pause_writing / resume_writing calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


def test_a_protocol_attached_to_a_congested_session_is_paused_at_once() -> None:
    """A stream written to (and so flushed) before its protocol is attached, on a session
    whose TLS transport is congested by then, still stops its producer: the protocol hears
    ``pause_writing`` when attached, once, and ``resume_writing`` when the session drains."""

    async def main() -> None:
        core = Session.client("pw")
        core.initiate()
        conn = SessionConnection(core)
        conn.connection_made(RecordingTransport())
        early = conn.add_stream(core.open_stream(DEST))
        early.write(b"first bytes")  # flushed at once...
        conn.pause_writing()  # ... and the transport says it is full
        attached = FlowRecorder()
        early.set_protocol(attached)
        assert attached.calls == ["pause"]
        conn.pause_writing()  # told once per congestion, not twice
        await asyncio.sleep(0)
        assert attached.calls == ["pause"]
        conn.resume_writing()
        assert attached.calls == ["pause", "resume"]
        later = conn.add_stream(core.open_stream(DEST))
        fresh = FlowRecorder()
        later.set_protocol(fresh)  # a drained session: nothing to say
        await asyncio.sleep(0)
        assert fresh.calls == []

    asyncio.run(main())
