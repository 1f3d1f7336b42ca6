"""Client-side helpers to open TCP streams through a local proxy (SOCKS5 / HTTP CONNECT).

* :func:`open_socks5` uses python-socks (the independent reference implementation);
* :func:`open_socks5_raw` uses the hand-written handshake from :mod:`tests.helpers.socks5_udp`
  (lets a test see the raw reply code / BND address);
* :func:`open_http_connect` issues an HTTP/1.1 CONNECT by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from .socks5_udp import socks5_handshake

__all__ = ["ProxyHTTPError", "open_http_connect", "open_socks5", "open_socks5_raw"]


class ProxyHTTPError(Exception):
    def __init__(self, status: int, head: bytes) -> None:
        super().__init__(f"HTTP CONNECT failed with status {status}: {head[:200]!r}")
        self.status = status
        self.head = head


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_socks5(
    proxy_host: str,
    proxy_port: int,
    dest_host: str,
    dest_port: int,
    *,
    rdns: bool = True,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """CONNECT via SOCKS5 using python-socks; ``rdns=True`` sends domain names unresolved."""
    from python_socks import ProxyType
    from python_socks.async_.asyncio import Proxy

    proxy = Proxy.create(
        proxy_type=ProxyType.SOCKS5,
        host=proxy_host,
        port=proxy_port,
        username=username,
        password=password,
        rdns=rdns,
    )
    sock = await proxy.connect(dest_host=dest_host, dest_port=dest_port, timeout=timeout)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    _nodelay(writer)
    return reader, writer


async def open_socks5_raw(
    proxy_host: str,
    proxy_port: int,
    dest_host: str,
    dest_port: int,
    *,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, tuple[str, int]]:
    """CONNECT via the hand-written SOCKS5 client; returns (reader, writer, bnd_addr).

    Raises :class:`tests.helpers.socks5_udp.Socks5Error` (``.reply`` = REP code) on failure.
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
        try:
            bnd = await socks5_handshake(
                reader,
                writer,
                1,
                (dest_host, dest_port),
                username=username,
                password=password,
            )
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            raise
    _nodelay(writer)
    return reader, writer, bnd


async def open_http_connect(
    proxy_host: str,
    proxy_port: int,
    dest_host: str,
    dest_port: int,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Tunnel via ``CONNECT host:port HTTP/1.1``; raises :class:`ProxyHTTPError` on non-2xx."""
    authority = f"[{dest_host}]:{dest_port}" if ":" in dest_host else f"{dest_host}:{dest_port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(proxy_host, proxy_port)
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if not 200 <= status < 300:
                raise ProxyHTTPError(status, head)
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            raise
    _nodelay(writer)
    return reader, writer
