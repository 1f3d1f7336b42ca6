"""Destinations that refuse, reset or never answer: the right SOCKS5/HTTP outcome, and the
other streams of the session carry on untouched (sha-checked). Real SOCKS5/HTTP error
codes need ``wait_for_synack``; the default (0-RTT) path is tested in tests/aio/test_early.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from anytls.inbound.mixed import MixedInbound
from tests.helpers.aio import wait_until
from tests.helpers.echo import blackhole, refused_port, tcp_echo_server
from tests.helpers.proxyclient import open_socks5_raw
from tests.helpers.socks5_udp import Socks5Error

PASSWORD = "dest-faults"


async def reset_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def http_connect_status(port: int, target: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(line.split()[1])


def test_refused_reset_and_stalled_destinations() -> None:
    async def main() -> None:
        server = await serve(
            ServerConfig(users={"u": PASSWORD}, allow_private=True, connect_timeout=1.0),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        config = ClientConfig(
            "127.0.0.1",
            port,
            PASSWORD,
            insecure=True,
            max_streams_per_session=50,
            wait_for_synack=True,
        )
        hole = blackhole()
        resetter = await reset_server()
        async with tcp_echo_server() as echo, Client(config) as client:
            inbound = MixedInbound(client)
            await inbound.start("127.0.0.1", 0)
            mixed = inbound.port
            # a healthy stream on the same session, kept busy throughout
            r, w, _ = await open_socks5_raw("127.0.0.1", mixed, *echo)
            payload = os.urandom(4 << 20)

            async def pump() -> bytes:
                w.write(payload)
                return await r.readexactly(len(payload))

            busy = asyncio.create_task(pump())
            # refused → SOCKS reply 5, HTTP 502
            with pytest.raises(Socks5Error) as refused:
                await open_socks5_raw("127.0.0.1", mixed, "127.0.0.1", refused_port())
            assert refused.value.reply == 5
            assert await http_connect_status(mixed, f"127.0.0.1:{refused_port()}") == 502
            # never answers → SOCKS reply 6 (TTL expired = timeout), HTTP 504
            with pytest.raises(Socks5Error) as stalled:
                await open_socks5_raw("127.0.0.1", mixed, "127.0.0.1", hole.port)
            assert stalled.value.reply == 6
            assert await http_connect_status(mixed, f"127.0.0.1:{hole.port}") == 504
            # accepts then resets → the SOCKS client sees its connection end
            rport = resetter.sockets[0].getsockname()[1]
            r2, w2, _ = await open_socks5_raw("127.0.0.1", mixed, "127.0.0.1", rport)
            w2.write(b"x")
            assert await asyncio.wait_for(r2.read(), 5) == b""
            # the busy stream was never disturbed
            got = await asyncio.wait_for(busy, 20)
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            w.close()
            await inbound.close()
        resetter.close()
        hole.close()
        await server.close()

    asyncio.run(main())


def test_local_client_leaving_before_the_synack_closes_the_stream() -> None:
    async def main() -> None:
        server = await serve(
            ServerConfig(users={"u": PASSWORD}, allow_private=True, connect_timeout=30.0),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, wait_for_synack=True)
        hole = blackhole()
        async with tcp_echo_server() as echo, Client(config) as client:
            inbound = MixedInbound(client)
            await inbound.start("127.0.0.1", 0)
            _, w, _ = await open_socks5_raw("127.0.0.1", inbound.port, *echo)  # pools a session
            w.close()
            await wait_until(lambda: not server.open_streams)  # that stream has ended
            for timeout in (0.3, 0.3):  # SOCKS client gives up while the server is dialling
                with pytest.raises(TimeoutError):
                    await open_socks5_raw(
                        "127.0.0.1", inbound.port, "127.0.0.1", hole.port, timeout=timeout
                    )
            await wait_until(lambda: not server.open_streams and not inbound.handshakes, 2)
            assert server.open_streams == 0  # both abandoned streams were closed (FIN)
            assert not inbound.handshakes
            (conn,) = client.sessions.values()
            assert conn.streams == {}
            await inbound.close()
        hole.close()
        await server.close()

    asyncio.run(main())
