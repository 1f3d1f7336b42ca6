"""Loopback networking helpers for tests: free ports and port polling.

``make_self_signed_cert`` lives in :mod:`tests.helpers.certs` (re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from tests.helpers.certs import make_self_signed_cert

__all__ = [
    "free_port",
    "free_port_tcp_udp",
    "make_self_signed_cert",
    "wait_port",
    "wait_port_sync",
]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """Return a port that is currently free on ``host`` (TCP by default).

    There is an inherent race (the port is released before the caller binds it), but
    the kernel hands out ephemeral ports round-robin, so reuse within a test is rare.
    """
    with socket.socket(_family(host), kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_tcp_udp(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """Return a port that is free for both TCP and UDP on ``host`` (for mixed inbounds)."""
    for _ in range(attempts):
        with socket.socket(_family(host), socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(_family(host), socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"could not find a port free for TCP and UDP on {host}")


async def wait_port(
    host: str,
    port: int,
    timeout: float = 10.0,  # noqa: ASYNC109 - an explicit timeout is the API
    interval: float = 0.05,
) -> None:
    """Poll until a TCP connect to (host, port) succeeds; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), timeout=max(0.1, interval * 10)
            )
        except (TimeoutError, OSError) as exc:
            last_exc = exc
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept TCP within {timeout}s: {last_exc!r}")
        await asyncio.sleep(interval)  # connect poll interval


def wait_port_sync(host: str, port: int, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Blocking variant of :func:`wait_port` (for sync tests / threads)."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept TCP within {timeout}s: {last_exc!r}")
        time.sleep(interval)  # connect poll interval
