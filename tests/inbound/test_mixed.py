"""The local SOCKS5 + HTTP port of the ``anytls-client`` program, end to end with real
clients (curl, raw sockets), through our server and through sing-box's server.

Every process runs for real on loopback: ``anytls-client`` → (``anytls-server`` or sing-box)
→ ``tests/helpers/httpd.py``. Bodies are checked by sha256.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.aio import async_test
from tests.helpers.echo import pattern, pattern_sha256, refused_port, sha256_hex, tcp_echo_server
from tests.helpers.httpd import HTTPServerAddr, http_server
from tests.helpers.interop import MIB, aclose, curl
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import ProxyHTTPError, open_http_connect, open_socks5_raw
from tests.helpers.singbox import SingBox, anytls_server_config
from tests.helpers.socks5_udp import Socks5Error, encode_address, socks5_handshake

PASSWORD = "mixed-pw"
USER, PASS = "alice", "s3cr3t:with-colon"  # the password may contain ':'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def web() -> Iterator[HTTPServerAddr]:
    with http_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def our_server(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[AnyTLSProcess]:
    args = ["-p", PASSWORD, "--cert", str(certs[0]), "--key", str(certs[1])]
    with AnyTLSProcess.server(free_port(), args, tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def singbox_server_port(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[int]:
    port = free_port()
    cfg = anytls_server_config(port, [("u", PASSWORD)], *certs)
    with SingBox(cfg, tmp_path_factory.mktemp("sb"), name="server"):
        yield port


def _client(tmp: Path, server_port: int, cert: Path, *extra: str) -> AnyTLSProcess:
    """``anytls-client`` verifying the test certificate (trusted via SSL_CERT_FILE)."""
    args = ["-s", f"127.0.0.1:{server_port}", "-p", PASSWORD, "--sni", "localhost", *extra]
    return AnyTLSProcess.client(free_port(), args, tmp, env={"SSL_CERT_FILE": str(cert)})


@pytest.fixture(scope="module", params=["ours", "sing-box"])
def proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certs: tuple[Path, Path],
) -> Iterator[AnyTLSProcess]:
    """Our client program in front of our server or sing-box's server."""
    if request.param == "ours":
        server_port = request.getfixturevalue("our_server").port
    else:
        server_port = request.getfixturevalue("singbox_server_port")
    with _client(tmp_path_factory.mktemp("client"), server_port, certs[0]) as cli:
        yield cli


@pytest.fixture(scope="module", params=["ours", "sing-box"])
def waiting_proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certs: tuple[Path, Path],
) -> Iterator[AnyTLSProcess]:
    """Like ``proxy``, with ``--wait-for-synack`` (replies wait for the server's answer)."""
    if request.param == "ours":
        server_port = request.getfixturevalue("our_server").port
    else:
        server_port = request.getfixturevalue("singbox_server_port")
    tmp = tmp_path_factory.mktemp("waiting-client")
    with _client(tmp, server_port, certs[0], "--wait-for-synack") as cli:
        yield cli


@pytest.fixture(scope="module")
def auth_proxy(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path], our_server: AnyTLSProcess
) -> Iterator[AnyTLSProcess]:
    """Our client program requiring proxy credentials from local clients."""
    tmp = tmp_path_factory.mktemp("auth-client")
    with _client(tmp, our_server.port, certs[0], "--auth", f"{USER}:{PASS}") as cli:
        yield cli


def _url(web: HTTPServerAddr, size: int, host: str = "localhost") -> str:
    return f"http://{host}:{web.port}/bytes/{size}"


def _requests_for(web: HTTPServerAddr, size: int) -> list[tuple[str, str, str | None]]:
    return [r for r in web.requests if r[1].endswith(f"/bytes/{size}")]


# ---------------------------------------------------------------------------- curl


@async_test
async def test_curl_socks5_hostname(proxy: AnyTLSProcess, web: HTTPServerAddr) -> None:
    size = MIB + 11
    connects = rf"local client 127\.0\.0\.1:\d+: CONNECT localhost:{web.port}$"
    before = len(proxy.log_lines(connects))
    _, body, _ = await curl(
        "--fail", "--socks5-hostname", f"127.0.0.1:{proxy.port}", _url(web, size)
    )
    assert len(body) == size
    assert sha256_hex(body) == pattern_sha256(size)
    # the name went through the tunnel unresolved (the client logs before it replies)
    assert len(proxy.log_lines(connects)) == before + 1


