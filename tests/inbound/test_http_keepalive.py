"""Absolute-URI HTTP proxy requests on kept-alive connections, end to end.

``anytls-client`` → ``anytls-server`` → an origin in this test that counts its connections.
The proxy connection stays open from one request to the next, and so does the stream to
an origin while the next request goes to the same origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import h11
import pytest

from anytls.aio.client import Client
from anytls.aio.server import ServerConfig, serve
from anytls.inbound import http_forward
from anytls.inbound.mixed import MixedInbound
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import pattern, refused_port, tcp_echo_server
from tests.helpers.inprocess import RecordingTransport, mixed_proxy
from tests.helpers.interop import curl
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.singbox import SingBox, anytls_server_config

PASSWORD = "keepalive-pw"


@pytest.fixture(scope="module", params=["ours", "sing-box"])
def proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AnyTLSProcess]:
    """Our client program in front of our server or sing-box's."""
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    port = free_port()
    with contextlib.ExitStack() as stack:
        if request.param == "ours":
            args = ["-p", PASSWORD, "--cert", str(cert), "--key", str(key)]
            stack.enter_context(AnyTLSProcess.server(port, args, tmp_path_factory.mktemp("server")))
        else:
            config = anytls_server_config(port, [("u", PASSWORD)], cert, key)
            stack.enter_context(SingBox(config, tmp_path_factory.mktemp("sb"), name="server"))
        client_args = ["-s", f"127.0.0.1:{port}", "-p", PASSWORD, "--sni", "localhost"]
        env = {"SSL_CERT_FILE": str(cert)}
        tmp = tmp_path_factory.mktemp("client")
        with AnyTLSProcess.client(free_port(), client_args, tmp, env=env) as cli:
            yield cli


class Origin:
    """An HTTP/1.1 origin (h11) that counts connections and answers by path:
    ``/bytes/N`` N pattern bytes; ``/stream/N`` N bytes written as fast as they are taken;
    ``/old`` an HTTP/1.0 close-delimited body; ``/echo`` the request body back."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[bytes, bytes, bytes]] = []  # method, target, Host
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_message(conn, reader)
                if request is None:
                    return
                assert isinstance(request, h11.Request)
                host = dict(request.headers).get(b"host", b"")
                self.requests.append((request.method, request.target, host))
                if request.target == b"/old":
                    # What an HTTP/1.0 server does: no length, the close ends the body.
                    writer.write(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nclose-delimited body")
                    await writer.drain()
                    return
                if request.target.startswith(b"/stream/"):
                    # A large body at the pace the proxy takes it (TCP back-pressure).
                    size = int(request.target[8:])
                    headers = [("Content-Length", str(size))]
                    writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                    chunk = b"s" * (256 << 10)
                    for offset in range(0, size, len(chunk)):
                        writer.write(conn.send(h11.Data(data=chunk[: size - offset])) or b"")
                        await writer.drain()
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    conn.start_next_cycle()
                    continue
                if request.target.startswith(b"/bytes/"):
                    out = pattern(int(request.target[7:]))
                else:
                    out = body
                headers = [("Content-Length", str(len(out)))]
                writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=out)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        finally:
            writer.close()


async def _read_message(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request | h11.Response | None, bytes]:
    """The next request or response on ``conn`` and its whole body (None at EOF)."""
    head: h11.Request | h11.Response | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None, b""
        if isinstance(event, h11.Request | h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return head, body


class ProxyConnection:
    """One connection to the HTTP proxy, sending absolute-URI requests one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, proxy: AnyTLSProcess) -> AsyncIterator[ProxyConnection]:
        """A connection to ``proxy``'s port, closed on the way out."""
        conn = cls(*await asyncio.open_connection("127.0.0.1", proxy.port))
        try:
            yield conn
        finally:
            conn.close()

    async def request(
        self, url: str, method: str = "GET", body: bytes = b""
    ) -> tuple[h11.Response, bytes]:
        host = url.split("/")[2]
        headers = [("Host", host), ("Content-Length", str(len(body)))]
        out = self.conn.send(h11.Request(method=method, target=url, headers=headers)) or b""
        out += self.conn.send(h11.Data(data=body)) or b"" if body else b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(out)
        response, data = await asyncio.wait_for(_read_message(self.conn, self.reader), 10)
        assert isinstance(response, h11.Response), response
        self.conn.start_next_cycle()
        return response, data

    def close(self) -> None:
        self.writer.close()


