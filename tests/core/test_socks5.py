from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.core.address import Address
from anytls.core.socks5 import (
    Command,
    Reply,
    Socks5Handshake,
    build_udp_datagram,
    parse_udp_datagram,
    reply,
)
from anytls.errors import LocalProtocolError, RemoteProtocolError

FAST = settings(max_examples=200, deadline=None)

GREETING_NOAUTH = b"\x05\x01\x00"
GREETING_USERPASS = b"\x05\x02\x00\x02"
AUTH_OK = b"\x01\x04user\x04pass"
CONNECT_EXAMPLE = b"\x05\x01\x00" + bytes.fromhex("030b6578616d706c652e636f6d01bb")


def _feed_all(hs: Socks5Handshake, chunks: list[bytes]) -> tuple[bytes, int]:
    """Feed chunks until the request is complete; return (replies, bytes fed)."""
    out = b""
    fed = 0
    for chunk in chunks:
        if hs.request is not None:
            break
        out += hs.receive_data(chunk)
        fed += len(chunk)
    return out, fed


def test_no_auth_connect() -> None:
    hs = Socks5Handshake()
    assert hs.receive_data(GREETING_NOAUTH) == b"\x05\x00"
    assert hs.request is None
    assert hs.receive_data(CONNECT_EXAMPLE + b"GET /") == b""
    assert hs.request == (Command.CONNECT, Address("example.com", 443))
    assert hs.leftover == b"GET /"
    assert hs.failed is None
    with pytest.raises(LocalProtocolError):
        hs.receive_data(b"more")