@async_test
async def test_curl_http_connect(proxy: AnyTLSProcess, web: HTTPServerAddr) -> None:
    size = MIB + 12
    _, body, _ = await curl("--fail", "-p", "-x", f"http://127.0.0.1:{proxy.port}", _url(web, size))
    assert sha256_hex(body) == pattern_sha256(size)
    # CONNECT tunnel: the origin saw curl's own origin-form request
    assert _requests_for(web, size)[-1] == ("GET", f"/bytes/{size}", f"localhost:{web.port}")


@async_test
async def test_curl_http_absolute_uri(proxy: AnyTLSProcess, web: HTTPServerAddr) -> None:
    size = MIB + 13
    _, body, _ = await curl("--fail", "-x", f"http://127.0.0.1:{proxy.port}", _url(web, size))
    assert sha256_hex(body) == pattern_sha256(size)
    # plain proxy GET: the inbound rewrote "GET http://host/path" into origin form
    assert _requests_for(web, size)[-1] == ("GET", f"/bytes/{size}", f"localhost:{web.port}")


@async_test
async def test_curl_concurrent_mixed(proxy: AnyTLSProcess, web: HTTPServerAddr) -> None:
    """SOCKS5 and HTTP clients at once on the same port."""
    sizes = [200_000 + i for i in range(12)]
    modes = [
        ["--socks5-hostname", f"127.0.0.1:{proxy.port}"],
        ["-x", f"http://127.0.0.1:{proxy.port}"],
        ["-p", "-x", f"http://127.0.0.1:{proxy.port}"],
    ]
    results = await asyncio.gather(
        *(curl("--fail", *modes[i % 3], _url(web, n)) for i, n in enumerate(sizes))
    )
    for n, (_, body, _) in zip(sizes, results, strict=True):
        assert sha256_hex(body) == pattern_sha256(n)


# ---------------------------------------------------------------------------- auth


@async_test
async def test_socks5_username_password(auth_proxy: AnyTLSProcess, web: HTTPServerAddr) -> None:
    size = 100_001
    port = auth_proxy.port
    _, body, _ = await curl(
        "--fail", "--socks5-hostname", f"{USER}:{PASS}@127.0.0.1:{port}", _url(web, size)
    )
    assert sha256_hex(body) == pattern_sha256(size)
    _, body, _ = await curl(
        "--fail",
        "--socks5-hostname",
        f"127.0.0.1:{port}",
        "-U",
        f"{USER}:{PASS}",
        _url(web, size),
    )
    assert sha256_hex(body) == pattern_sha256(size)
    # no credentials / wrong credentials: curl fails, nothing reaches the origin
    before = len(_requests_for(web, size))
    rc, body, _ = await curl("--socks5-hostname", f"127.0.0.1:{port}", _url(web, size), check=False)
    assert rc != 0 and body == b""
    rc, body, _ = await curl(
        "--socks5-hostname", f"{USER}:wrong@127.0.0.1:{port}", _url(web, size), check=False
    )
    assert rc != 0 and body == b""
    assert len(_requests_for(web, size)) == before
    # the raw handshake shows the RFC 1929 status
    with pytest.raises(Socks5Error, match="authentication failed"):
        await open_socks5_raw(
            "127.0.0.1", port, "localhost", web.port, username=USER, password="wrong"
        )
    _reader, writer, _ = await open_socks5_raw(
        "127.0.0.1", port, "localhost", web.port, username=USER, password=PASS
    )
    await aclose(writer)


@async_test
async def test_http_proxy_auth(auth_proxy: AnyTLSProcess, web: HTTPServerAddr) -> None:
    size = 100_002
    proxy = f"http://127.0.0.1:{auth_proxy.port}"
    for extra in ([], ["-p"]):
        _, body, _ = await curl(
            "--fail", *extra, "-x", proxy, "-U", f"{USER}:{PASS}", _url(web, size)
        )
        assert sha256_hex(body) == pattern_sha256(size)
    # the origin never sees the proxy credentials
    assert all(r[2] == f"localhost:{web.port}" for r in _requests_for(web, size))
    before = len(_requests_for(web, size))
    # no credentials: 407 with a Basic challenge
    _, out, _ = await curl(
        "-x", proxy, "-o", "/dev/null", "-w", "%{http_code}", _url(web, size), check=False
    )
    assert out == b"407"
    with pytest.raises(ProxyHTTPError) as info:
        await open_http_connect("127.0.0.1", auth_proxy.port, "localhost", web.port)
    assert info.value.status == 407
    assert b'proxy-authenticate: basic realm="anytls"' in info.value.head.lower()
    # wrong credentials: 407 too
    _, out, _ = await curl(
        "-x",
        proxy,
        "-U",
        f"{USER}:nope",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        _url(web, size),
        check=False,
    )
    assert out == b"407"
    assert len(_requests_for(web, size)) == before


# ---------------------------------------------------------------------------- bad clients


