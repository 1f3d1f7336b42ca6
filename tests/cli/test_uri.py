from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anytls.errors import ConfigError
from anytls.uri import ServerURI, format_uri, parse_uri
from tests.cli._util import run_cli

FAST = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The three examples of anytls-go docs/uri_scheme.md.
        (
            "anytls://letmein@example.com/?sni=real.example.com",
            ServerURI("example.com", 443, "letmein", "real.example.com", False),
        ),
        (
            "anytls://letmein@example.com/?sni=127.0.0.1&insecure=1",
            ServerURI("example.com", 443, "letmein", "127.0.0.1", True),
        ),
        (
            "anytls://0fdf77d7-8ef5-4f2d@[2409:8a71:6a00:1953::615]:8964/?insecure=1",
            ServerURI("2409:8a71:6a00:1953::615", 8964, "0fdf77d7-8ef5-4f2d", None, True),
        ),
        ("anytls://pw@host:8443", ServerURI("host", 8443, "pw")),
        ("ANYTLS://pw@host:8443/", ServerURI("host", 8443, "pw")),
        ("anytls://host", ServerURI("host", 443, "")),
        ("anytls://@host?insecure=false", ServerURI("host", 443, "")),
        ("anytls://p%40ss%3Aw%2Fo%20rd%25@h:1/", ServerURI("h", 1, "p@ss:w/o rd%")),
        ("anytls://a:b@h:1", ServerURI("h", 1, "a:b")),
        (
            "anytls://pw@1.2.3.4:1/?insecure=TRUE&foo=bar#My%20Server",
            ServerURI("1.2.3.4", 1, "pw", None, True),
        ),
        ("anytls://pw@h/?sni=", ServerURI("h", 443, "pw", None)),
        ("anytls://%E4%BD%A0%E5%A5%BD@h", ServerURI("h", 443, "你好")),
        ("anytls://pw@h/?fp=Firefox", ServerURI("h", 443, "pw", fingerprint="firefox")),
        ("anytls://pw@h/?fp=", ServerURI("h", 443, "pw")),
    ],
)
def test_parse(text: str, expected: ServerURI) -> None:
    assert parse_uri(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://pw@host:443", "a http:// link, not an AnyTLS one"),
        ("host:443", "not a link, not an AnyTLS one"),
        ("anytls://pw@:443", "missing server host"),
        ("anytls://pw@", "missing server host"),
        ("anytls://pw@host:abc", "port 'abc'"),
        ("anytls://pw@host:70000", "port"),
        ("anytls://pw@host:0", "port 0"),
        ("anytls://pw@host:", "empty port"),
        ("anytls://pw@[::1:443", "IPv6"),
        ("anytls://pw@[example.com]:443", "IPv6"),
        ("anytls://pw@host/?insecure=maybe", "insecure='maybe'"),
        ("anytls://%ff@host", "percent-encoded UTF-8"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_uri(text)


def test_format() -> None:
    uri = ServerURI("2001:db8::1", 8964, "p@ss w/rd", "real.example.com", True)
    text = format_uri(uri)
    assert text == "anytls://p%40ss%20w%2Frd@[2001:db8::1]:8964/?sni=real.example.com&insecure=1"
    assert parse_uri(text) == uri
    assert format_uri(ServerURI("h")) == "anytls://h:443/"


@pytest.mark.parametrize(
    ("uri", "sni"),
    [
        (ServerURI("example.com"), "example.com"),
        (ServerURI("1.2.3.4"), None),
        (ServerURI("::1"), None),
        (ServerURI("1.2.3.4", sni="real.example.com"), "real.example.com"),
        (ServerURI("example.com", sni="127.0.0.1"), None),
        (ServerURI("example.com", sni="::1"), None),
    ],
)
def test_effective_sni(uri: ServerURI, sni: str | None) -> None:
    assert uri.effective_sni == sni


label = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789-", min_size=1, max_size=15)
hosts = st.one_of(
    st.ip_addresses().map(str),
    st.lists(label, min_size=1, max_size=4).map(".".join),
)


@FAST
@given(
    hosts,
    st.integers(1, 65535),
    st.text(max_size=30),
    st.one_of(st.none(), hosts),
    st.booleans(),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32).map(bytes.hex)),
    st.sampled_from([None, "chrome", "firefox", "chrome131_android", "openssl"]),
)
def test_round_trip(
    host: str,
    port: int,
    password: str,
    sni: str | None,
    insecure: bool,
    pin: str | None,
    fp: str | None,
) -> None:
    uri = ServerURI(host, port, password, sni, insecure, pin, fp)
    assert parse_uri(format_uri(uri)) == uri


def test_pin_parameter() -> None:
    pin = "0f" * 32
    # Hysteria 2's spelling; colons and upper case as `openssl x509 -fingerprint` prints.
    colons = ":".join(["0F"] * 32)
    uri = parse_uri(f"anytls://pw@vpn.example.org:8443/?pinSHA256={colons}#me")
    assert (uri.pin_sha256, uri.insecure) == (pin, False)
    assert format_uri(uri) == f"anytls://pw@vpn.example.org:8443/?pinSHA256={pin}"
    assert parse_uri(f"anytls://pw@h/?pinsha256={pin}").pin_sha256 == pin
    assert parse_uri("anytls://pw@h/?pinSHA256=").pin_sha256 is None
    with pytest.raises(ConfigError, match="pinSHA256 'abc' is not a SHA-256 in hex"):
        parse_uri("anytls://pw@h/?pinSHA256=abc")


@FAST
@given(st.text(max_size=60))
def test_garbage_only_config_errors(text: str) -> None:
    for candidate in (text, "anytls://" + text):
        with contextlib.suppress(ConfigError):
            parse_uri(candidate)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("https://pw@host:443/", "is a https:// link, not an AnyTLS one"),
        ("vless://uuid@host:443?security=reality", "is a vless:// link, not an AnyTLS one"),
        ("anytls://pw@::1:28443/", "put an IPv6 address in brackets"),
        ("'anytls://pw@host:443/", "stray ' at its start"),
        ("anytls://pw@host:443/\u201d", "stray \u201d at its end"),
    ],
)
def test_client_link_errors_name_the_real_problem(server: str, expected: str) -> None:
    result = run_cli("client", "-s", server, "--print-config")
    assert result.returncode == 2
    assert expected in result.stderr, result.stderr
    assert "not a number" not in result.stderr
    if "brackets" not in expected:
        assert "brackets" not in result.stderr


@pytest.mark.parametrize("quote", ["'{}'", '"{}"', "\u201c{}\u201d", " '{}' "])
def test_client_link_pasted_with_quotes_is_accepted(quote: str) -> None:
    result = run_cli("client", "-s", quote.format("anytls://pw@[::1]:28443/"), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "[::1]:28443" in result.stdout
