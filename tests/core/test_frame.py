from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anytls.core.constants import HEADER, Command
from anytls.core.frame import FrameDecoder, encode_data_frames, encode_frame, waste_frame
from anytls.errors import LocalProtocolError


def test_header_layout() -> None:
    assert encode_frame(Command.SYN, 1) == bytes.fromhex("01000000010000")
    assert encode_frame(Command.SERVER_SETTINGS, 0, b"v=2") == bytes.fromhex("0a000000000003763d32")
    assert waste_frame(3) == bytes.fromhex("00000000000003000000")


def test_oversized_frame_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(Command.PSH, 1, bytes(65536))


@given(st.integers(0, 200_000))
def test_data_frames_split_at_65535(n: int) -> None:
    data = bytes(i % 251 for i in range(n))
    encoded = encode_data_frames(7, data)
    pos = 0
    out = bytearray()
    while pos < len(encoded):
        cmd, sid, length = HEADER.unpack_from(encoded, pos)
        assert (cmd, sid) == (Command.PSH, 7)
        assert length <= 65535
        assert length > 0 or n == 0
        out += encoded[pos + 7 : pos + 7 + length]
        pos += 7 + length
    assert bytes(out) == data


def test_whole_data_frame_takes_exactly_one_psh_frame() -> None:
    decoder = FrameDecoder()
    frame = encode_data_frames(5, b"datagram")
    assert decoder.whole_data_frame(memoryview(frame)) == 5
    assert decoder.frames == 1
    for other in (
        frame[:-1],  # cut short
        frame + b"x",  # more than one frame
        frame + encode_data_frames(5, b"next"),
        encode_frame(Command.FIN, 5),  # not PSH
        encode_data_frames(0, b"no stream"),  # stream 0 is never a stream
        encode_frame(Command.PSH, 5),  # an empty PSH: decode() skips it
    ):
        assert FrameDecoder().whole_data_frame(memoryview(other)) == 0


def test_whole_data_frame_never_cuts_into_a_frame_in_progress() -> None:
    decoder = FrameDecoder()
    # The header of a 10-byte PSH frame and 3 of its bytes: 7 more are still to come.
    consumed = decoder.decode(
        memoryview(encode_data_frames(1, bytes(10))[:10]), lambda *a: None, lambda *a: False
    )
    assert consumed == 10 and decoder.psh_left == 7
    # 7 bytes that happen to look like a whole frame are that frame's data.
    looks_whole = encode_frame(Command.PSH, 2, b"")[:7]
    assert decoder.whole_data_frame(memoryview(looks_whole + b"abc")) == 0
