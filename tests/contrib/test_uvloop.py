"""The integrations on uvloop (the CLI's loop, and common in web apps): TLS inside the
stream uses asyncio's TLS protocol object, which works on any loop (``loop.start_tls``
would refuse a non-socket transport on uvloop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import httpx
import uvloop

from anytls.contrib.aiohttp import AnyTLSConnector
from anytls.contrib.httpx import AnyTLSTransport
from tests.contrib.tunnels import anytls_server
from tests.helpers.aio import run_async
from tests.helpers.https_server import https_server, make_ca


def test_httpx_and_aiohttp_on_uvloop(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    pki = make_ca(tmp_path / "pki")

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        async with https_server(pki) as web, anytls_server("ours", tmp_path, cert_pair) as link:
            url = f"https://localhost:{web.port}/bytes/2000000"
            transport = AnyTLSTransport(link, verify=pki.client_context(), http2=True)
            async with httpx.AsyncClient(transport=transport) as http:
                response = await http.get(url)
                assert response.http_version == "HTTP/2"
                assert len(response.content) == 2_000_000
            connector = AnyTLSConnector(link, ssl=pki.client_context())
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(url) as reply,
            ):
                assert len(await reply.read()) == 2_000_000

    run_async(main, 60, loop_factory=uvloop.new_event_loop)
