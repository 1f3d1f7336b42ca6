"""httpx through AnyTLS with no local port: ``AnyTLSTransport`` against a real HTTPS server
(hypercorn, h2 + http/1.1, certificate from a private CA) via our server and sing-box."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from anytls import Client
from anytls.contrib._common import config_from_uri
from anytls.contrib.httpx import AnyTLSTransport
from tests.contrib.tunnels import KINDS, anytls_server
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import blackhole, refused_port
from tests.helpers.httpd import HELLO, http_server
from tests.helpers.https_server import body_of, https_server, make_ca


def open_streams(client: Client) -> int:
    return sum(len(c.streams) for c in client.sessions.values())


@pytest.mark.parametrize("kind", KINDS)
@async_test
async def test_http2_and_http11_over_anytls(
    kind: str, tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    pki = make_ca(tmp_path / "pki")
    async with https_server(pki) as web, anytls_server(kind, tmp_path, cert_pair) as link:
        base = f"https://localhost:{web.port}"
        # HTTP/2 (ALPN h2): concurrent requests share one connection, i.e. one AnyTLS stream
        transport = AnyTLSTransport(link, verify=pki.client_context(), http2=True)
        async with httpx.AsyncClient(transport=transport, base_url=base) as http:
            responses = await asyncio.gather(*(http.get("/info") for _ in range(5)))
            for response in responses:
                assert response.status_code == 200
                assert response.http_version == "HTTP/2"
                assert response.json()["http_version"] == "2"
            upload = body_of(1 << 20)
            response = await http.post("/info", content=upload)
            assert response.json()["sha256"] == hashlib.sha256(upload).hexdigest()
            response = await http.get("/bytes/3000000")
            assert len(response.content) == 3_000_000
            assert hashlib.sha256(response.content).hexdigest() == response.headers["x-sha256"]
            assert transport.client.sessions_opened == 1
        assert [v for v, _, _ in web.requests] == ["2"] * 7
        # the transport made the Client, so closing httpx closed the AnyTLS sessions too
        assert not transport.client.sessions

        # HTTP/1.1 only: keep-alive reuses the stream
        transport = AnyTLSTransport(link, verify=pki.client_context())
        async with httpx.AsyncClient(transport=transport, base_url=base) as http:
            for _ in range(3):
                response = await http.get("/info")
                assert response.http_version == "HTTP/1.1"
                assert response.json()["http_version"] == "1.1"
            response = await http.get("/bytes/1000000")
            assert hashlib.sha256(response.content).hexdigest() == response.headers["x-sha256"]
            assert open_streams(transport.client) == 1  # one kept-alive connection
            # an IP address: no SNI, the certificate's IP entry is checked
            response = await http.get(f"https://127.0.0.1:{web.port}/info")
            assert response.json()["http_version"] == "1.1"


@async_test
async def test_shared_client_timeouts_cancellation_and_errors(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    pki = make_ca(tmp_path / "pki")
    async with (
        https_server(pki, keep_alive_timeout=0.5) as web,
        anytls_server("ours", tmp_path, cert_pair) as link,
    ):
        base = f"https://localhost:{web.port}"
        async with Client(config_from_uri(link)) as client:
            transport = AnyTLSTransport(client, verify=pki.client_context())
            async with httpx.AsyncClient(transport=transport, base_url=base) as http:
                # the web server closes an idle kept-alive connection: the pool notices
                # (its stream ended) and the next request opens a new one
                assert (await http.get("/info")).status_code == 200
                await wait_until(lambda: open_streams(client) == 0, timeout=5)
                assert open_streams(client) == 0
                assert (await http.get("/info")).status_code == 200
                assert len(web.requests) == 2

                # a read timeout: the server holds /slow
                with pytest.raises(httpx.ReadTimeout):
                    await http.get("/slow", timeout=httpx.Timeout(5, read=0.3))
                await wait_until(lambda: open_streams(client) == 0)
                assert open_streams(client) == 0  # the timed-out connection's stream is closed

                # cancellation closes the stream as well
                task = asyncio.create_task(http.get("/slow"))
                await wait_until(lambda: open_streams(client) == 1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await wait_until(lambda: open_streams(client) == 0)
                assert open_streams(client) == 0

                # the destination's certificate is checked (here against the system CAs)
                strict = AnyTLSTransport(client)
                async with httpx.AsyncClient(transport=strict) as other:
                    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                        await other.get(f"{base}/info")

                # the connect timeout covers the server's dial: a destination that hangs
                hole = blackhole()
                try:
                    with pytest.raises(httpx.ConnectTimeout):
                        await http.get(
                            f"http://127.0.0.1:{hole.port}/", timeout=httpx.Timeout(5, connect=0.3)
                        )
                finally:
                    hole.close()
                await wait_until(lambda: open_streams(client) == 0)
                assert open_streams(client) == 0

                # a destination the server cannot reach: the server's reason
                with pytest.raises(httpx.ConnectError, match="refused"):
                    await http.get(f"https://127.0.0.1:{refused_port()}/")

                # plain http:// (no TLS inside the stream) works too
                with http_server() as plain:
                    response = await http.get(f"http://localhost:{plain.port}/hello")
                    assert response.content == HELLO
                    assert plain.requests == [("GET", "/hello", f"localhost:{plain.port}")]
                # and after all those failures the session still serves
                response = await http.get(f"{base}/info")
                assert response.json()["http_version"] == "1.1"
            # the Client was passed in: closing httpx leaves it open for its owner
            assert client.sessions
            _reader, writer = await client.open_connection("localhost", web.port)
            writer.close()


@async_test
async def test_link_errors_and_unix_socket() -> None:
    with pytest.raises(Exception, match="is a socks5:// link, not an AnyTLS one"):
        AnyTLSTransport("socks5://127.0.0.1:1080")
    with pytest.raises(Exception, match="no password"):
        AnyTLSTransport("anytls://127.0.0.1:8443/")
    with pytest.raises(TypeError, match="anytls:// link"):
        AnyTLSTransport(42)  # type: ignore[arg-type]
    transport = AnyTLSTransport("anytls://pw@127.0.0.1:9/?sni=example.com&insecure=1")
    assert transport.client.config.sni == "example.com" and transport.client.config.insecure
    await transport.aclose()


def test_link_parameters_reach_the_config() -> None:
    """``fp`` in a link picks the ClientHello; a link without it keeps the default."""
    assert config_from_uri("anytls://pw@h:1/?fp=firefox").fingerprint == "firefox"
    assert config_from_uri("anytls://pw@h:1/").fingerprint == "chrome"
    assert config_from_uri("anytls://pw@h:1/?sni=s&insecure=1").sni == "s"
