"""0-RTT CONNECT (anytls.aio.early.EarlyRelay, the mixed inbound's default): the reply comes
at once, the first bytes travel in the destination's PSH frame, an error SYNACK resets the
local connection, and a pooled session that dies before its SYNACK is replaced with every
byte replayed. Everything runs for real on loopback (our client and server in-process)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

import pytest

from anytls.aio.client import Client, ClientConfig
from anytls.aio.early import REPLAY_LIMIT, EarlyRelay
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from anytls.core.address import Address
from anytls.core.constants import HEADER, HEADER_SIZE, Command
from anytls.core.session import Session
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import blackhole, refused_port, tcp_echo_server
from tests.helpers.inprocess import RecordingTransport, mixed_proxy
from tests.helpers.proxyclient import open_socks5_raw
from tests.helpers.socks5_udp import encode_address

PASSWORD = "early-pw"


async def start_server(**kwargs: Any) -> AnyTLSServer:
    return await serve(ServerConfig(users={"u": PASSWORD}, **kwargs), "127.0.0.1", 0)


def proxy(server: AnyTLSServer, **kwargs: Any) -> Any:
    """Our client (default: 0-RTT replies) behind a mixed inbound on a free port."""
    return mixed_proxy(server, PASSWORD, **kwargs)


def socks_connect(host: str, port: int) -> bytes:
    """Greeting + CONNECT request, as one write."""
    return b"\x05\x01\x00" + b"\x05\x01\x00" + encode_address(host, port)


async def read_socks_reply(reader: asyncio.StreamReader) -> None:
    assert await reader.readexactly(2) == b"\x05\x00"
    assert (await reader.readexactly(10))[:2] == b"\x05\x00"  # succeeded, IPv4 BND


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """(command, stream id, payload) of every whole frame in ``data``."""
    out = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        command, sid, length = HEADER.unpack_from(data, pos)
        out.append((command, sid, data[pos + HEADER_SIZE : pos + HEADER_SIZE + length]))
        pos += HEADER_SIZE + length
    return out


@pytest.fixture
def server_input(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every chunk of plaintext our server's sessions are fed (after the preface)."""
    chunks: list[bytes] = []
    original = Session.receive_data

    def recording(self: Session, data: Any, now: float | None = None) -> Any:
        if self._is_server and self.state.value == "open":
            chunks.append(bytes(data))
        return original(self, data, now)

    monkeypatch.setattr(Session, "receive_data", recording)
    return chunks


@async_test
async def test_first_bytes_leave_with_the_syn_cold_and_warm(server_input: list[bytes]) -> None:
    """SYN, destination and the request sent right behind the CONNECT reach the server in
    one read (one flush on the client: one flight), on a new and on a pooled session; the
    request is its own padding packet, as a Go client's first write."""
    server = await start_server()
    async with tcp_echo_server() as echo, proxy(server) as (client, port):
        for n, request in enumerate((b"GET / first request", b"second, pooled session")):
            del server_input[:]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(socks_connect(*echo) + request)  # the request right behind CONNECT
            await read_socks_reply(reader)
            assert await reader.readexactly(len(request)) == request
            writer.close()
            await wait_until(lambda: not server.open_streams, 2)
            assert client.sessions_opened == 1  # the second used the pooled session
            sid = n + 1
            (chunk,) = [c for c in server_input if (Command.SYN, sid, b"") in frames(c)]
            # padding's WASTE frames (command 0) may sit between frames in early packets
            sent = [f for f in frames(chunk) if f[0] != Command.WASTE]
            syn = sent.index((Command.SYN, sid, b""))
            assert sent[syn + 1 : syn + 3] == [
                (Command.PSH, sid, Address(*echo).encode()),
                (Command.PSH, sid, request),
            ]
    await server.close()


@async_test
async def test_reply_comes_before_the_server_answers() -> None:
    """The destination never answers: the SOCKS reply still comes at once."""
    server = await start_server(connect_timeout=30.0)
    hole = blackhole()
    async with tcp_echo_server() as echo, proxy(server) as (_client, port):
        _, w, _ = await open_socks5_raw("127.0.0.1", port, *echo)  # pools a session
        w.close()
        _, w, _ = await open_socks5_raw("127.0.0.1", port, "127.0.0.1", hole.port, timeout=2)
        await wait_until(lambda: server.open_streams == 1, 2)  # the server is still dialling
        # the local client leaving ends the stream on the server too
        w.close()
        await wait_until(lambda: not server.open_streams, 2)
    hole.close()
    await server.close()


@async_test
async def test_error_synack_resets_the_local_connection_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "anytls.inbound")
    server = await start_server()
    dead = refused_port()
    async with tcp_echo_server() as echo, proxy(server) as (_client, port):
        for _ in ("new session", "pooled session"):
            r, w, _ = await open_socks5_raw("127.0.0.1", port, "127.0.0.1", dead)
            w.write(b"hello")
            with pytest.raises(ConnectionResetError):  # a reset, not an orderly EOF
                await asyncio.wait_for(r.read(), 5)
            w.close()
            r, w, _ = await open_socks5_raw("127.0.0.1", port, *echo)  # the session is fine
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
            w.close()
    failed = [m for m in caplog.messages if f"CONNECT 127.0.0.1:{dead} failed" in m]
    assert len(failed) == 2
    assert all("refused" in m and m.endswith("(local connection reset)") for m in failed)
    await server.close()


