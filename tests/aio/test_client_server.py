"""Ours ↔ ours over real loopback TLS: streams, concurrency, failures, wrong passwords."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os

import pytest

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from anytls.core.padding import PaddingScheme
from anytls.errors import SessionClosedError, StreamOpenError
from tests.helpers.aio import wait_until

PASSWORD = "s3cret"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


class Env:
    def __init__(self, server_padding: PaddingScheme | None = None) -> None:
        self.server_padding = server_padding

    async def __aenter__(self) -> Env:
        self.echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        self.echo_port = self.echo.sockets[0].getsockname()[1]
        config = ServerConfig(
            users={"alice": PASSWORD},
            padding=self.server_padding or PaddingScheme.default(),
            allow_private=True,
        )
        self.server = await serve(config, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.client = Client(ClientConfig("127.0.0.1", self.port, PASSWORD, insecure=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.close()
        self.echo.close()
        await self.echo.wait_closed()


async def _roundtrip(client: Client, port: int, size: int) -> None:
    payload = os.urandom(size)
    reader, writer = await client.open_connection("127.0.0.1", port)

    async def send() -> None:
        for i in range(0, size, 100_000):
            writer.write(payload[i : i + 100_000])
            await writer.drain()

    sender = asyncio.create_task(send())
    got = await reader.readexactly(size)
    await sender
    writer.close()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_echo_8mib() -> None:
    async def main() -> None:
        async with Env() as env:
            await _roundtrip(env.client, env.echo_port, 8 * 1024 * 1024)

    asyncio.run(main())


def test_100_concurrent_streams_and_reuse() -> None:
    async def main() -> None:
        async with Env() as env:
            await asyncio.gather(
                *(_roundtrip(env.client, env.echo_port, 50_000 + i) for i in range(100))
            )
            opened = env.client.sessions_opened
            # sequential streams after that reuse idle sessions
            for _ in range(5):
                await _roundtrip(env.client, env.echo_port, 1000)
                await wait_until(lambda: all(not c.streams for c in env.client.sessions.values()))
            assert env.client.sessions_opened == opened

    asyncio.run(main())


def test_refused_destination_is_reported() -> None:
    async def main() -> None:
        async with Env() as env:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            with pytest.raises(StreamOpenError, match="refused"):
                await env.client.open_connection("127.0.0.1", port)
            # the session survives: next stream works
            await _roundtrip(env.client, env.echo_port, 1000)

    asyncio.run(main())


def test_wrong_password_logged_and_closed(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with Env() as env:
            bad = Client(ClientConfig("127.0.0.1", env.port, "wrong", insecure=True))
            try:
                # The server closes without a word (no hang: that would be TimeoutError),
                # and the library's error says what that most likely means.
                with pytest.raises(
                    SessionClosedError, match="without a word: most likely a wrong password"
                ):
                    async with asyncio.timeout(5):
                        await bad.open_connection("127.0.0.1", env.echo_port)
            finally:
                await bad.close()

    caplog.set_level(logging.INFO, logger="anytls")
    asyncio.run(main())
    assert any(
        "wrong password" in r.getMessage() and "127.0.0.1" in r.getMessage() for r in caplog.records
    )


def test_pushed_padding_scheme_used_by_next_session() -> None:
    custom = PaddingScheme.parse(b"stop=3\n0=10-10\n1=200-300\n2=300-400")

    async def main() -> None:
        async with Env(server_padding=custom) as env:
            await _roundtrip(env.client, env.echo_port, 100)
            assert env.client.padding.md5 == custom.md5
            env.client.config.reuse_sessions = False
            _, writer = await env.client.open_connection("127.0.0.1", env.echo_port)
            conn = next(c for c in env.client.sessions.values() if c.streams)
            assert conn.core.padding.md5 == custom.md5
            writer.close()

    asyncio.run(main())
