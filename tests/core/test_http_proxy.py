from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.core.address import Address
from anytls.core.http_proxy import (
    MAX_HEAD_SIZE,
    HttpProxyRequest,
    check_basic_auth,
    parse_request_head,
    response,
)
from anytls.errors import LocalProtocolError, RemoteProtocolError

FAST = settings(max_examples=200, deadline=None)


def _parse(data: bytes) -> HttpProxyRequest:
    request = parse_request_head(data)
    assert request is not None
    return request


def test_connect() -> None:
    req = _parse(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n\x16\x03\x01"
    )
    assert req.method == "CONNECT"
    assert req.is_connect
    assert req.target == Address("example.com", 443)
    assert req.leftover == b"\x16\x03\x01"
    assert req.proxy_authorization == "Basic dXNlcjpwYXNz"
    assert req.forward_head == b""


def test_connect_ipv6_and_without_host_header() -> None:
    req = _parse(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nUser-Agent: x\r\n\r\n")
    assert req.target == Address("2001:db8::1", 8443)
    assert req.leftover == b""
    assert _parse(b"CONNECT 1.2.3.4:80 HTTP/1.0\r\n\r\n").target == Address("1.2.3.4", 80)


@pytest.mark.parametrize("target", [b"example.com", b"[::1]", b"a b:80", b"host:99999"])
def test_connect_bad_target(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_request_head(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")


def test_absolute_uri_is_rewritten_to_origin_form() -> None:
    req = _parse(
        b"GET http://Example.com:8080/a/b?q=1#frag HTTP/1.1\r\n"
        b"Host: stale.example\r\n"
        b"User-Agent: curl/8\r\n"
        b"Proxy-Authorization: Basic eDp5\r\n"
        b"Proxy-Connection: Keep-Alive\r\n"
        b"Accept: */*\r\n\r\n"
    )
    assert req.method == "GET"
    assert not req.is_connect
    assert req.target == Address("example.com", 8080)
    assert req.proxy_authorization == "Basic eDp5"
    assert req.forward_head == (
        b"GET /a/b?q=1 HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"User-Agent: curl/8\r\n"
        b"Accept: */*\r\n"
        b"Connection: close\r\n\r\n"
    )


def test_absolute_uri_defaults_and_body() -> None:
    req = _parse(
        b"POST http://example.com HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\n"
        b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nbody"
    )
    assert req.target == Address("example.com", 80)
    assert req.leftover == b"body"
    assert req.forward_head.startswith(b"POST / HTTP/1.1\r\nHost: example.com\r\n")
    assert b"Content-Length: 4\r\n" in req.forward_head
    assert b"keep-alive" not in req.forward_head.lower()
    assert req.forward_head.endswith(b"Connection: close\r\n\r\n")


def test_https_and_ipv6_absolute_uri() -> None:
    req = _parse(b"GET https://[::1]/x HTTP/1.1\r\nHost: [::1]\r\n\r\n")
    assert req.target == Address("::1", 443)
    assert req.forward_head.startswith(b"GET /x HTTP/1.1\r\nHost: [::1]\r\n")
    req = _parse(b"GET http://[::1]:81/ HTTP/1.0\r\n\r\n")
    assert req.target == Address("::1", 81)
    assert req.forward_head.startswith(b"GET / HTTP/1.0\r\nHost: [::1]:81\r\n")


def test_upgrade_keeps_connection_header() -> None:
    req = _parse(
        b"GET http://h/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert b"Connection: Upgrade\r\n" in req.forward_head
    assert b"Connection: close" not in req.forward_head


def test_lf_only_head() -> None:
    req = _parse(b"CONNECT h:1 HTTP/1.1\nHost: h\n\nrest")
    assert req.target == Address("h", 1)
    assert req.leftover == b"rest"


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ],
)
def test_not_a_proxy_request(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="not a proxy request"):
        parse_request_head(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET http://h:bad/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http:///nohost HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nbad header\r\n\r\n",
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_request_head(data)


def test_incomplete_and_oversized() -> None:
    head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n"
    for i in range(len(head)):
        assert parse_request_head(head[:i]) is None
    big = b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * MAX_HEAD_SIZE
    with pytest.raises(RemoteProtocolError):
        parse_request_head(big)
    with pytest.raises(RemoteProtocolError):
        parse_request_head(big + b"\r\n\r\n")
    # A large body after a small head is fine.
    req = _parse(head + bytes(200_000))
    assert req.leftover == bytes(200_000)


def test_response() -> None:
    assert response(200, "Connection established") == (
        b"HTTP/1.1 200 Connection established\r\n\r\n"
    )
    assert response(502, "Bad Gateway") == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert response(407, "Proxy Authentication Required") == (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="anytls"\r\n'
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    with pytest.raises(LocalProtocolError):
        response(400, "bad\r\nX-Injected: 1")


def test_check_basic_auth() -> None:
    token = base64.b64encode(b"user:p:ss").decode()
    assert check_basic_auth(f"Basic {token}", "user", "p:ss")
    assert check_basic_auth(f"basic  {token} ", "user", "p:ss")
    assert not check_basic_auth(f"Basic {token}", "user", "p:sS")
    assert not check_basic_auth(f"Bearer {token}", "user", "p:ss")
    assert not check_basic_auth("Basic !!!notbase64", "user", "p:ss")
    assert not check_basic_auth("Basic ünï", "user", "p:ss")
    assert not check_basic_auth("", "user", "p:ss")
    utf8 = base64.b64encode("ü:ß".encode()).decode()
    assert check_basic_auth(f"Basic {utf8}", "ü", "ß")


# -- properties ---------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=30).filter(
        lambda h: not h.isdigit()
    ),
)
header_values = st.text("abcdefghijklmnopqrstuvwxyz0123456789 -_/.;=", max_size=30).map(str.strip)


@FAST
@given(
    st.booleans(),
    hosts,
    st.integers(1, 65535),
    st.lists(
        st.tuples(st.sampled_from(["Accept", "User-Agent", "X-Foo", "Cookie"]), header_values),
        max_size=4,
    ),
    st.binary(max_size=40),
)
def test_every_prefix_is_incomplete_then_full_parse(
    connect: bool, host: str, port: int, headers: list[tuple[str, str]], tail: bytes
) -> None:
    line = f"CONNECT {host}:{port} HTTP/1.1" if connect else f"GET http://{host}:{port}/p HTTP/1.1"
    head = "\r\n".join([line, f"Host: {host}", *(f"{k}: {v}" for k, v in headers), "", ""])
    raw = head.encode()
    for i in range(len(raw)):
        assert parse_request_head(raw[:i]) is None
    req = _parse(raw + tail)
    assert req.target == Address(host, port)
    assert req.is_connect == connect
    assert req.leftover == tail
    if not connect:
        assert req.forward_head.startswith(b"GET /p HTTP/1.1\r\nHost: ")
        for k, v in headers:
            assert f"{k}: {v}\r\n".encode() in req.forward_head


@FAST
@given(st.binary(max_size=400))
def test_garbage_only_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_request_head(data)


@FAST
@given(
    st.sampled_from([b"CONNECT ", b"GET ", b"GET http://", b"POST https://"]),
    st.binary(max_size=200),
)
def test_garbage_after_method_only_remote_errors(prefix: bytes, data: bytes) -> None:
    try:
        parse_request_head(prefix + data)
        parse_request_head(prefix + data + b"\r\n\r\n")
    except RemoteProtocolError:
        pass


@FAST
@given(st.text(max_size=40))
def test_check_basic_auth_never_raises(value: str) -> None:
    assert check_basic_auth(value, "u", "p") in (True, False)


def test_host_line_after_an_lf_only_head_is_not_taken_for_the_heads() -> None:
    # Found by fuzz/fuzz_http_proxy.py: the Host check looked for the end of the head at
    # "\r\n\r\n" before "\n\n", so a Host line in the bytes after an LF-only head counted,
    # and the same request was accepted or rejected depending on how it was chunked.
    head = b"GET http://example.com/ HTTP/1.1\n\n"
    tail = b"\x01(\x00GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    first = _parse(head)
    full = _parse(head + tail)
    assert full.target == first.target == Address("example.com", 80)
    assert full.leftover == tail


def test_connect_port_with_thousands_of_digits_is_a_remote_error() -> None:
    # int() raised ValueError (4300-digit limit) out of parse_request_head.
    with pytest.raises(RemoteProtocolError, match="bad CONNECT target"):
        parse_request_head(b"CONNECT a:" + b"1" * 5000 + b" HTTP/1.1\r\n\r\n")
