"""Pooling, SYNACK, heartbeats and v1 negotiation against the real sing-box."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from anytls.errors import StreamOpenError
from tests.helpers.aio import wait_until
from tests.helpers.echo import refused_port, tcp_echo_server
from tests.helpers.net import free_port, free_port_tcp_udp
from tests.helpers.proxyclient import open_socks5
from tests.helpers.singbox import SingBox, anytls_client_config, anytls_server_config

PASSWORD = "pool-interop"


async def our_server(cert_pair: tuple[Path, Path], **kwargs: object) -> tuple[AnyTLSServer, int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_pair)
    config = ServerConfig(users={"sb": PASSWORD}, **{"allow_private": True, **kwargs})  # type: ignore[arg-type]
    server = await serve(config, "127.0.0.1", 0, ssl_context=ctx)
    return server, server.sockets[0].getsockname()[1]


async def socks_ping(port: int, echo: tuple[str, int], data: bytes = b"ping") -> None:
    reader, writer = await open_socks5("127.0.0.1", port, echo[0], echo[1])
    writer.write(data)
    assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("server_version", [2, 1])
def test_singbox_client_pools_against_our_server(
    tmp_path: Path, cert_pair: tuple[Path, Path], server_version: int
) -> None:
    async def main() -> None:
        server, port = await our_server(cert_pair, version=server_version)
        mixed = free_port_tcp_udp()
        config = anytls_client_config(mixed, port, PASSWORD, log_level="warn")
        async with tcp_echo_server() as echo, SingBox(config, tmp_path) as sb:
            for _ in range(10):
                await socks_ping(mixed, echo)
                # sing-box puts the session back in its pool before it sends the FIN
                await wait_until(lambda: server.open_streams == 0)
            # sequential streams ride one session (sing-box reuses the newest idle one)
            assert server.sessions_accepted == 1
            # concurrent streams: sing-box opens a session per active stream
            await asyncio.gather(*(socks_ping(mixed, echo) for _ in range(5)))
            assert 5 <= server.sessions_accepted <= 6
            # v2: every reused-session stream was acknowledged in time, so sing-box's
            # 3 s watchdog never tore a session down
            for conn in server.connections:
                assert conn.core.peer_version == server_version
            assert "synack" not in sb.log_text().lower()
        await server.close()

    asyncio.run(main())


def _singbox_server(tmp_path: Path, cert_pair: tuple[Path, Path]) -> tuple[SingBox, int]:
    port = free_port()
    config = anytls_server_config(port, [("u", PASSWORD)], *cert_pair, log_level="warn")
    return SingBox(config, tmp_path), port


def test_our_client_pools_against_singbox_server(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    async def main() -> None:
        sb, port = _singbox_server(tmp_path, cert_pair)
        async with tcp_echo_server() as echo, sb:
            config = ClientConfig(
                "127.0.0.1", port, PASSWORD, insecure=True, heartbeat_interval=0.2
            )
            async with Client(config) as client:
                for _ in range(10):
                    reader, writer = await client.open_connection(*echo)
                    writer.write(b"x")
                    assert await reader.readexactly(1) == b"x"
                    writer.close()
                    await asyncio.sleep(0)
                assert client.sessions_opened == 1
                (conn,) = client.sessions.values()
                assert conn.core.peer_version == 2
                # a refused destination on a reused session: sing-box's error SYNACK
                with pytest.raises(StreamOpenError, match="refused"):
                    await client.open_connection("127.0.0.1", refused_port())
                assert client.sessions_opened == 1
                # sing-box answers our heartbeats, the idle session stays up
                await wait_until(lambda: conn.heartbeats_answered >= 2, 5)
                assert conn.heartbeats_answered >= 2
                assert not conn.is_closed

    asyncio.run(main())


def test_our_client_burst_shares_sessions_on_singbox_server(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    """40 streams at once with --max-handshakes 4: 4 sessions carry 10 streams each, and
    sing-box keeps every stream's bytes apart (distinct payloads, echoed both ways)."""

    async def main() -> None:
        sb, port = _singbox_server(tmp_path, cert_pair)
        async with tcp_echo_server() as echo, sb:
            config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, max_handshakes=4)
            async with Client(config) as client:
                pairs = await asyncio.gather(*(client.open_connection(*echo) for _ in range(40)))
                assert client.sessions_opened == 4
                assert sorted(len(c.streams) for c in client.sessions.values()) == [10] * 4
                payloads = [bytes([n]) * (1000 + 997 * n) for n in range(40)]
                for (_, writer), payload in zip(pairs, payloads, strict=True):
                    writer.write(payload)
                for (reader, writer), payload in zip(pairs, payloads, strict=True):
                    got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
                    assert got == payload
                    writer.close()

    asyncio.run(main())


def test_our_v1_client_against_singbox_server(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async def main() -> None:
        sb, port = _singbox_server(tmp_path, cert_pair)
        async with tcp_echo_server() as echo, sb:
            config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, version=1)
            async with Client(config) as client:
                started = time.monotonic()
                for _ in range(3):
                    reader, writer = await client.open_connection(*echo)
                    writer.write(b"v1")
                    assert await reader.readexactly(2) == b"v1"
                    writer.close()
                    await asyncio.sleep(0)
                (conn,) = client.sessions.values()
                # sing-box sent no ServerSettings to a v1 client
                assert conn.core.peer_version == 0
                assert time.monotonic() - started < 5

    asyncio.run(main())
