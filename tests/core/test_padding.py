from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anytls.core.constants import HEADER
from anytls.core.padding import CHECK, DEFAULT_SCHEME_TEXT, PaddingScheme, shape_packet
from anytls.errors import PaddingSchemeError


def test_default_scheme_bytes_and_md5() -> None:
    scheme = PaddingScheme.default()
    assert len(DEFAULT_SCHEME_TEXT) == 137
    assert scheme.md5 == "75cff2ad89aadf5e257059ee571ebe11"
    assert scheme.stop == 8
    assert scheme.preface_padding_length() == 30
    assert scheme.lines[3] == ((9, 9), (500, 1000))
    assert scheme.lines[2][1] == (CHECK, CHECK)


def test_trailing_newline_changes_md5() -> None:
    scheme = PaddingScheme.parse(DEFAULT_SCHEME_TEXT + b"\n")
    assert scheme.md5 == hashlib.md5(DEFAULT_SCHEME_TEXT + b"\n").hexdigest()
    assert scheme.md5 != PaddingScheme.default().md5


@pytest.mark.parametrize("raw", [b"", b"nothing", b"stop=x\n0=1-2", b"0=30-30", b"stop=8\r\n0=1-2"])
def test_invalid_schemes_rejected(raw: bytes) -> None:
    with pytest.raises(PaddingSchemeError):
        PaddingScheme.parse(raw)


def test_ranges_swapped_and_bad_parts_skipped() -> None:
    scheme = PaddingScheme.parse(b"stop=2\n1=300-200,x,0-5,c,7-7")
    assert scheme.lines[1] == ((200, 300), (CHECK, CHECK), (7, 7))


@given(st.integers(1, 5000), st.integers(1, 5000))
def test_sizes_in_half_open_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    scheme = PaddingScheme.parse(f"stop=2\n1={a}-{b}".encode())
    (size,) = scheme.sizes(1)
    assert size == lo if lo == hi else lo <= size < hi


def _parse_records(records: list[bytes]) -> bytes:
    """Reassemble the frame stream and drop waste frames; return the non-waste bytes."""
    stream = b"".join(records)
    out = bytearray()
    pos = 0
    while pos < len(stream):
        cmd, _, length = HEADER.unpack_from(stream, pos)
        frame = stream[pos : pos + 7 + length]
        if cmd != 0:
            out += frame
        pos += 7 + length
    return bytes(out)


def _frames(n: int) -> bytes:
    return HEADER.pack(2, 1, n) + bytes(range(256)) * (n // 256) + bytes(range(n % 256))


def test_shape_exact_cut_and_pad() -> None:
    data = _frames(100)  # 107 bytes
    records = shape_packet(data, [50, 200])
    assert [len(r) for r in records] == [50, 200]
    assert _parse_records(records) == data


def test_shape_check_mark_stops_when_done() -> None:
    data = _frames(10)
    records = shape_packet(data, [100, CHECK, 500, CHECK, 600])
    assert [len(r) for r in records] == [100]


def test_shape_pure_waste_when_nothing_left() -> None:
    records = shape_packet(_frames(10), [17, 40])
    assert [len(r) for r in records] == [17, 47]  # exact fit, then a waste frame of data 40


def test_shape_small_remainder_written_alone() -> None:
    data = _frames(10)  # 17 bytes
    records = shape_packet(data, [20])  # pad = 20 - 17 - 7 < 0: bytes sent alone
    assert records == [data]


def test_shape_leftover_after_list() -> None:
    data = _frames(1000)
    records = shape_packet(data, [100, 100])
    assert [len(r) for r in records] == [100, 100, len(data) - 200]


@given(st.integers(0, 3000), st.lists(st.one_of(st.just(CHECK), st.integers(1, 1500)), max_size=8))
def test_shape_preserves_bytes(n: int, sizes: list[int]) -> None:
    data = _frames(n)
    records = shape_packet(data, sizes)
    assert _parse_records(records) == data


def test_numbers_beyond_64_bits_are_rejected_not_raised() -> None:
    # Found by fuzz/fuzz_padding.py: int() raises ValueError past 4300 digits, which escaped
    # parse() (and a client's receive_data on an UpdatePaddingScheme frame). Go's Atoi
    # fails on anything outside int64, so such numbers are invalid like any other junk.
    long = "9" * 5000
    with pytest.raises(PaddingSchemeError):
        PaddingScheme.parse(f"stop={long}\n1=1-2".encode())
    with pytest.raises(PaddingSchemeError):
        PaddingScheme.parse(f"stop={1 << 63}".encode())
    scheme = PaddingScheme.parse(f"stop=2\n1=5-{long},{1 << 63}-9,c,7-7\n{long}=1-1".encode())
    assert scheme.lines == {1: ((CHECK, CHECK), (7, 7))}
    edge = PaddingScheme.parse(
        f"stop=-{1 << 63}\n1=1-{(1 << 63) - 1},00000000000000000000042-42".encode()
    )
    assert edge.stop == -(1 << 63)
    assert edge.lines[1] == ((1, (1 << 63) - 1), (42, 42))
    zeros = PaddingScheme.parse(("stop=" + "0" * 5000 + "3\n1=+" + "0" * 5000 + "5-5").encode())
    assert (zeros.stop, zeros.lines[1]) == (3, ((5, 5),))


def test_client_session_rejects_a_pushed_scheme_with_a_huge_number() -> None:
    # The same bug seen from the wire: before the fix, ValueError escaped
    # Session.receive_data, whose contract is to raise only RemoteProtocolError.
    from anytls.core.constants import Command
    from anytls.core.events import PaddingSchemeRejected
    from anytls.core.frame import encode_frame
    from anytls.core.session import Session

    client = Session.client("password")
    client.initiate()
    frame = encode_frame(Command.UPDATE_PADDING_SCHEME, 0, b"stop=" + b"1" * 5000)
    event, _version_known = client.receive_data(frame)
    assert isinstance(event, PaddingSchemeRejected)
    assert client.padding == PaddingScheme.default()


def test_hostile_scheme_padding_is_capped() -> None:
    from anytls.core.padding import MAX_PADDING_PER_PACKET

    scheme = PaddingScheme.parse(b"stop=2\n1=" + b",".join([b"65535-65535"] * 5000))
    records = shape_packet(_frames(10), scheme.sizes(1))
    assert sum(len(r) for r in records) <= 17 + MAX_PADDING_PER_PACKET + 7 * 8
    assert _parse_records(records) == _frames(10)
