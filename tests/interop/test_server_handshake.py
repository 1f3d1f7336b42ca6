"""Our server's TLS handshake next to sing-box's anytls inbound (the real binary, same
certificate, same client hello): what OpenSSL lets us match is equal, and ALPN is answered
as an HTTP/1.1 web server would, without breaking sing-box clients with or without ALPN.

What cannot be matched on OpenSSL 3.0 (X25519MLKEM768, a session ticket in the first
flight) is measured and written down in the README ("How our server looks on the wire").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from anytls import ServerConfig, serve
from anytls.aio.tls import server_context
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import tcp_echo_server
from tests.helpers.interop import socks_echo_check
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.singbox import SingBox, anytls_client_config, anytls_server_config
from tests.helpers.tls_hello import client_hello_alpn, first_flight, rejection

PASSWORD = "handshake-pw"


@contextlib.asynccontextmanager
async def our_server(cert: Path, key: Path) -> AsyncIterator[int]:
    """Our server (in-process) with ``cert``; yields its port."""
    server = await serve(
        ServerConfig(users={"u": PASSWORD}), "127.0.0.1", 0, server_context(str(cert), str(key))
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await server.close()


@async_test
async def test_first_flight_matches_singbox(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path / "tls")
    port = free_port()
    config = anytls_server_config(port, [("u", PASSWORD)], cert, key, log_level="warn")
    async with our_server(cert, key) as ours, SingBox(config, tmp_path / "sing-box"):
        mine = await asyncio.to_thread(first_flight, "127.0.0.1", ours)
        theirs = await asyncio.to_thread(first_flight, "127.0.0.1", port)
    # TLS_AES_128_GCM_SHA256 and x25519 for this hello (it offers no ML-KEM share), the
    # same ServerHello extensions ...
    assert (mine.suite, mine.group, mine.extensions) == (
        theirs.suite,
        theirs.group,
        theirs.extensions,
    )
    assert (mine.suite, mine.group) == (0x1301, "x25519")
    # ... and the same records up to the server's Finished: ServerHello, CCS, then
    # EncryptedExtensions, Certificate, CertificateVerify and Finished one record each
    # (CertificateVerify's ECDSA signature varies by a byte or two).
    handshake = 6
    assert [t for t, _ in mine.records[:handshake]] == [t for t, _ in theirs.records[:handshake]]
    assert [t for t, _ in mine.records[:handshake]] == [22, 20, 23, 23, 23, 23]
    for index in (0, 2, 3, 5):
        assert mine.records[index] == theirs.records[index], index
    assert mine.alpn is None and theirs.alpn is None  # this client offered none


@async_test
async def test_alpn_is_answered_like_a_web_server(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path / "tls")
    async with our_server(cert, key) as port:
        for offered, selected in (
            (["h2", "http/1.1"], "http/1.1"),  # a browser: HTTP/1.1, never h2
            (["http/1.1"], "http/1.1"),
            (["h2"], None),  # no overlap: no ALPN, and the handshake goes on
            (None, None),  # our client, sing-box's default
        ):
            flight = await asyncio.to_thread(first_flight, "127.0.0.1", port, offered)
            assert flight.alpn == selected, offered


@async_test
async def test_singbox_clients_with_and_without_alpn(tmp_path: Path) -> None:
    """sing-box's anytls outbound, as exported (its hello's ALPN captured) and with a
    browser's ALPN list configured, carries traffic to our server."""
    cert, key = make_self_signed_cert(tmp_path / "tls")
    hellos: list[bytes] = []

    async def capture(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(5)
        hellos.append(header + await reader.readexactly(int.from_bytes(header[3:5], "big")))
        writer.close()

    capturer = await asyncio.start_server(capture, "127.0.0.1", 0)
    capture_port = capturer.sockets[0].getsockname()[1]
    async with (
        tcp_echo_server() as echo,
        our_server(cert, key) as port,
    ):
        for name, tls in (("default", {}), ("browser-alpn", {"alpn": ["h2", "http/1.1"]})):
            for target in (capture_port, port):
                mixed = free_port()
                config = anytls_client_config(mixed, target, PASSWORD, tls=tls, log_level="warn")
                async with SingBox(config, tmp_path / f"{name}-{target}"):
                    if target == capture_port:
                        seen = len(hellos)
                        attempt = asyncio.create_task(socks_echo_check(mixed, *echo, 1))
                        await wait_until(lambda: len(hellos) > seen, timeout=10)  # noqa: B023
                        attempt.cancel()
                        with contextlib.suppress(BaseException):
                            await attempt
                    else:
                        await socks_echo_check(mixed, *echo, 64 * 1024)
    capturer.close()
    # The outbound as our export writes it offers no ALPN; configured, it offers its list.
    assert [client_hello_alpn(h) for h in hellos[:2]] == [None, ["h2", "http/1.1"]]


@async_test
async def test_failed_authentication_ends_like_singbox(tmp_path: Path) -> None:
    """A client that fails authentication: close_notify, then a reset at once, as sing-box
    does (SO_LINGER 0, then Go's tls.Conn.Close()): no bare close, no wait for the prober."""
    cert, key = make_self_signed_cert(tmp_path / "tls")
    port = free_port()
    config = anytls_server_config(port, [("u", PASSWORD)], cert, key, log_level="warn")
    async with our_server(cert, key) as ours, SingBox(config, tmp_path / "sing-box"):
        # A wrong password hash (and an empty padding), and what a browser would send.
        for probe in (bytes(34), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"):
            mine = await asyncio.to_thread(rejection, "127.0.0.1", ours, probe)
            theirs = await asyncio.to_thread(rejection, "127.0.0.1", port, probe)
            assert (theirs.close_notify, theirs.reset) == (True, True), probe
            assert (mine.close_notify, mine.reset) == (True, True), probe
            assert mine.seconds < 2 and theirs.seconds < 2