def _url(origin: Origin, path: str) -> str:
    return f"http://127.0.0.1:{origin.port}{path}"


@async_test
async def test_requests_to_one_origin_share_the_proxy_and_the_origin_connection(
    proxy: AnyTLSProcess,
) -> None:
    async with Origin() as origin:
        async with ProxyConnection.open(proxy) as conn:
            for size in (10, 70_000, 3):
                response, body = await conn.request(_url(origin, f"/bytes/{size}"))
                assert response.status_code == 200 and body == pattern(size)
        assert origin.connections == 1
        host = f"127.0.0.1:{origin.port}".encode()
        assert origin.requests == [(b"GET", f"/bytes/{n}".encode(), host) for n in (10, 70_000, 3)]


@async_test
async def test_requests_to_two_origins_alternate_on_one_proxy_connection(
    proxy: AnyTLSProcess,
) -> None:
    async with Origin() as one, Origin() as two:
        async with ProxyConnection.open(proxy) as conn:
            for origin in (one, two, one):
                response, body = await conn.request(_url(origin, "/bytes/100"))
                assert response.status_code == 200 and body == pattern(100)
        assert (one.connections, two.connections) == (2, 1)


@async_test
async def test_a_close_delimited_response_arrives_chunked_and_the_connection_stays(
    proxy: AnyTLSProcess,
) -> None:
    async with Origin() as origin:
        async with ProxyConnection.open(proxy) as conn:
            response, body = await conn.request(_url(origin, "/old"))
            assert body == b"close-delimited body"
            assert (b"transfer-encoding", b"chunked") in list(response.headers)
            response, body = await conn.request(_url(origin, "/bytes/5"))
            assert body == pattern(5)
        assert origin.connections == 2  # the HTTP/1.0 origin closed its connection


@async_test
async def test_a_request_body_goes_through(proxy: AnyTLSProcess) -> None:
    async with Origin() as origin:
        async with ProxyConnection.open(proxy) as conn:
            data = pattern(300_000)
            response, body = await conn.request(_url(origin, "/echo"), "POST", data)
            assert response.status_code == 200 and body == data
            response, body = await conn.request(_url(origin, "/bytes/7"))
            assert body == pattern(7)
        assert origin.connections == 1


@async_test
async def test_an_unreachable_origin_gets_a_502_and_the_connection_goes_on(
    proxy: AnyTLSProcess,
) -> None:
    async with Origin() as origin, ProxyConnection.open(proxy) as conn:
        response, body = await conn.request(f"http://127.0.0.1:{refused_port()}/")
        assert response.status_code == 502
        assert body.startswith(b"anytls-client: ") and b"refused" in body
        response, body = await conn.request(_url(origin, "/bytes/9"))
        assert response.status_code == 200 and body == pattern(9)