@async_test
async def test_http_request_to_a_refused_place_still_gets_502() -> None:
    server = await start_server()
    dead = refused_port()
    async with proxy(server) as (_client, port):
        for _ in ("new session", "pooled session"):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET http://127.0.0.1:{dead}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await asyncio.wait_for(r.readline(), 5)).startswith(b"HTTP/1.1 502")
            w.close()
    await server.close()


@pytest.mark.parametrize("size", [100_000, 3 * REPLAY_LIMIT])
@async_test
async def test_dead_session_before_the_synack_is_replaced_and_bytes_replayed(size: int) -> None:
    """The pooled session stops answering after the reply was given and ``size`` bytes
    were sent (beyond the replay bound, local reads pause): the watchdog kills it, and
    the stream is opened again on a fresh session with every byte, in order."""
    server = await start_server()
    async with tcp_echo_server() as echo, proxy(server, synack_timeout=0.3) as (client, port):
        r, w, _ = await open_socks5_raw("127.0.0.1", port, *echo)
        w.write(b"a")
        assert await r.readexactly(1) == b"a"
        w.close()
        await wait_until(lambda: not server.open_streams, 2)
        (sconn,) = server.connections
        assert sconn.transport is not None
        sconn.transport.pause_reading()  # the tunnel is now silently dead
        payload = os.urandom(size)
        r, w, _ = await open_socks5_raw("127.0.0.1", port, *echo)
        w.write(payload)
        got = await asyncio.wait_for(r.readexactly(size), 10)
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert client.streams_retried == 1
        assert client.sessions_opened == 2
        w.close()
    await server.close()


@async_test
async def test_v1_server_is_relayed_without_a_synack() -> None:
    server = await start_server(version=1)
    async with tcp_echo_server() as echo, proxy(server, version=1) as (client, port):
        for data in (b"one", b"two" * 100_000):  # new session, then the pooled one
            r, w, _ = await open_socks5_raw("127.0.0.1", port, *echo)
            w.write(data)
            assert await asyncio.wait_for(r.readexactly(len(data)), 5) == data
            w.close()
        assert client.sessions_opened == 1
    await server.close()


@async_test
async def test_a_stream_opened_while_the_local_socket_is_full_starts_paused() -> None:
    """The local socket's write buffer filled before the stream existed (a new session is
    still being set up): the stream must not deliver until it drains."""
    server = await start_server()
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, reuse_sessions=False)
    async with tcp_echo_server() as echo, Client(config) as client:
        local = RecordingTransport()
        relay = EarlyRelay(client, Address("127.0.0.1", echo.port), local, b"x", label="t")
        relay.start()
        assert relay.stream is None  # no pooled session: one is being set up
        local.get_protocol().pause_writing()  # the local socket is full
        await wait_until(lambda: relay.stream is not None and relay.stream.acknowledged.done(), 5)
        assert relay.stream is not None and relay.stream.acknowledged.done()
        assert not relay.stream.is_reading()
        local.get_protocol().resume_writing()
        assert relay.stream.is_reading()
        await wait_until(lambda: bytes(local.written) == b"x", 5)
        assert bytes(local.written) == b"x"
    await server.close()


@async_test
async def test_a_full_local_socket_does_not_hold_back_a_synack() -> None:
    """Pausing a stream pauses its session's reads: before the SYNACK that would keep the
    SYNACK out and let the watchdog kill a healthy reused session. The pause waits."""
    server = await start_server()
    port = server.sockets[0].getsockname()[1]
    config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, synack_timeout=1.0)
    async with tcp_echo_server() as echo, Client(config) as client:
        warm = await client.open_stream(Address("127.0.0.1", echo.port))
        await client.wait_acknowledged(warm)
        warm.close()
        await wait_until(lambda: client.pooled_session() is not None, 2)
        local = RecordingTransport()
        relay = EarlyRelay(client, Address("127.0.0.1", echo.port), local, b"y", label="t")
        relay.start()  # on the pooled (reused) session: the watchdog applies
        assert relay.stream is not None and not relay.stream.acknowledged.done()
        local.get_protocol().pause_writing()
        assert relay.stream.is_reading()  # not before the SYNACK
        await asyncio.sleep(2.2)  # twice the watchdog
        assert relay.stream.acknowledged.done() and relay.stream.acknowledged.result() is None
        assert not relay.stream.is_reading()  # held back from then on
        assert client.sessions_opened == 1  # the session lived
        local.get_protocol().resume_writing()
        await wait_until(lambda: bytes(local.written) == b"y", 5)
        assert bytes(local.written) == b"y"
    await server.close()
