"""Hand-made clients for server tests: a bare AnyTLS preface from a chosen source address,
and one request to the stats API."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from anytls.core.auth import build_preface

#: The secret the stats API tests run with.
API_SECRET = "api-secret"


async def raw_session(
    port: int, source_ip: str, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection from ``source_ip`` (a loopback address) that sends the auth preface.

    The server closes it without a byte when it refuses the session.
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost", local_addr=(source_ip, 0)
    )
    writer.write(build_preface(password, 0))
    await writer.drain()
    return reader, writer


async def api_request(
    port: int, method: str, path: str, body: Any = None, secret: str | None = API_SECRET
) -> tuple[int, Any]:
    """One request to the stats API on loopback; (status, JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
    if secret is not None:
        head += f"Authorization: {secret}\r\n"
    writer.write(head.encode() + b"\r\n" + data)
    response = await reader.read()
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)
