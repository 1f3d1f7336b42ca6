from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.core.address import (
    MAX_ADDRESS_SIZE,
    Address,
    AddressReader,
    decode_address,
)
from anytls.errors import ConfigError, LocalProtocolError, RemoteProtocolError

FAST = settings(max_examples=200, deadline=None)

# -- strategies ---------------------------------------------------------------------------

ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
domains = (
    st.lists(label, min_size=1, max_size=8)
    .map(".".join)
    .filter(lambda d: len(d) <= 255 and not d.replace(".", "").isdigit())
)
addresses = st.builds(Address, st.one_of(ipv4, ipv6, domains), ports)


# -- concrete bytes (PROTOCOL.md §6) ------------------------------------------------------


def test_domain_example_from_protocol() -> None:
    encoded = Address("example.com", 443).encode()
    assert encoded == bytes.fromhex("030b6578616d706c652e636f6d01bb")
    assert decode_address(encoded) == (Address("example.com", 443), len(encoded))


def test_ipv4_and_ipv6() -> None:
    assert Address("8.8.8.8", 53).encode() == bytes.fromhex("01080808080035")
    v6 = Address("2001:db8::1", 8080).encode()
    assert v6 == bytes.fromhex("04" + "20010db8" + "00" * 11 + "01" + "1f90")
    assert decode_address(v6) == (Address("2001:db8::1", 8080), 19)


def test_uot_magic_destination() -> None:
    assert Address("sp.v2.udp-over-tcp.arpa", 0).encode() == bytes.fromhex(
        "031773702e76322e7564702d6f7665722d7463702e617270610000"
    )


def test_domain_that_is_an_ip_literal_is_normalised() -> None:
    raw = b"\x03\x08" + b"10.0.0.1" + b"\x00\x50"
    assert decode_address(raw) == (Address("10.0.0.1", 80), len(raw))
    raw6 = b"\x03\x0b" + b"2001:DB8::1" + b"\x00\x50"
    assert decode_address(raw6) == (Address("2001:db8::1", 80), len(raw6))


def test_ip_literal_host_is_encoded_as_ip() -> None:
    assert Address("127.0.0.1", 1).encode()[0] == 0x01
    assert Address("::1", 1).encode()[0] == 0x04
    assert Address("localhost", 1).encode()[0] == 0x03