@async_test
async def test_socks5_bind_not_supported(proxy: AnyTLSProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(Socks5Error) as info:
                await socks5_handshake(reader, writer, 2, ("127.0.0.1", 5555))  # BIND
            assert info.value.reply == 7  # command not supported
            assert await reader.read() == b""  # then the proxy closes
        await proxy.wait_log(r"SOCKS5 BIND to 127\.0\.0\.1:5555 is not supported")
    finally:
        await aclose(writer)


GARBAGE = [
    # a TLS ClientHello start (someone pointed a TLS client at the proxy port)
    bytes.fromhex("16030100a5010000a10303") + bytes(32),
    # SOCKS4 CONNECT (not supported)
    b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00",
    # binary noise with a blank line
    b"\x00\xff\xfe\xfd\r\n\r\n",
    # text that is not HTTP
    b"HELLO there\r\n\r\n",
    # an origin-form request is not a proxy request
    b"GET /hello HTTP/1.1\r\nHost: example.com\r\n\r\n",
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=["tls", "socks4", "binary", "text", "origin"])
@async_test
async def test_garbage_first_bytes_closed_cleanly(
    proxy: AnyTLSProcess, web: HTTPServerAddr, garbage: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        async with asyncio.timeout(5):  # no waiting for the 30 s handshake timeout
            writer.write(garbage)
            await writer.drain()
            got = await reader.read()  # EOF, not a reset (ConnectionResetError would raise)
    finally:
        await aclose(writer)
    assert not got.startswith(b"HTTP/1.1 200"), got
    assert got == b"" or got.startswith(b"HTTP/1.1 4"), got
    # and the proxy is still fine
    _, body, _ = await curl(
        "--fail", "--socks5-hostname", f"127.0.0.1:{proxy.port}", _url(web, 1234)
    )
    assert sha256_hex(body) == pattern_sha256(1234)


@async_test
async def test_refused_destination_via_curl(waiting_proxy: AnyTLSProcess) -> None:
    """--wait-for-synack: a refused destination gets the real SOCKS5 code / HTTP 502."""
    proxy = waiting_proxy
    dead = refused_port()
    rc, _, err = await curl(
        "--socks5-hostname", f"127.0.0.1:{proxy.port}", f"http://127.0.0.1:{dead}/", check=False
    )
    assert rc != 0
    # SOCKS5 reply 5; curl prints the code ("... connection to 127.0.0.1. (5)") or its text
    assert re.search(r"\(5\)|refused", err, re.IGNORECASE), err
    _, out, _ = await curl(
        "-x",
        f"http://127.0.0.1:{proxy.port}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"http://127.0.0.1:{dead}/",
        check=False,
    )
    assert out == b"502"


@async_test
async def test_refused_destination_resets_by_default(proxy: AnyTLSProcess) -> None:
    """Default (0-RTT) replies: CONNECT was already answered, so a refused destination
    resets the local connection and is logged; an absolute-URI request, not yet answered,
    still gets a 502."""
    dead = refused_port()
    for scheme, method in (("socks5-hostname", "CONNECT"), ("proxytunnel", "CONNECT")):
        before = len(proxy.log_lines(rf"{method} 127\.0\.0\.1:{dead} failed: .*reset"))
        via = ["--socks5-hostname", f"127.0.0.1:{proxy.port}"]
        if scheme == "proxytunnel":
            via = ["-p", "-x", f"http://127.0.0.1:{proxy.port}"]
        rc, _, err = await curl(*via, f"http://127.0.0.1:{dead}/", check=False)
        # a reset: 56 "Recv failure: Connection reset" or, if it comes very early, 55 (send
        # or getpeername failure); an orderly close would be 52 "Empty reply"
        assert rc in (55, 56), (rc, err)
        await proxy.wait_log(
            rf"{method} 127\.0\.0\.1:{dead} failed: remote: .*refused.* \(local connection reset\)"
        )
        assert len(proxy.log_lines(rf"{method} 127\.0\.0\.1:{dead} failed: .*reset")) > before
    _, out, _ = await curl(
        "-x",
        f"http://127.0.0.1:{proxy.port}",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"http://127.0.0.1:{dead}/",
        check=False,
    )
    assert out == b"502"


@async_test
async def test_socks5_no_acceptable_method(proxy: AnyTLSProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        async with asyncio.timeout(5):
            writer.write(b"\x05\x01\x02")  # offers only username/password; none configured
            assert await reader.read() == b"\x05\xff"  # "no acceptable methods", then EOF
    finally:
        await aclose(writer)


# ---------------------------------------------------------------------------- pipelining


@async_test
async def test_socks5_request_pipelined_with_data(proxy: AnyTLSProcess) -> None:
    """Greeting, request and first payload bytes in one segment (optimistic data)."""
    async with tcp_echo_server() as (host, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            async with asyncio.timeout(10):
                payload = pattern(30_000)
                writer.write(
                    b"\x05\x01\x00" + b"\x05\x01\x00" + encode_address(host, port) + payload
                )
                assert await reader.readexactly(2) == b"\x05\x00"
                head = await reader.readexactly(3 + 7)  # IPv4 BND address
                assert head[:2] == b"\x05\x00"
                got = await reader.readexactly(len(payload))
        finally:
            await aclose(writer)
    assert sha256_hex(got) == sha256_hex(payload)


@async_test
async def test_socks5_pipelined_data_beyond_the_early_data_limit(proxy: AnyTLSProcess) -> None:
    """1 MiB sent right behind the request: buffered up to the limit, then reading pauses
    until the stream is connected; every byte arrives, in order."""
    async with tcp_echo_server() as (host, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            async with asyncio.timeout(20):
                payload = pattern(1 << 20)
                writer.write(
                    b"\x05\x01\x00" + b"\x05\x01\x00" + encode_address(host, port) + payload
                )
                assert await reader.readexactly(2) == b"\x05\x00"
                assert (await reader.readexactly(3 + 7))[:2] == b"\x05\x00"
                got = await reader.readexactly(len(payload))
        finally:
            await aclose(writer)
    assert sha256_hex(got) == sha256_hex(payload)


@async_test
async def test_http_connect_pipelined_with_data(proxy: AnyTLSProcess) -> None:
    """CONNECT head and tunnelled bytes in one segment, before the 200 arrives."""
    async with tcp_echo_server() as (_host, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            async with asyncio.timeout(10):
                payload = pattern(30_000)
                head = f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"
                writer.write(head.encode() + payload)
                status = await reader.readuntil(b"\r\n\r\n")
                assert status.startswith(b"HTTP/1.1 200")
                got = await reader.readexactly(len(payload))
        finally:
            await aclose(writer)
    assert sha256_hex(got) == sha256_hex(payload)


# ---------------------------------------------------------------------------- server down


@async_test
async def test_server_unreachable_is_not_blamed_on_the_destination(tmp_path: Path) -> None:
    """With the AnyTLS server down, SOCKS5 says "general failure" (1), not "connection
    refused" (5), which would wrongly describe the destination; HTTP says 502."""
    args = ["-s", f"127.0.0.1:{refused_port()}", "-p", PASSWORD, "--insecure"]
    args.append("--wait-for-synack")
    async with AnyTLSProcess.client(free_port(), args, tmp_path) as cli:
        async with asyncio.timeout(10):
            with pytest.raises(Socks5Error) as info:
                await open_socks5_raw("127.0.0.1", cli.port, "example.com", 80)
            assert info.value.reply == 1
            with pytest.raises(ProxyHTTPError) as http_info:
                await open_http_connect("127.0.0.1", cli.port, "example.com", 80)
            assert http_info.value.status == 502
        await cli.wait_log(r"CONNECT example\.com:80 failed: cannot connect to 127\.0\.0\.1")


@async_test
async def test_server_unreachable_by_default(tmp_path: Path) -> None:
    """Default (0-RTT) replies with the server down: CONNECT is answered, then the local
    connection is reset (and the reason logged); an absolute-URI HTTP request, not yet
    answered, gets a 502."""
    args = ["-s", f"127.0.0.1:{refused_port()}", "-p", PASSWORD, "--insecure"]
    async with AnyTLSProcess.client(free_port(), args, tmp_path) as cli:
        async with asyncio.timeout(10):
            reader, writer, _ = await open_socks5_raw("127.0.0.1", cli.port, "example.com", 80)
            try:
                with pytest.raises(ConnectionResetError):
                    await reader.read()
            finally:
                await aclose(writer)
            # Logged once a minute at WARNING, with the likely cause.
            await cli.wait_log(
                r"WARNING .*CONNECT example\.com:80 failed \(local connection reset\): "
                r"cannot connect to 127\.0\.0\.1"
            )
            _, out, _ = await curl(
                "-x",
                f"http://127.0.0.1:{cli.port}",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://example.com/",
                check=False,
            )
            assert out == b"502"


@async_test
async def test_a_plain_request_to_the_proxy_port_says_what_the_port_is(
    proxy: AnyTLSProcess,
) -> None:
    # e.g. a browser pointed at the proxy's address as if it were a web site
    rc, body, _ = await curl(
        "-s", "-w", "%{http_code}", f"http://127.0.0.1:{proxy.port}/", check=False
    )
    assert rc == 0 and body.endswith(b"400"), body
    assert b"this port is a SOCKS5/HTTP proxy" in body
