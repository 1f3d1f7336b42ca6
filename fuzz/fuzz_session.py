"""Atheris harness: Session.receive_data in all three roles, fed whole and split.

Roles (first control value): 0 = server checking the preface against USERS, 1 = server
whose preface was already checked (``users=None``, max_streams=3), 2 = client after
``initiate()`` + ``open_stream()``. The payload is fed once whole and once cut at split
points taken from the input. Checked after every call:

* ``receive_data`` raises nothing but RemoteProtocolError (AuthenticationError included);
* the receive buffer stays within one maximal frame (7 + 65535 bytes) and the preface
  reader within 34 + 65535;
* ``data_to_send()`` works and returns a list of bytes.

Differential check: both feeds raise the same error type or none; otherwise they give the
same events (PSH data merged per stream) and, for the servers, the same output bytes.

Run: python fuzz/fuzz_session.py fuzz/corpus/session -max_total_time=600
"""

from __future__ import annotations

import sys

import atheris
from _common import check_bytes_list, consume_splits, split

with atheris.instrument_imports(include=["anytls"]):
    from anytls.core.events import StreamDataReceived
    from anytls.core.session import Session, SessionConfig
    from anytls.errors import RemoteProtocolError

USERS = {"alice": "alice-password", "bob": "bob-password"}
CLIENT_PASSWORD = "alice-password"
MAX_RBUF = 7 + 65535
MAX_PREFACE_BUF = 34 + 65535
#: The client's first stream: 03 0b "example.com" 01bb.
FIRST_DESTINATION = b"\x03\x0bexample.com\x01\xbb"
ROLES = 3


def make_session(role: int) -> Session:
    if role == 0:
        return Session.server(USERS)
    if role == 1:
        return Session.server(None, SessionConfig(max_streams=3))
    session = Session.client(CLIENT_PASSWORD)
    session.initiate()
    session.open_stream(FIRST_DESTINATION)
    check_bytes_list(session.data_to_send())
    return session


def check_bounds(session: Session) -> None:
    assert len(session._rbuf) <= MAX_RBUF, len(session._rbuf)
    preface = session._preface
    if preface is not None:
        assert len(preface._buf) <= MAX_PREFACE_BUF, len(preface._buf)


def merge(events: list) -> list:
    """Join consecutive StreamDataReceived of one stream (chunking may split them)."""
    out: list = []
    for event in events:
        last = out[-1] if out else None
        if (
            isinstance(event, StreamDataReceived)
            and isinstance(last, StreamDataReceived)
            and last.stream_id == event.stream_id
        ):
            out[-1] = StreamDataReceived(last.stream_id, last.data + event.data)
        else:
            out.append(event)
    return out


def run(role: int, chunks: list) -> tuple[list, bytes, type | None]:
    session = make_session(role)
    events: list = []
    sent = bytearray()
    error: type | None = None
    for chunk in chunks:
        try:
            events += session.receive_data(chunk)
        except RemoteProtocolError as exc:
            # The session is dead; callers drop it (the preface reader still holds the
            # rejected bytes, which is fine: nothing more is fed to it).
            error = type(exc)
            break
        check_bounds(session)
        out = session.data_to_send()
        check_bytes_list(out)
        for item in out:
            sent += item
    return merge(events), bytes(sent), error


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    role = fdp.ConsumeIntInRange(0, ROLES - 1)
    points, kind = consume_splits(fdp)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())

    whole_events, whole_sent, whole_error = run(role, [payload])
    split_events, split_sent, split_error = run(role, split(payload, points, kind))

    assert whole_error is split_error, (whole_error, split_error)
    if whole_error is None:
        assert whole_events == split_events, (whole_events, split_events)
        if role != 2:  # a client's output is padded at random
            assert whole_sent == split_sent, (whole_sent, split_sent)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
