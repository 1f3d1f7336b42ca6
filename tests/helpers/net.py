"""Loopback networking helpers for tests: free ports and port polling.

``make_self_signed_cert`` lives in :mod:`tests.helpers.certs` (re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
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


#: Where :func:`free_port` looks: from here up to the kernel's ephemeral range.
LOWEST_PORT = 10000
_random = random.SystemRandom()  # not the global generator (hypothesis seeds that one)


def _below_ephemeral() -> range:
    """Ports under the kernel's ephemeral range (empty if it cannot be read or leaves little
    room). Outgoing connections and every ``bind(0)`` on the machine take their ports from
    that range, so a port chosen below it is not taken by them between the choice and the
    caller's bind; only another random pick from this helper could take it (1 in ~20,000)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(LOWEST_PORT, low) if low - LOWEST_PORT >= 1000 else range(0)


def _bindable(host: str, port: int, kinds: tuple[int, ...]) -> bool:
    for kind in kinds:
        with socket.socket(_family(host), kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _free(host: str, kinds: tuple[int, ...], attempts: int = 100) -> int | None:
    candidates = _below_ephemeral()
    for _ in range(attempts if candidates else 0):
        port = _random.choice(candidates)
        if _bindable(host, port, kinds):
            return port
    return None


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """Return a port that is currently free on ``host`` (TCP by default).

    The port is released before the caller binds it; it is picked at random below the
    ephemeral range (see :func:`_below_ephemeral`) so that nothing else on the machine
    takes it meanwhile, as connections and ``bind(0)`` of parallel tests and other
    programs could. Falls back to the kernel's choice when that range is unknown.
    """
    port = _free(host, (kind,))
    if port is not None:
        return port
    with socket.socket(_family(host), kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_port_tcp_udp(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """Return a port that is free for both TCP and UDP on ``host`` (for mixed inbounds)."""
    port = _free(host, (socket.SOCK_STREAM, socket.SOCK_DGRAM))
    if port is not None:
        return port
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
