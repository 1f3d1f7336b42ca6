"""aiohttp through AnyTLS with no local port: ``AnyTLSConnector`` against a real HTTPS server
(hypercorn over http/1.1, certificate from a private CA) via our server and sing-box."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest

from anytls import Client
from anytls.contrib._common import config_from_uri
from anytls.contrib.aiohttp import AnyTLSConnector
from tests.contrib.tunnels import KINDS, anytls_server
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import blackhole, refused_port
from tests.helpers.httpd import HELLO, http_server
from tests.helpers.https_server import body_of, https_server, make_ca


def open_streams(client: Client) -> int:
    return sum(len(c.streams) for c in client.sessions.values())


@pytest.mark.parametrize("kind", KINDS)
@async_test
async def test_https_over_anytls(kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    pki = make_ca(tmp_path / "pki")
    async with https_server(pki) as web, anytls_server(kind, tmp_path, cert_pair) as link:
        base = f"https://localhost:{web.port}"
        connector = AnyTLSConnector(link, ssl=pki.client_context())
        async with aiohttp.ClientSession(base, connector=connector) as http:
            for _ in range(3):
                async with http.get("/info") as response:
                    assert response.status == 200
                    assert (await response.json())["http_version"] == "1.1"
            upload = body_of(1 << 20)
            async with http.post("/info", data=upload) as response:
                assert (await response.json())["sha256"] == hashlib.sha256(upload).hexdigest()
            async with http.get("/bytes/3000000") as response:
                body = await response.read()
                assert hashlib.sha256(body).hexdigest() == response.headers["x-sha256"]
            # keep-alive: aiohttp reused one connection, i.e. one AnyTLS stream
            assert open_streams(connector.client) == 1
            # an IP address: no SNI, the certificate's IP entry is checked
            async with http.get(f"https://127.0.0.1:{web.port}/info") as response:
                assert (await response.json())["http_version"] == "1.1"
            # several at once: several streams, all answered
            results = await asyncio.gather(*(http.get("/info") for _ in range(4)))
            for response in results:
                assert (await response.json())["http_version"] == "1.1"
                response.release()
        assert [v for v, _, _ in web.requests] == ["1.1"] * 10
        assert not connector.client.sessions  # closed with the aiohttp session


@async_test
async def test_shared_client_timeouts_and_errors(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    pki = make_ca(tmp_path / "pki")
    async with https_server(pki) as web, anytls_server("ours", tmp_path, cert_pair) as link:
        base = f"https://localhost:{web.port}"
        async with Client(config_from_uri(link)) as client:
            connector = AnyTLSConnector(client, ssl=pki.client_context())
            async with aiohttp.ClientSession(base, connector=connector) as http:
                timeout = aiohttp.ClientTimeout(sock_read=0.3)
                with pytest.raises(asyncio.TimeoutError):
                    async with http.get("/slow", timeout=timeout) as response:
                        await response.read()
                await wait_until(lambda: open_streams(client) == 0)
                assert open_streams(client) == 0

                # the destination's certificate is verified: without the CA it fails
                strict = AnyTLSConnector(client)
                async with aiohttp.ClientSession(base, connector=strict) as other:
                    with pytest.raises(aiohttp.ClientConnectorCertificateError):
                        async with other.get("/info"):
                            pass
                # ... unless verification is turned off for the request
                async with http.get("/info", ssl=False) as response:
                    assert response.status == 200
                # a pinned certificate (aiohttp.Fingerprint) that does not match
                with pytest.raises(aiohttp.ServerFingerprintMismatch):
                    async with http.get("/info", ssl=aiohttp.Fingerprint(bytes(32))):
                        pass

                # sock_connect covers the server's dial: a destination that hangs
                kept_alive = open_streams(client)
                hole = blackhole()
                try:
                    with pytest.raises(aiohttp.ConnectionTimeoutError):
                        async with http.get(
                            f"http://127.0.0.1:{hole.port}/",
                            timeout=aiohttp.ClientTimeout(sock_connect=0.3),
                        ):
                            pass
                finally:
                    hole.close()
                await wait_until(lambda: open_streams(client) == kept_alive)
                assert open_streams(client) == kept_alive  # the timed-out stream is closed

                # the server cannot reach the destination: its reason
                with pytest.raises(aiohttp.ClientConnectorError, match="refused"):
                    async with http.get(f"http://127.0.0.1:{refused_port()}/"):
                        pass
                # plain http:// (no TLS inside the stream)
                with http_server() as plain:
                    async with http.get(f"http://localhost:{plain.port}/hello") as response:
                        assert await response.read() == HELLO
            assert client.sessions  # passed in: still open for its owner
