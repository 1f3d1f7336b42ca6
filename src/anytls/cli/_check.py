"""``anytls-client --check``: connect once, open one stream, print the timings."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ..aio.client import Client, ClientConfig
from ..aio.diagnose import hint
from ..core.address import Address
from ..errors import SessionClosedError, StreamOpenError


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def check(config: ClientConfig, target: Address) -> int:
    """Connect, open one stream to ``target`` and report; 0 on success, 1 on failure."""
    config = replace(config, min_idle_session=0)
    where = str(Address(config.server_host, config.server_port))
    loop = asyncio.get_running_loop()
    print(f"checking {where} (stream to {target})", flush=True)
    client = Client(config)
    try:
        started = loop.time()
        try:
            stream = await client.open_stream(target)
        except SessionClosedError as exc:
            print(f"FAILED: {exc}{hint(exc)}", flush=True)
            return 1
        opened = loop.time()  # the stream went out with the first packet (0-RTT)
        handshake = opened - started
        ssl_object = stream.get_extra_info("ssl_object")
        tls = ""
        if ssl_object is not None:
            tls = f"{ssl_object.version()}, {ssl_object.cipher()[0]}, "
        tls += f"{stream.get_extra_info('fingerprint') or 'openssl'} ClientHello, "
        if config.pin_sha256:
            verified = "certificate pinned"
        elif config.insecure:
            verified = "certificate NOT verified (insecure)"
        else:
            verified = "certificate verified"
        print(f"TLS handshake: {_ms(handshake)} ({tls}{verified})", flush=True)
        try:
            await client.wait_acknowledged(stream)
        except StreamOpenError as exc:
            print(f"FAILED: the server could not open {target}: {exc}{hint(exc)}", flush=True)
            return 1
        except SessionClosedError as exc:
            print(f"FAILED: {exc}{hint(exc)}", flush=True)
            return 1
        version = client.server_version or 1
        if version >= 2:
            print(f"stream open: {_ms(loop.time() - opened)} (server connected to {target})")
        else:
            print("stream open: not confirmed (a v1 server does not acknowledge streams)")
        print(f"server protocol version: {version}")
        print("OK", flush=True)
        stream.close()
        return 0
    finally:
        await client.close()


async def check_until_stopped(config: ClientConfig, target: Address, stop: asyncio.Event) -> None:
    """:func:`check`, or exit 130 when ``stop`` is set first (Ctrl-C); exits 1 on failure."""
    task = asyncio.create_task(check(config, target))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not task.done():  # Ctrl-C
        task.cancel()
        raise SystemExit(130)
    if task.result():
        raise SystemExit(task.result())
