from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anytls.core.proxy_protocol import V2_SIGNATURE, ProxyInfo, parse_proxy_header
from anytls.errors import RemoteProtocolError

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
V1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n"


def v2(cmd: int = 1, fam: int = 0x11, body: bytes | None = None) -> bytes:
    if body is None:
        body = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 56324, 443)
    return V2_SIGNATURE + bytes([0x20 | cmd, fam]) + struct.pack(">H", len(body)) + body


def test_v1_ipv4_and_ipv6() -> None:
    info = ProxyInfo(("192.0.2.7", 56324), ("198.51.100.1", 443))
    assert parse_proxy_header(V1 + b"\x16\x03\x01") == (info, len(V1))
    info6, n = parse_proxy_header(V1_6)  # type: ignore[misc]
    assert info6 == ProxyInfo(("2001:db8::7", 56324), ("2001:db8::1", 443)) and n == len(V1_6)
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == (None, 15)


def test_v2_ipv4_ipv6_local_and_tlvs() -> None:
    info = ProxyInfo(("192.0.2.7", 56324), ("198.51.100.1", 443))
    header = v2()
    assert parse_proxy_header(header + b"rest") == (info, len(header))
    body6 = bytes(15) + b"\x07" + bytes(15) + b"\x01" + struct.pack(">HH", 1, 2) + b"\x04\x00\x01x"
    parsed = parse_proxy_header(v2(fam=0x21, body=body6))
    assert parsed is not None and parsed[0] == ProxyInfo(("::7", 1), ("::1", 2))
    assert parse_proxy_header(v2(cmd=0, fam=0, body=b"")) == (None, 16)


@pytest.mark.parametrize("header", [V1, V1_6, v2()])
def test_every_prefix_is_incomplete(header: bytes) -> None:
    for i in range(len(header)):
        assert parse_proxy_header(header[:i]) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00",  # a TLS ClientHello without header
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY " + b"x" * 200,
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),
        V2_SIGNATURE + b"\x21\x11\xff\xff",
    ],
)
def test_malformed_headers_rejected(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_proxy_header(data)


@given(st.binary(max_size=300))
def test_garbage_only_remote_errors(data: bytes) -> None:
    try:
        result = parse_proxy_header(data)
    except RemoteProtocolError:
        return
    assert result is None or 0 < result[1] <= len(data)
