from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.core.address import Address
from anytls.core.socks5 import build_udp_datagram, parse_udp_datagram
from anytls.core.uot import (
    MAX_DATAGRAM,
    UOT_CODES,
    UOT_V1_MAGIC,
    UOT_V2_MAGIC,
    UotPacketDecoder,
    UotRequestReader,
    decode_request,
    encode_connect_packet,
    encode_packet,
    encode_packet_after,
    encode_request,
    packet_to_socks_datagram,
    socks_datagram_to_packet,
    uot_version,
)
from anytls.errors import LocalProtocolError, RemoteProtocolError

FAST = settings(max_examples=200, deadline=None)

ports = st.integers(0, 65535)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
domains = (
    st.lists(label, min_size=1, max_size=8)
    .map(".".join)
    .filter(lambda d: len(d) <= 255 and not d.replace(".", "").isdigit())
)
hosts = st.one_of(st.ip_addresses().map(str), domains)
addresses = st.builds(Address, hosts, ports)
payloads = st.binary(max_size=300)


def _canonical(address: Address) -> Address:
    try:
        return Address(str(ipaddress.ip_address(address.host)), address.port)
    except ValueError:
        return address


def _split(stream: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(cuts)
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


# -- magic destinations -------------------------------------------------------------------


def test_magic_bytes() -> None:
    assert Address(UOT_V2_MAGIC, 0).encode() == bytes.fromhex(
        "03 17 73702e76322e7564702d6f7665722d7463702e61727061 0000".replace(" ", "")
    )
    assert len(UOT_V1_MAGIC) == 20


@pytest.mark.parametrize(
    ("host", "version"),
    [
        ("sp.v2.udp-over-tcp.arpa", 2),
        ("SP.V2.UDP-over-TCP.arpa", 2),
        ("sp.udp-over-tcp.arpa", 1),
        ("x.sp.v2.udp-over-tcp.arpa", None),
        ("sp.v2.udp-over-tcp.arpa.", None),
        ("example.com", None),
        ("1.2.3.4", None),
    ],
)
def test_uot_version(host: str, version: int | None) -> None:
    assert uot_version(Address(host, 0)) == version
    assert uot_version(Address(host, 443)) == version


# -- request ------------------------------------------------------------------------------


def test_request_bytes_use_socks_codes() -> None:
    dns = Address("8.8.8.8", 53)
    assert encode_request(False, dns) == bytes.fromhex("00 01 08080808 0035".replace(" ", ""))
    assert encode_request(True, dns) == bytes.fromhex("01 01 08080808 0035".replace(" ", ""))
    v6 = encode_request(True, Address("::1", 53))
    assert v6[:2] == b"\x01\x04"
    dom = encode_request(False, Address("example.com", 53))
    assert dom[:3] == b"\x00\x03\x0b"


def test_decode_request() -> None:
    raw = bytes.fromhex("0101080808080035") + b"rest"
    assert decode_request(raw) == (True, Address("8.8.8.8", 53), 8)
    assert decode_request(b"") is None
    assert decode_request(b"\x00") is None
    assert decode_request(b"\x00\x01\x08\x08") is None
    with pytest.raises(RemoteProtocolError, match="isConnect"):
        decode_request(b"\x02\x01\x08\x08\x08\x08\x00\x35")
    with pytest.raises(RemoteProtocolError, match="address type"):
        decode_request(b"\x00\x00\x08\x08\x08\x08\x00\x35")  # UoT code in a SOCKS field


@FAST
@given(st.booleans(), addresses, st.binary(max_size=20), st.data())
def test_request_reader_any_split(
    is_connect: bool, dest: Address, tail: bytes, data: st.DataObject
) -> None:
    encoded = encode_request(is_connect, dest)
    assert decode_request(encoded) == (is_connect, _canonical(dest), len(encoded))
    stream = encoded + tail
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    reader = UotRequestReader()
    got = None
    rest = b""
    for chunk in _split(stream, cuts):
        if got is None:
            got = reader.feed(chunk)
            rest = reader.leftover
        else:
            rest += chunk
    assert got == (is_connect, _canonical(dest))
    assert rest == tail


# -- packets ------------------------------------------------------------------------------


def test_non_connect_packet_uses_uot_codes() -> None:
    query = b"\x12\x34dns"
    packet = encode_packet(Address("8.8.8.8", 53), query)
    assert packet == bytes.fromhex("00 08080808 0035 0005".replace(" ", "")) + query
    v6 = encode_packet(Address("2001:db8::1", 53), b"")
    assert v6 == b"\x01" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x00\x35\x00\x00"
    dom = encode_packet(Address("example.com", 53), b"x")
    assert dom == b"\x02\x0bexample.com\x00\x35\x00\x01x"
    decoder = UotPacketDecoder(connect=False)
    assert decoder.feed(packet + v6 + dom) == [
        (Address("8.8.8.8", 53), query),
        (Address("2001:db8::1", 53), b""),
        (Address("example.com", 53), b"x"),
    ]


def test_connect_packet() -> None:
    assert encode_connect_packet(b"abc") == b"\x00\x03abc"
    assert encode_connect_packet(memoryview(b"")) == b"\x00\x00"
    decoder = UotPacketDecoder(connect=True)
    assert decoder.feed(b"\x00\x03abc\x00\x00\x00\x01") == [(None, b"abc"), (None, b"")]
    assert decoder.buffered == 2
    assert decoder.feed(b"z") == [(None, b"z")]


def test_payload_limit() -> None:
    big = bytes(MAX_DATAGRAM)
    assert len(encode_connect_packet(big)) == MAX_DATAGRAM + 2
    with pytest.raises(LocalProtocolError):
        encode_connect_packet(big + b"x")
    with pytest.raises(LocalProtocolError):
        encode_packet(Address("1.1.1.1", 1), big + b"x")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x03\x01\x02\x03\x04\x00\x35\x00\x00", "address type 0x03"),
        (b"\x04" + bytes(20), "address type 0x04"),
        (b"\x02\x00\x00\x35\x00\x00", "empty domain"),
    ],
)
def test_bad_packet_address(raw: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        UotPacketDecoder(connect=False).feed(raw)


def test_buffer_bounded_for_max_packet() -> None:
    decoder = UotPacketDecoder(connect=False)
    packet = encode_packet(Address("a" * 255, 1), bytes(MAX_DATAGRAM))
    chunks = [packet[i : i + 1000] for i in range(0, len(packet), 1000)]
    # Two packets back to back in a single feed, then the same split into pieces.
    assert len(decoder.feed(packet + packet)) == 2
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert decoder.buffered <= len(packet)
    assert out == [(Address("a" * 255, 1), bytes(MAX_DATAGRAM))]
    assert decoder.buffered == 0


def test_buffer_holds_at_most_one_packet_when_fed_many() -> None:
    decoder = UotPacketDecoder(connect=True)
    one = encode_connect_packet(bytes(1000))
    assert decoder.feed(one[:1]) == []
    out = decoder.feed(one[1:] + one * 50 + one[:10])
    assert len(out) == 51
    assert decoder.buffered == 10


@FAST
@given(st.lists(st.tuples(addresses, payloads), max_size=6), st.data())
def test_non_connect_any_split(packets: list[tuple[Address, bytes]], data: st.DataObject) -> None:
    stream = b"".join(encode_packet(a, p) for a, p in packets)
    expected = [(_canonical(a), p) for a, p in packets]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = UotPacketDecoder(connect=False)
    got = []
    for chunk in _split(stream, cuts):
        got += decoder.feed(chunk)
    assert got == expected
    assert decoder.buffered == 0


@FAST
@given(st.lists(st.tuples(addresses, st.binary(max_size=20)), max_size=4))
def test_non_connect_one_byte_at_a_time(packets: list[tuple[Address, bytes]]) -> None:
    stream = b"".join(encode_packet(a, p) for a, p in packets)
    decoder = UotPacketDecoder(connect=False)
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == [(_canonical(a), p) for a, p in packets]


@FAST
@given(st.lists(payloads, max_size=8), st.data())
def test_connect_any_split(packets: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_connect_packet(p) for p in packets)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = UotPacketDecoder(connect=True)
    got = []
    for chunk in _split(stream, cuts):
        got += decoder.feed(chunk)
    assert got == [(None, p) for p in packets]
    one = UotPacketDecoder(connect=True)
    got = []
    for i in range(len(stream)):
        got += one.feed(stream[i : i + 1])
    assert got == [(None, p) for p in packets]


@FAST
@given(st.booleans(), st.lists(st.binary(max_size=100), max_size=8))
def test_garbage_only_remote_errors(connect: bool, chunks: list[bytes]) -> None:
    decoder = UotPacketDecoder(connect=connect)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            assert decoder.buffered <= 2 + 255 + 2 + 2 + MAX_DATAGRAM
    except RemoteProtocolError:
        pass


@FAST
@given(st.binary(max_size=300))
def test_request_garbage_only_remote_errors(data: bytes) -> None:
    try:
        decode_request(data)
        UotRequestReader().feed(data)
    except RemoteProtocolError:
        pass


# -- SOCKS5 UDP datagrams re-framed directly (the mixed inbound's fast path) ------------


@FAST
@given(addresses, payloads)
def test_socks_datagram_to_packet_matches_the_general_path(
    address: Address, payload: bytes
) -> None:
    datagram = build_udp_datagram(address, payload)
    packet = socks_datagram_to_packet(datagram)
    if address.is_ip:
        parsed = parse_udp_datagram(datagram)
        assert parsed is not None
        assert packet == encode_packet(parsed[0], bytes(parsed[1]))
    else:
        assert packet is None  # a domain is resolved by the caller first


@pytest.mark.parametrize(
    "datagram",
    [
        b"\x00\x00\x01\x01\x7f\x00\x00\x01\x00\x35data",  # a fragment
        b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00",  # truncated
        b"\x00\x00\x00\x04" + bytes(17),  # truncated IPv6
        b"\x00\x00\x00\x09" + bytes(10),  # unknown ATYP
    ],
)
def test_socks_datagram_to_packet_leaves_the_rest_to_the_general_path(datagram: bytes) -> None:
    assert socks_datagram_to_packet(datagram) is None


@FAST
@given(addresses, payloads)
def test_packet_to_socks_datagram_matches_the_general_path(
    address: Address, payload: bytes
) -> None:
    packet = encode_packet(address, payload)
    assert packet_to_socks_datagram(packet) == build_udp_datagram(_canonical(address), payload)
    header = address.encode(UOT_CODES)
    assert encode_packet_after(header, payload) == packet


def test_packet_to_socks_datagram_checks_a_domain() -> None:
    with pytest.raises(RemoteProtocolError):
        packet_to_socks_datagram(b"\x02\x03a\x00b\x00\x35\x00\x00")


@FAST
@given(st.lists(st.tuples(addresses, payloads), max_size=6), st.data())
def test_feed_whole_returns_the_packets_as_sent(
    packets: list[tuple[Address, bytes]], data: st.DataObject
) -> None:
    encoded = [encode_packet(a, p) for a, p in packets]
    stream = b"".join(encoded)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = UotPacketDecoder(connect=False)
    got = []
    for chunk in _split(stream, cuts):
        got += decoder.feed_whole(chunk)
    assert got == encoded
    assert decoder.buffered == 0


@FAST
@given(st.lists(st.tuples(addresses, payloads), max_size=6), st.data())
def test_feed_split_keeps_each_address_encoded(
    packets: list[tuple[Address, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_packet(a, p) for a, p in packets)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = UotPacketDecoder(connect=False)
    got = []
    for chunk in _split(stream, cuts):
        got += decoder.feed_split(chunk)
    assert got == [(a.encode(UOT_CODES), p) for a, p in packets]
    assert decoder.buffered == 0


def test_feed_split_in_connect_format_has_no_address() -> None:
    decoder = UotPacketDecoder(connect=True)
    stream = encode_connect_packet(b"one") + encode_connect_packet(b"")
    assert decoder.feed_split(stream) == [(b"", b"one"), (b"", b"")]


@pytest.mark.parametrize("name", [b"a\x00b", b"\xff\xfe"])
def test_feed_split_refuses_a_malformed_name_as_feed_does(name: bytes) -> None:
    packet = b"\x02" + bytes((len(name),)) + name + b"\x00\x35" + b"\x00\x01x"
    for feed in (UotPacketDecoder(connect=False).feed, UotPacketDecoder(connect=False).feed_split):
        with pytest.raises(RemoteProtocolError):
            feed(packet)