@async_test
async def test_connect_after_a_forwarded_request_on_the_same_connection(
    proxy: AnyTLSProcess,
) -> None:
    async with (
        Origin() as origin,
        tcp_echo_server() as echo,
        ProxyConnection.open(proxy) as conn,
    ):
        _, body = await conn.request(_url(origin, "/bytes/4"))
        assert body == pattern(4)
        conn.writer.write(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\nping".encode())
        reply = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(conn.reader.readexactly(4), 10) == b"ping"


@async_test
async def test_curl_keeps_the_proxy_connection_for_its_next_url(proxy: AnyTLSProcess) -> None:
    async with Origin() as origin:
        urls = [_url(origin, "/bytes/1000"), _url(origin, "/bytes/2000")]
        _, body, err = await curl("-v", "--fail", "-x", f"http://127.0.0.1:{proxy.port}", *urls)
        assert body == pattern(1000) + pattern(2000)
        assert "Re-using existing connection" in err or "Reusing existing" in err, err
        assert origin.connections == 1


def _rss_mib(process: AnyTLSProcess) -> float:
    assert process.proc is not None
    with open(f"/proc/{process.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@async_test
async def test_a_client_that_stops_reading_holds_the_origin_back(proxy: AnyTLSProcess) -> None:
    size = 96 << 20
    async with Origin() as origin, ProxyConnection.open(proxy) as conn:
        target = _url(origin, f"/stream/{size}")
        conn.writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ") and f"{size}".encode() in head
        before = _rss_mib(proxy)
        await asyncio.sleep(1.0)  # not reading: the proxy must stop taking the body in
        grown = _rss_mib(proxy) - before
        assert grown < 24, f"the client's RSS grew {grown:.0f} MiB while nobody read"
        got = 0
        while got < size:
            data = await asyncio.wait_for(conn.reader.read(1 << 20), 10)
            assert data
            got += len(data)
        assert got == size
        _, body = await conn.request(_url(origin, "/bytes/5"))  # and the connection goes on
        assert body == pattern(5)


# ------------------------------------------------------------- in-process: timers, hand-off
@contextlib.asynccontextmanager
async def _inprocess_proxy(**client_kwargs: Any) -> AsyncIterator[tuple[Client, int]]:
    """Our server and client in this process, the client behind a mixed inbound."""
    server = await serve(ServerConfig(users={"u": PASSWORD}), "127.0.0.1", 0)
    try:
        async with mixed_proxy(server, PASSWORD, **client_kwargs) as proxy:
            yield proxy
    finally:
        await server.close()


@async_test
async def test_an_idle_kept_alive_connection_and_a_stalled_head_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_forward, "IDLE_TIMEOUT", 1.2)
    monkeypatch.setattr(http_forward, "HEAD_TIMEOUT", 0.2)
    async with Origin() as origin, _inprocess_proxy() as (_client, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = ProxyConnection(reader, writer)
        _, body = await conn.request(_url(origin, "/bytes/3"))
        assert body == pattern(3)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed while idle
        assert 1.0 < time.monotonic() - started < 5
        conn.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = ProxyConnection(reader, writer)
        _, body = await conn.request(_url(origin, "/bytes/3"))
        writer.write(b"GET http://127.0.0.1/ HTT")  # and then nothing
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.1 < time.monotonic() - started < 1.0  # the head's timer, not the idle one
        conn.close()


def _forwarding(
    client: Client, url: str
) -> tuple[RecordingTransport, http_forward.HttpForwardRelay]:
    """A forwarder on a stand-in local socket, its first request a GET of ``url``."""
    local = RecordingTransport()
    get = f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    relay = http_forward.HttpForwardRelay(MixedInbound(client), local, "test", get, lambda e: b"")
    return local, relay


def _connect_to(port: int) -> bytes:
    return f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@async_test
async def test_connect_after_a_request_waits_for_the_local_socket_to_drain() -> None:
    """A CONNECT behind a forwarded request, while the local socket is full, is handed to
    the tunnel code only once it has drained (the tunnel could not learn it is full)."""
    async with (
        Origin() as origin,
        tcp_echo_server() as echo,
        _inprocess_proxy() as (client, _port),
    ):
        local, relay = _forwarding(client, _url(origin, "/bytes/5"))
        await wait_until(lambda: local.written.endswith(pattern(5)), 5)
        assert local.written.endswith(pattern(5))
        relay.pause_writing()  # the client stopped reading
        relay.data_received(_connect_to(echo.port))
        await asyncio.sleep(0.1)
        assert local.protocol is relay and not local.reading  # held, and not read further
        relay.resume_writing()
        assert local.protocol is not relay  # the tunnel code has it now
        await wait_until(lambda: b"200 Connection established" in local.written, 5)
        assert b"200 Connection established" in local.written
        assert local.reading and not local.closed


@async_test
async def test_a_close_behind_a_queued_connect_reaches_the_tunnel_code() -> None:
    async with (
        Origin() as origin,
        tcp_echo_server() as echo,
        _inprocess_proxy() as (client, _port),
    ):
        local, relay = _forwarding(client, _url(origin, "/bytes/5"))
        # before the response: the CONNECT and the client's close wait behind the GET
        relay.data_received(_connect_to(echo.port))
        assert relay.eof_received()  # kept open: a response is under way
        await wait_until(lambda: b"200 Connection established" in local.written, 5)
        assert b"200 Connection established" in local.written
        await wait_until(lambda: local.closed, 5)  # as for a CONNECT followed by a close
        assert local.closed
        assert pattern(5) in local.written
