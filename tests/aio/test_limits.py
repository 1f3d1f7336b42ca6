"""Per-user limits over real loopback TLS: speed (both directions, across sessions), devices."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import pytest

from anytls import open_udp
from anytls.aio.client import Client, ClientConfig
from anytls.aio.limits import MBPS, TokenBucket, UserPolicy
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from anytls.aio.uot_server import UotServerRelay
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import tcp_source_server
from tests.helpers.rawclient import raw_session

MiB = 1024 * 1024
SIZE = 8 * MiB


def test_token_bucket_debt_and_wait() -> None:
    bucket = TokenBucket(1000.0, now=0.0, burst=100.0)
    assert bucket.tokens == 0  # a new bucket starts empty: no burst at the start
    assert bucket.take(0, 0.1) == 0.0 and bucket.tokens == 100.0
    assert bucket.take(50, 0.1) == 0.0
    assert bucket.take(150, 0.1) == pytest.approx(0.1)  # 100 bytes of debt at 1000 B/s
    assert bucket.wait(0.15) == pytest.approx(0.05)
    assert bucket.wait(0.2) == 0.0
    assert bucket.wait(10.0) == 0.0 and bucket.tokens == 100.0  # refill capped at the burst
    bucket.set_rate(2000.0)
    assert bucket.take(int(bucket.tokens) + 2000, 10.0) == pytest.approx(1.0)


async def _server(**kw: object) -> AnyTLSServer:
    """The one place this file builds a server (loopback destinations are allowed)."""
    return await serve(ServerConfig(**kw), "127.0.0.1", 0)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _client(server: AnyTLSServer, password: str) -> AsyncIterator[Client]:
    port = server.sockets[0].getsockname()[1]
    client = Client(ClientConfig("127.0.0.1", port, password, insecure=True))
    try:
        yield client
    finally:
        await client.close()


async def _download(client: Client, port: int, size: int) -> float:
    """Seconds to read ``size`` bytes from the source server through ``client``."""
    reader, writer = await client.open_connection("127.0.0.1", port)
    start = time.monotonic()
    got = await reader.readexactly(size)
    elapsed = time.monotonic() - start
    writer.close()
    assert len(got) == size
    return elapsed


def _mbps(nbytes: int, seconds: float) -> float:
    return nbytes * 8 / seconds / 1e6


@async_test(timeout=30)
async def test_download_limit_20_mbps() -> None:
    server = await _server(users={"alice": "pw"}, speed_limit=20)
    try:
        async with tcp_source_server(SIZE) as source, _client(server, "pw") as client:
            rate = _mbps(SIZE, await _download(client, source.port, SIZE))
    finally:
        await server.close()
    assert 18 <= rate <= 22, f"{rate:.1f} Mbit/s"


@async_test(timeout=30)
async def test_upload_limit_20_mbps_from_a_per_user_setting() -> None:
    received = 0
    done = asyncio.Event()
    last_byte = 0.0

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received, last_byte
        while data := await reader.read(65536):
            received += len(data)
            if received >= SIZE:
                last_byte = time.monotonic()
                done.set()
        writer.close()

    sink_server = await asyncio.start_server(sink, "127.0.0.1", 0)
    sink_port = sink_server.sockets[0].getsockname()[1]
    # bob has no limit of his own: the server-wide 100 does not slow alice's own 20.
    server = await _server(
        users={"alice": "pw", "bob": "b"},
        speed_limit=100,
        limits={"alice": UserPolicy(speed_limit=20)},
    )
    try:
        async with _client(server, "pw") as client:
            _, writer = await client.open_connection("127.0.0.1", sink_port)
            start = time.monotonic()
            chunk = bytes(256 * 1024)
            for _ in range(SIZE // len(chunk)):
                writer.write(chunk)
                await writer.drain()
            await asyncio.wait_for(done.wait(), 20)
            writer.close()
    finally:
        await server.close()
        sink_server.close()
    rate = _mbps(SIZE, last_byte - start)
    assert 18 <= rate <= 22, f"{rate:.1f} Mbit/s"


@async_test(timeout=30)
async def test_limit_is_shared_by_all_sessions_of_a_user() -> None:
    server = await _server(users={"alice": "pw"}, limits={"alice": UserPolicy(speed_limit=20)})
    half = 2 * MiB
    try:
        async with (
            tcp_source_server(half) as source,
            _client(server, "pw") as one,
            _client(server, "pw") as two,
        ):
            start = time.monotonic()
            await asyncio.gather(
                _download(one, source.port, half), _download(two, source.port, half)
            )
            elapsed = time.monotonic() - start
            assert len(server.stats.users["alice"].sessions) == 2
    finally:
        await server.close()
    rate = _mbps(2 * half, elapsed)
    assert 17 <= rate <= 23, f"{rate:.1f} Mbit/s over two sessions"


@async_test(timeout=30)
async def test_a_limit_set_later_applies_to_open_sessions() -> None:
    server = await _server(users={"alice": "pw"})
    size = 4 * MiB
    try:
        async with tcp_source_server(size) as source, _client(server, "pw") as client:
            await _download(client, source.port, 1000)  # a session, open before the limit
            (conn,) = server.connections
            assert conn.throttle is None
            server.update(dataclasses.replace(server.config, speed_limit=20))
            assert conn.throttle is not None and server.limiter.users["alice"].sessions == 1
            rate = _mbps(size, await _download(client, source.port, size))
            assert len(server.connections) == 1  # the same session
    finally:
        await server.close()
    assert 17 <= rate <= 22, f"{rate:.1f} Mbit/s"
    assert not server.limiter.users  # released when the session ended


class _Amplifier(asyncio.DatagramProtocol):
    """Answers each datagram with ``copies`` datagrams of 1000 bytes."""

    def __init__(self, copies: int) -> None:
        self.copies = copies
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        for _ in range(self.copies):
            self.transport.sendto(bytes(1000), addr)


def _relay(server: AnyTLSServer) -> UotServerRelay | None:
    for conn in server.connections:
        for stream in conn.streams.values():
            protocol = stream.get_protocol()
            if isinstance(protocol, UotServerRelay):
                return protocol
    return None


@async_test(timeout=30)
async def test_udp_replies_over_the_limit_are_dropped_not_queued() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Amplifier(20), local_addr=("127.0.0.1", 0)
    )
    target = transport.get_extra_info("sockname")[:2]
    server = await _server(users={"alice": "pw"}, speed_limit=4)  # 500 kB/s
    received = 0
    try:
        async with _client(server, "pw") as client:
            assoc = await open_udp(client)

            async def count() -> None:
                nonlocal received
                while True:
                    data, _ = await assoc.recvfrom()
                    received += len(data)

            counter = asyncio.create_task(count())
            start = time.monotonic()
            for _ in range(150):  # 20 kB of replies every 10 ms: 2 MB/s offered for 1.5 s
                assoc.sendto(b"go", target)
                await asyncio.sleep(0.01)  # pacing the load, not waiting for a state
            relay = _relay(server)
            assert relay is not None
            await wait_until(lambda: relay.datagrams_in + relay.datagrams_dropped >= 2900, 5)
            elapsed = time.monotonic() - start
            counter.cancel()
            assoc.close()
    finally:
        await server.close()
        transport.close()
    assert relay.datagrams_dropped > 1000  # the excess is dropped at once, not queued
    # What got through kept to the limit (plus the bucket's quarter second), and used it.
    assert 250_000 * elapsed < received <= 500_000 * elapsed + 150_000, (received, elapsed)


@async_test(timeout=30)
async def test_no_limit_means_no_throttle_object() -> None:
    server = await _server(users={"alice": "pw"})
    try:
        assert not server.limiter.active
        async with tcp_source_server(SIZE) as source, _client(server, "pw") as client:
            rate = _mbps(SIZE, await _download(client, source.port, SIZE))
            (conn,) = server.connections
            assert conn.throttle is None
    finally:
        await server.close()
    assert rate > 40, f"{rate:.1f} Mbit/s without a limit"


@async_test(timeout=20)
async def test_device_limit_refuses_the_next_ip(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "anytls.server")
    server = await _server(users={"alice": "pw"}, limits={"alice": UserPolicy(device_limit=1)})
    port = server.sockets[0].getsockname()[1]
    try:
        first = await raw_session(port, "127.0.0.2", "pw")
        await wait_until(lambda: "alice" in server.stats.online())
        second_same_ip = await raw_session(port, "127.0.0.2", "pw")
        await wait_until(lambda: len(server.stats.users["alice"].sessions) == 2)
        assert len(server.stats.users["alice"].sessions) == 2  # same device: allowed
        third = await raw_session(port, "127.0.0.3", "pw")
        assert await asyncio.wait_for(third[0].read(), 5) == b""  # closed, nothing sent
        assert "device_limit 1" in caplog.text and "127.0.0.3" in caplog.text
        assert server.stats.online() == {"alice": ["127.0.0.2"]}
        for _, writer in (first, second_same_ip, third):
            writer.close()
        # Once the first device has gone, another may come.
        server.kick(["alice"])
        await wait_until(lambda: not server.limiter.users)
        fourth = await raw_session(port, "127.0.0.3", "pw")
        await wait_until(lambda: server.stats.online().get("alice") == ["127.0.0.3"])
        assert server.stats.online() == {"alice": ["127.0.0.3"]}
        fourth[1].close()
    finally:
        await server.close()


def test_speed_limit_units() -> None:
    assert MBPS * 8 == 1_000_000
