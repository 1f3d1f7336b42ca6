"""Faults: a server killed mid-transfer and restarted, and a network that silently stalls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from anytls.errors import AnyTLSError
from tests.helpers.aio import wait_until
from tests.helpers.echo import tcp_echo_server, tcp_source_server
from tests.helpers.net import free_port
from tests.helpers.ourproc import AnyTLSProcess

PASSWORD = "faults"


def test_server_killed_mid_transfer_then_back(tmp_path: Path) -> None:
    port = free_port()
    args = ["-p", PASSWORD, "--workers", "1"]

    async def main() -> None:
        # More than every buffer on the way holds (under 48 MiB, test_flow_control), so the
        # transfer is still under way when the server dies.
        async with tcp_source_server(64 << 20) as source, tcp_echo_server() as echo:
            config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True)
            async with Client(config) as client:
                server = await AnyTLSProcess.server(port, args, tmp_path, name="first").start()
                reader, _ = await client.open_connection(*source)
                await reader.readexactly(1 << 20)  # the transfer is under way
                assert server.proc is not None
                server.proc.kill()  # no FIN for the streams, no goodbye
                # the local reader learns at once: EOF or an error, never a hang
                async with asyncio.timeout(5):
                    with contextlib.suppress(ConnectionError, AnyTLSError):
                        while await reader.read(1 << 20):
                            pass
                await server.stop()
                assert client.sessions == {}
                # once the server is back, the next request opens a new session and works
                async with AnyTLSProcess.server(port, args, tmp_path, name="second"):
                    r, w = await client.open_connection(*echo)
                    w.write(b"back")
                    assert await r.readexactly(4) == b"back"
                    w.close()
                assert client.sessions_opened == 2

    asyncio.run(main())


@contextlib.asynccontextmanager
async def stalling_relay(target_port: int) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP relay that forwards until ``stall`` is set, then silently drops everything."""
    stall = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not stall.is_set():
                    writer.write(data)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        writers.extend((writer, up_writer))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], stall
    finally:
        for writer in writers:
            writer.transport.abort()
        server.close()


def test_stalled_network_frees_everything_on_both_sides() -> None:
    async def main() -> None:
        config = ServerConfig(
            users={"u": PASSWORD}, allow_private=True, heartbeat_interval=0.3, heartbeat_timeout=0.5
        )
        server = await serve(config, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with tcp_echo_server() as echo, stalling_relay(port) as (relay, stall):
            client = Client(
                ClientConfig(
                    "127.0.0.1",
                    relay,
                    PASSWORD,
                    insecure=True,
                    heartbeat_interval=0.3,
                    heartbeat_timeout=0.5,
                    max_streams_per_session=10,
                )
            )
            pairs = [await client.open_connection(*echo) for _ in range(5)]
            for r, w in pairs:
                w.write(b"x")
                await r.readexactly(1)
            assert echo.stats.active == 5
            stall.set()  # the network goes silent: no FIN, no RST
            await wait_until(
                lambda: not (server.connections or echo.stats.active or client.sessions), 10
            )
            assert not (server.connections or echo.stats.active or client.sessions), (
                f"server {server.connections} echo {echo.stats.active} client {client.sessions}"
                f" {[c.core.peer_version for c in server.connections]}"
            )
            for r, _ in pairs:
                assert r.at_eof() or r.exception() is not None
            await client.close()
        await server.close()

    asyncio.run(main())
