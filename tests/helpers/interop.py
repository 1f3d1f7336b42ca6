"""Small shared steps for the interop / end-to-end tests (echo checks, curl, closing)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from .echo import echo_roundtrip, pattern, sha256_hex
from .proxyclient import open_socks5

__all__ = [
    "CUSTOM_SCHEME",
    "CUSTOM_SCHEME_MD5",
    "DEFAULT_SCHEME_MD5",
    "MIB",
    "aclose",
    "curl",
    "echo_check",
    "expect_closed_without_data",
    "sessions_of",
    "socks_echo_check",
]

MIB = 1 << 20

#: A small custom scheme (lines as sing-box's ``padding_scheme`` array, joined with LF).
CUSTOM_SCHEME = ["stop=3", "0=10-10", "1=200-300", "2=300-400"]
CUSTOM_SCHEME_MD5 = "d299abb59d1c23e042aa5a4d55a576fa"  # md5("\n".join(CUSTOM_SCHEME))
DEFAULT_SCHEME_MD5 = "75cff2ad89aadf5e257059ee571ebe11"  # PROTOCOL.md §5.1


def sessions_of(client: Any) -> list[Any]:
    """The live sessions of an ``anytls.Client`` (a set or a seq-keyed dict), by seq."""
    sessions = client.sessions
    conns = list(sessions.values()) if isinstance(sessions, dict) else list(sessions)
    return sorted(conns, key=lambda c: c.seq)


async def aclose(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait for it, ignoring errors of an already-dead connection."""
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def echo_check(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int
) -> float:
    """Echo ``pattern(size)`` (no half-close), check length and sha256; return seconds."""
    data = pattern(size)
    start = time.monotonic()
    try:
        got = await echo_roundtrip(reader, writer, data, half_close=False)
    finally:
        await aclose(writer)
    elapsed = time.monotonic() - start
    assert len(got) == size
    assert sha256_hex(got) == sha256_hex(data)
    return elapsed


async def socks_echo_check(proxy_port: int, host: str, port: int, size: int, **kw: object) -> float:
    """SOCKS5 CONNECT through ``127.0.0.1:proxy_port`` to an echo server; see echo_check."""
    reader, writer = await open_socks5("127.0.0.1", proxy_port, host, port, **kw)  # type: ignore[arg-type]
    return await echo_check(reader, writer, size)


async def expect_closed_without_data(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    timeout: float = 10.0,  # noqa: ASYNC109
) -> None:
    """Write a probe and assert the connection ends (EOF or reset) with no data back."""
    try:
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionError):
                writer.write(b"probe")
                await writer.drain()
            try:
                got = await reader.read(1 << 16)
            except ConnectionError:
                got = b""
    finally:
        await aclose(writer)
    assert got == b"", f"expected the connection to close, got {got[:100]!r}"


async def curl(*args: str, check: bool = True, timeout: float = 20) -> tuple[int, bytes, str]:  # noqa: ASYNC109
    """Run curl (no proxy environment, silent); return (returncode, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        str(int(timeout)),
        "--noproxy",
        "",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    if check:
        assert proc.returncode == 0, f"curl {args} failed rc={proc.returncode}: {err.decode()}"
    return proc.returncode, out, err.decode(errors="replace")