def test_user_pass() -> None:
    hs = Socks5Handshake(("user", "pass"))
    assert hs.receive_data(GREETING_USERPASS) == b"\x05\x02"
    assert hs.receive_data(AUTH_OK) == b"\x01\x00"
    assert hs.receive_data(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00") == b""
    assert hs.request == (Command.UDP_ASSOCIATE, Address("0.0.0.0", 0))


def test_pipelined_handshake_in_one_chunk() -> None:
    hs = Socks5Handshake(("user", "pass"))
    out = hs.receive_data(GREETING_USERPASS + AUTH_OK + CONNECT_EXAMPLE + b"x")
    assert out == b"\x05\x02\x01\x00"
    assert hs.request == (Command.CONNECT, Address("example.com", 443))
    assert hs.leftover == b"x"


def test_bad_password() -> None:
    hs = Socks5Handshake(("user", "pass"))
    hs.receive_data(GREETING_USERPASS)
    assert hs.receive_data(b"\x01\x04user\x04nope" + CONNECT_EXAMPLE) == b"\x01\x01"
    assert hs.failed and "user" in hs.failed
    assert hs.request is None
    assert hs.receive_data(b"ignored") == b""


def test_no_acceptable_method() -> None:
    hs = Socks5Handshake(("user", "pass"))
    assert hs.receive_data(GREETING_NOAUTH) == b"\x05\xff"
    assert hs.failed and "username/password" in hs.failed
    hs = Socks5Handshake()
    assert hs.receive_data(b"\x05\x01\x02") == b"\x05\xff"
    assert hs.failed
    hs = Socks5Handshake()
    assert hs.receive_data(b"\x05\x00") == b"\x05\xff"


def test_bind_is_returned_for_the_caller_to_refuse() -> None:
    hs = Socks5Handshake()
    hs.receive_data(GREETING_NOAUTH + b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert hs.request == (Command.BIND, Address("127.0.0.1", 80))
    assert reply(Reply.COMMAND_NOT_SUPPORTED) == bytes.fromhex("05070001000000000000")


def test_unknown_command_and_address_type_are_refused() -> None:
    hs = Socks5Handshake()
    out = hs.receive_data(GREETING_NOAUTH + b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50")
    assert out == b"\x05\x00" + reply(Reply.COMMAND_NOT_SUPPORTED)
    assert hs.failed and hs.request is None
    hs = Socks5Handshake()
    out = hs.receive_data(GREETING_NOAUTH + b"\x05\x01\x00\x02")
    assert out == b"\x05\x00" + reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    assert hs.failed


@pytest.mark.parametrize("name", [b"", b"a\x00b", b"a\nb"], ids=["empty", "NUL", "line break"])
def test_a_bad_name_in_the_request_gets_a_failure_reply(name: bytes) -> None:
    hs = Socks5Handshake()
    request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x50"
    out = hs.receive_data(GREETING_NOAUTH + request)
    assert out == b"\x05\x00" + reply(Reply.GENERAL_FAILURE)  # the client hears why
    assert hs.failed and "domain name" in hs.failed and hs.request is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x04\x01\x00\x50",  # SOCKS4
        b"GET / HTTP/1.1\r\n",
        GREETING_NOAUTH + b"\x04\x01\x00\x01",  # request with wrong version
    ],
)
def test_garbage_is_remote_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        Socks5Handshake().receive_data(data)


def test_bad_auth_version() -> None:
    hs = Socks5Handshake(("u", "p"))
    hs.receive_data(GREETING_USERPASS)
    with pytest.raises(RemoteProtocolError, match="auth version"):
        hs.receive_data(b"\x05\x01u\x01p")


def test_reply_bytes() -> None:
    assert reply(Reply.SUCCEEDED) == bytes.fromhex("05000001000000000000")
    assert reply(Reply.SUCCEEDED, Address("127.0.0.1", 1080)) == bytes.fromhex(
        "050000017f0000010438"
    )
    assert reply(Reply.HOST_UNREACHABLE, Address("::1", 1))[:4] == b"\x05\x04\x00\x04"
    assert Socks5Handshake.reply(Reply.GENERAL_FAILURE) == reply(Reply.GENERAL_FAILURE)
    assert [int(r) for r in Reply] == list(range(9))
    assert [int(c) for c in Command] == [1, 2, 3]


# -- UDP datagrams ------------------------------------------------------------------------


def test_udp_datagram() -> None:
    raw = bytes.fromhex("000000 01 08080808 0035") + b"query"
    address, payload = parse_udp_datagram(raw)  # type: ignore[misc]
    assert address == Address("8.8.8.8", 53)
    assert bytes(payload) == b"query"
    assert build_udp_datagram(address, b"query") == raw
    assert parse_udp_datagram(b"\x00\x00\x01\x01\x08\x08\x08\x08\x00\x35x") is None  # FRAG=1


@pytest.mark.parametrize(
    "raw", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x08", b"\x00\x00\x00\x07abcdefgh"]
)
def test_udp_datagram_malformed(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_udp_datagram(raw)


# -- properties ---------------------------------------------------------------------------

label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
domains = (
    st.lists(label, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda d: not d.replace(".", "").isdigit())
)
addresses = st.builds(
    Address, st.one_of(st.ip_addresses().map(str), domains), st.integers(0, 65535)
)
creds = st.tuples(st.text(max_size=20), st.text(max_size=20)).filter(
    lambda c: all(len(x.encode()) <= 255 for x in c)
)


def _canonical(address: Address) -> Address:
    try:
        return Address(str(ipaddress.ip_address(address.host)), address.port)
    except ValueError:
        return address


@FAST
@given(
    st.one_of(st.none(), creds),
    st.sampled_from(list(Command)),
    addresses,
    st.binary(max_size=20),
    st.data(),
)
def test_any_split_gives_same_result(
    credentials: tuple[str, str] | None,
    command: Command,
    address: Address,
    tail: bytes,
    data: st.DataObject,
) -> None:
    if credentials is None:
        stream = GREETING_NOAUTH
        expected_out = b"\x05\x00"
    else:
        user, pw = (x.encode() for x in credentials)
        stream = GREETING_USERPASS + bytes([1, len(user)]) + user + bytes([len(pw)]) + pw
        expected_out = b"\x05\x02\x01\x00"
    stream += bytes([5, command, 0]) + address.encode() + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for pieces in (chunks, [stream[i : i + 1] for i in range(len(stream))]):
        hs = Socks5Handshake(credentials)
        out, fed = _feed_all(hs, pieces)
        assert out == expected_out
        assert hs.request == (command, _canonical(address))
        assert hs.failed is None
        assert hs.leftover + stream[fed:] == tail


@FAST
@given(addresses, st.binary(max_size=50))
def test_udp_round_trip(address: Address, payload: bytes) -> None:
    parsed = parse_udp_datagram(build_udp_datagram(address, payload))
    assert parsed is not None
    assert parsed[0] == _canonical(address)
    assert bytes(parsed[1]) == payload


@FAST
@given(st.one_of(st.none(), creds), st.lists(st.binary(max_size=60), max_size=8))
def test_garbage_only_remote_errors(
    credentials: tuple[str, str] | None, chunks: list[bytes]
) -> None:
    hs = Socks5Handshake(credentials)
    try:
        for chunk in chunks:
            if hs.request is not None:
                break
            hs.receive_data(chunk)
            assert len(hs._buf) <= 1 + 1 + 255 + 1 + 255
    except RemoteProtocolError:
        pass


@FAST
@given(st.binary(max_size=300))
def test_udp_garbage_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_udp_datagram(data)
