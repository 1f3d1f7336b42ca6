"""Back-pressure towards a slow destination: the server's relay (``SocketSide``) pauses the
stream when the destination stops reading, the session stops reading from the client, the
client's writes stall with a bounded amount in flight, and every byte arrives once the
destination reads again."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

from anytls.aio import relay
from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import pattern

PASSWORD = "relay-pw"
TOTAL = 64 << 20
STREAM_BUFFER = 64 << 10


@async_test(timeout=60)
async def test_slow_destination_pauses_the_stream_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = {"pause": 0, "resume": 0}
    pause, resume = relay.SocketSide.pause_writing, relay.SocketSide.resume_writing

    def counted_pause(self: relay.SocketSide) -> None:
        calls["pause"] += 1
        pause(self)

    def counted_resume(self: relay.SocketSide) -> None:
        calls["resume"] += 1
        resume(self)

    monkeypatch.setattr(relay.SocketSide, "pause_writing", counted_pause)
    monkeypatch.setattr(relay.SocketSide, "resume_writing", counted_resume)

    may_read = asyncio.Event()
    digest = hashlib.sha256()
    received = 0
    done = asyncio.Event()

    async def slow_destination(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await may_read.wait()
        while data := await reader.read(1 << 16):
            digest.update(data)
            received += len(data)
            if received >= TOTAL:
                break
        done.set()
        writer.close()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.bind(("127.0.0.1", 0))
    destination = await asyncio.start_server(slow_destination, sock=sock)
    dest_port = sock.getsockname()[1]
    config = ServerConfig(users={"u": PASSWORD}, stream_buffer=STREAM_BUFFER)
    server = await serve(config, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True))
    payload = pattern(TOTAL)
    sent = 0
    try:
        _reader, writer = await client.open_connection("127.0.0.1", dest_port)

        async def send() -> None:
            nonlocal sent
            view = memoryview(payload)
            for start in range(0, TOTAL, 1 << 16):
                writer.write(view[start : start + (1 << 16)])
                sent = start + (1 << 16)
                await writer.drain()

        sender = asyncio.create_task(send())
        # The destination reads nothing: the relay must pause the stream ...
        await wait_until(lambda: calls["pause"] > 0, timeout=10)
        assert calls["pause"] > 0
        # ... and the client's writes stall well short of the whole payload.
        stalled_at = sent
        await wait_until(lambda: sent > stalled_at + (4 << 20), timeout=0.5)
        assert not sender.done()
        assert sent < TOTAL // 2, f"{sent} bytes accepted while the destination read nothing"
        may_read.set()
        await asyncio.wait_for(done.wait(), 30)
        await sender
        assert calls["resume"] > 0
        assert received == TOTAL
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
        writer.close()
    finally:
        await client.close()
        await server.close()
        destination.close()