def test_decode_with_offset_and_trailing_bytes() -> None:
    raw = b"xx" + Address("a.b", 7).encode() + b"tail"
    assert decode_address(raw, 2) == (Address("a.b", 7), len(raw) - 4)
    assert decode_address(memoryview(raw), 2) == (Address("a.b", 7), len(raw) - 4)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00\x00", "unknown address type"),
        (b"\x00\x01\x02\x03\x04\x00\x00", "unknown address type"),
        (b"\x03\x00\x00\x50", "empty domain"),
        (b"\x03\x03a\x00b\x00\x50", "control character"),
        (b"\x03\x03a\nb\x00\x50", "control character"),  # a forged log line
        (b"\x03\x03a\x1bb\x00\x50", "control character"),  # a terminal escape
        (b"\x03\x02\xff\xfe\x00\x50", "not UTF-8"),
    ],
)
def test_decode_errors(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_address(raw)


def test_decode_incomplete() -> None:
    full = Address("example.com", 443).encode()
    for i in range(len(full)):
        assert decode_address(full[:i]) is None


@pytest.mark.parametrize("host", ["", "a" * 256, "a\x00b"])
def test_encode_rejects_bad_domain(host: str) -> None:
    with pytest.raises(LocalProtocolError):
        Address(host, 1).encode()


@pytest.mark.parametrize("port", [-1, 65536, "80", True])
def test_bad_port_is_local_error(port: object) -> None:
    with pytest.raises(LocalProtocolError):
        Address("h", port)  # type: ignore[arg-type]


def test_str_and_is_ip() -> None:
    assert str(Address("example.com", 443)) == "example.com:443"
    assert str(Address("::1", 80)) == "[::1]:80"
    assert Address("::1", 80).is_ip and Address("1.2.3.4", 1).is_ip
    assert not Address("example.com", 1).is_ip
    assert not Address("1.2.3", 1).is_ip


# -- Address.parse ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1080", Address("127.0.0.1", 1080)),
        ("example.com:443", Address("example.com", 443)),
        ("[::1]:8443", Address("::1", 8443)),
        ("[2409:8a71:6a00:1953::615]:0", Address("2409:8a71:6a00:1953::615", 0)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected
    assert Address.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.com", "expected host:port"),
        ("::1:80", "brackets"),
        ("[::1:80", "missing ']'"),
        ("[::1]80", r"\[IPv6\]:port"),
        ("[example.com]:80", "not an IPv6"),
        (":8443", "missing host"),
        ("host:", "port ''"),
        ("host:http", "port 'http'"),
        ("host:65536", "0..65535"),
        ("host:-1", "0..65535"),
        ("a b:1", "not a valid host"),
        ("x" * 256 + ":1", "longer than 255"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Address.parse(text)


@FAST
@given(addresses)
def test_parse_str_round_trip(address: Address) -> None:
    assert Address.parse(str(address)) == address


# -- properties ---------------------------------------------------------------------------


def _canonical(address: Address) -> Address:
    try:
        return Address(str(ipaddress.ip_address(address.host)), address.port)
    except ValueError:
        return address


@FAST
@given(addresses, st.binary(max_size=20))
def test_round_trip(address: Address, tail: bytes) -> None:
    encoded = address.encode()
    assert len(encoded) <= MAX_ADDRESS_SIZE
    assert decode_address(encoded + tail) == (_canonical(address), len(encoded))


@FAST
@given(addresses, st.binary(max_size=30), st.data())
def test_reader_any_split(address: Address, tail: bytes, data: st.DataObject) -> None:
    stream = address.encode() + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reader = AddressReader()
    result = None
    rest = bytearray()
    for chunk in chunks:
        if result is None:
            result = reader.feed(chunk)
            if result is not None:
                rest += reader.leftover
        else:
            rest += chunk
    assert result == _canonical(address)
    assert bytes(rest) == tail


@FAST
@given(addresses)
def test_reader_one_byte_at_a_time(address: Address) -> None:
    stream = address.encode() + b"!"
    reader = AddressReader()
    for i, byte in enumerate(stream[:-1]):
        got = reader.feed(bytes([byte]))
        assert (got is None) == (i < len(stream) - 2)
    assert reader.address == _canonical(address)
    assert reader.leftover == b""


def test_reader_large_chunk_after_partial() -> None:
    reader = AddressReader()
    assert reader.feed(b"\x01\x01") is None
    payload = bytes(100_000)
    assert reader.feed(b"\x02\x03\x04\x00\x50" + payload) == Address("1.2.3.4", 80)
    assert reader.leftover == payload
    with pytest.raises(LocalProtocolError):
        reader.feed(b"x")


@FAST
@given(st.binary(max_size=300))
def test_garbage_only_remote_errors(data: bytes) -> None:
    try:
        result = decode_address(data)
    except RemoteProtocolError:
        return
    if result is not None:
        address, end = result
        assert end <= len(data) and end <= MAX_ADDRESS_SIZE
        assert 0 <= address.port <= 65535


@FAST
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_reader_garbage_bounded(chunks: list[bytes]) -> None:
    reader = AddressReader()
    try:
        for chunk in chunks:
            if reader.feed(chunk) is not None:
                return
            assert len(reader._buf) < MAX_ADDRESS_SIZE
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # Found by fuzz/fuzz_address.py: undecodable argv bytes arrive as lone surrogates
        # (surrogateescape) and made the length check raise UnicodeEncodeError.
        ("\udccd\udccdhost:80", "not valid UTF-8"),
        # int() raises ValueError past 4300 digits; reachable from a peer through an HTTP
        # CONNECT target (fuzz/fuzz_http_proxy.py, parse_request_head).
        ("host:" + "1" * 5000, "0..65535"),
        ("[::1]:" + "9" * 4301, "0..65535"),
    ],
)
def test_parse_rejects_instead_of_crashing(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Address.parse(text)


def test_parse_port_with_leading_zeros_still_accepted() -> None:
    assert Address.parse("host:" + "0" * 5000 + "80") == Address("host", 80)
