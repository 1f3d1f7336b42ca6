"""Back-pressure end to end: a reader that stops reading stops the sender, memory stays flat."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import ServerConfig, serve

PASSWORD = "flow"
CHUNK = b"z" * 65536


@contextlib.asynccontextmanager
async def flood_server() -> AsyncIterator[tuple[int, list[int]]]:
    """Each connection is sent data as fast as the socket accepts it; ``sent[0]`` counts."""
    sent = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(CHUNK)
                await writer.drain()
                sent[0] += len(CHUNK)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sent
    finally:
        server.close()


def test_stalled_reader_stops_the_source_and_others_keep_going() -> None:
    async def main() -> None:
        server = await serve(
            ServerConfig(users={"u": PASSWORD}, allow_private=True), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        config = ClientConfig("127.0.0.1", port, PASSWORD, insecure=True)
        async with flood_server() as (flood_port, sent), Client(config) as client:
            reader, writer = await client.open_connection("127.0.0.1", flood_port)
            await reader.readexactly(1 << 20)  # the flood is flowing
            # now nobody reads: wait until the source makes no progress for 0.25 s
            stalled_at = -1
            async with asyncio.timeout(10):
                while sent[0] != stalled_at:
                    stalled_at = sent[0]
                    await asyncio.sleep(0.25)  # the progress check's window
            print(f"flood stalled after {stalled_at / 2**20:.1f} MiB")
            await asyncio.sleep(0.5)  # time passes: the stall is shown to last
            # nothing more is accepted: every buffer on the way is full and reading paused
            assert sent[0] - stalled_at <= len(CHUNK) * 2
            # bounded: socket buffers + transport high-water marks, not the whole flood
            assert stalled_at < 48 * 1024 * 1024
            # another stream (another pooled session, as Go clients do) is unaffected
            r2, w2 = await client.open_connection("127.0.0.1", flood_port)
            await asyncio.wait_for(r2.readexactly(4 << 20), 10)
            w2.close()
            # reading resumes the first flood
            await asyncio.wait_for(reader.readexactly(8 << 20), 10)
            writer.close()
        await server.close()

    asyncio.run(main())
