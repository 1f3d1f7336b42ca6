"""The traffic stats API (Hysteria 2's shape) over real HTTP and real AnyTLS sessions."""

from __future__ import annotations

import asyncio
import contextlib
import time

from anytls import Client, ClientConfig, open_udp
from anytls.aio.api import StatsApi
from anytls.aio.control import ServerGroup
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from anytls.errors import SessionClosedError
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import tcp_echo_server, udp_echo_server
from tests.helpers.rawclient import API_SECRET, api_request

SECRET = API_SECRET
SIZE = 100_000
OVERHEAD = 16_000
http = api_request


async def _server() -> AnyTLSServer:
    """The one place this file builds a server (loopback destinations are allowed)."""
    return await serve(ServerConfig(users={"alice": "a", "bob": "b"}), "127.0.0.1", 0)


@async_test(timeout=30)
async def test_traffic_online_kick_with_the_secret() -> None:
    server = await _server()
    api = StatsApi(ServerGroup(server), SECRET)
    await api.start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with tcp_echo_server() as echo, udp_echo_server() as udp_echo:
            for secret in (None, "wrong"):
                for method, path in (("GET", "/traffic"), ("GET", "/online"), ("POST", "/kick")):
                    status, _ = await http(api.port, method, path, ["alice"], secret=secret)
                    assert status == 401
            assert await http(api.port, "GET", "/traffic") == (200, {})
            assert await http(api.port, "GET", "/online") == (200, {})

            client = Client(ClientConfig("127.0.0.1", port, "a", insecure=True))
            reader, writer = await client.open_connection(*echo)
            writer.write(b"x" * SIZE)
            assert len(await reader.readexactly(SIZE)) == SIZE
            status, traffic = await http(api.port, "GET", "/traffic")
            assert status == 200 and set(traffic) == {"alice"}
            # tx: what the client sent (upload); rx: what it received, as Hysteria counts.
            assert SIZE < traffic["alice"]["tx"] < SIZE + OVERHEAD
            assert SIZE < traffic["alice"]["rx"] < SIZE + OVERHEAD
            assert await http(api.port, "GET", "/online") == (200, {"alice": 1})

            # clear=1 answers, then starts again from zero.
            status, cleared = await http(api.port, "GET", "/traffic?clear=1")
            assert cleared["alice"]["tx"] >= traffic["alice"]["tx"]
            assert await http(api.port, "GET", "/traffic") == (200, {})
            writer.write(b"y" * 1000)
            assert len(await reader.readexactly(1000)) == 1000
            _, after = await http(api.port, "GET", "/traffic")
            assert 1000 < after["alice"]["tx"] < 1000 + OVERHEAD

            # A kick ends the TCP stream and the UDP association at once.
            assoc = await open_udp(client)
            assoc.sendto(b"ping", udp_echo)
            assert (await assoc.recvfrom())[0] == b"ping"
            started = time.monotonic()
            assert await http(api.port, "POST", "/kick", ["alice", "nobody"]) == (200, {})
            with contextlib.suppress(SessionClosedError):  # it ended with its session
                assert await asyncio.wait_for(reader.read(), 1) == b""
            await wait_until(lambda: assoc.closed, 1)
            assert assoc.closed and time.monotonic() - started < 1
            await wait_until(lambda: not server.stats.online())
            assert await http(api.port, "GET", "/online") == (200, {})
            await client.close()

            # Bad requests.
            assert (await http(api.port, "POST", "/kick", {"alice": 1}))[0] == 400
            assert (await http(api.port, "GET", "/kick"))[0] == 405
            assert (await http(api.port, "GET", "/nothing"))[0] == 404
    finally:
        await api.close()
        await server.close()


@async_test(timeout=20)
async def test_no_secret_means_open_and_bearer_is_accepted() -> None:
    server = await _server()
    open_api = StatsApi(ServerGroup(server), None)
    closed_api = StatsApi(ServerGroup(server), SECRET)
    await open_api.start("127.0.0.1", 0)
    await closed_api.start("127.0.0.1", 0)
    try:
        assert await http(open_api.port, "GET", "/online", secret=None) == (200, {})
        assert await http(closed_api.port, "GET", "/online", secret=f"Bearer {SECRET}") == (
            200,
            {},
        )
    finally:
        await open_api.close()
        await closed_api.close()
        await server.close()
