"""Prove the harness against sing-box:sing-box (anytls server + anytls client with a mixed
inbound). If these fail, the helpers (or the environment) are broken, not src/anytls."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path

import pytest

from tests.helpers.aio import async_test
from tests.helpers.echo import (
    echo_roundtrip,
    pattern,
    read_all,
    sha256_hex,
    tcp_echo_server,
    tcp_source_server,
    udp_echo_server,
)
from tests.helpers.httpd import HELLO, http_server
from tests.helpers.net import free_port, free_port_tcp_udp
from tests.helpers.proxyclient import open_http_connect, open_socks5
from tests.helpers.singbox import (
    SingBox,
    SingBoxError,
    anytls_client_config,
    anytls_server_config,
    singbox_bin,
)
from tests.helpers.socks5_udp import socks5_udp_associate
from tests.helpers.tls_recorder import TLSRecordRecorder, plaintext_len_tls13

PASSWORD = "selftest-pw"
CUSTOM_SCHEME = ["stop=3", "0=10-10", "1=200-300", "2=300-400"]
MIB = 1 << 20


@contextlib.asynccontextmanager
async def singbox_pair(
    tmp_path: Path, cert_pair: tuple[Path, Path], padding_scheme: list[str] | None = None
):
    cert, key = cert_pair
    server_port = free_port()
    mixed_port = free_port_tcp_udp()
    server_cfg = anytls_server_config(
        server_port, [("u1", PASSWORD)], cert, key, padding_scheme=padding_scheme
    )
    client_cfg = anytls_client_config(mixed_port, server_port, PASSWORD)
    async with (
        SingBox(server_cfg, tmp_path / "server", name="server") as server,
        SingBox(client_cfg, tmp_path / "client", name="client") as client,
    ):
        yield server, client, mixed_port


@pytest.mark.parametrize("scheme", [None, CUSTOM_SCHEME], ids=["default-padding", "custom"])
@async_test
async def test_socks5_tcp_1mib_echo(
    tmp_path: Path, cert_pair: tuple[Path, Path], scheme: list[str] | None
) -> None:
    data = pattern(MIB)
    async with (
        tcp_echo_server() as (eh, ep),
        singbox_pair(tmp_path, cert_pair, scheme) as (server, client, mixed),
    ):
        reader, writer = await open_socks5("127.0.0.1", mixed, eh, ep)
        try:
            # AnyTLS has no half-close (FIN ends both directions), so no EOF here.
            got = await echo_roundtrip(reader, writer, data, half_close=False)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        assert len(got) == len(data)
        assert sha256_hex(got) == sha256_hex(data)
        # Domain destination through the anytls server's direct outbound.
        reader, writer = await open_socks5("127.0.0.1", mixed, "localhost", ep, rdns=True)
        try:
            got = await echo_roundtrip(reader, writer, b"via-localhost", half_close=False)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        assert got == b"via-localhost"
        await server.wait_log(r"inbound connection to localhost:")
        if scheme is not None:
            # The server pushed its scheme: the client logs the md5 of "\n".join(scheme).
            md5 = hashlib.md5("\n".join(scheme).encode()).hexdigest()
            await client.wait_log(rf"Update padding succeed.*{md5}")
        else:
            assert "Update padding" not in client.log_text()


@async_test
async def test_socks5_source_download(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with (
        tcp_source_server(MIB) as src,
        singbox_pair(tmp_path, cert_pair) as (_s, _c, mixed),
    ):
        reader, writer = await open_socks5("127.0.0.1", mixed, src.host, src.port)
        try:
            got = await read_all(reader)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        assert sha256_hex(got) == src.sha256


async def _curl(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "15",
        "--noproxy",
        "",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    try:
        out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"curl {args} failed rc={proc.returncode}: {err.decode()}"
    return out


@async_test
async def test_curl_socks5h_and_http_proxy(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    with http_server() as web:
        async with singbox_pair(tmp_path, cert_pair) as (server, _c, mixed):
            proxy = f"127.0.0.1:{mixed}"
            for host in ("localhost", "127.0.0.1"):
                out = await _curl("--socks5-hostname", proxy, f"http://{host}:{web.port}/hello")
                assert out == HELLO
                out = await _curl("-x", f"http://{proxy}", f"http://{host}:{web.port}/hello")
                assert out == HELLO
            out = await _curl(
                "--socks5-hostname", proxy, f"http://localhost:{web.port}/bytes/{MIB}"
            )
            assert sha256_hex(out) == sha256_hex(pattern(MIB))
            # HTTP CONNECT tunnel by hand to the same origin.
            reader, writer = await open_http_connect("127.0.0.1", mixed, "localhost", web.port)
            try:
                writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                resp = await read_all(reader)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            assert resp.startswith(b"HTTP/1.") and resp.endswith(HELLO)
        assert len(web.requests) == 6
        assert "inbound connection to localhost:" in server.log_text()


@pytest.mark.parametrize("udp_host", ["127.0.0.1", "::1"])
@async_test
async def test_socks5_udp_associate_echo(
    tmp_path: Path, cert_pair: tuple[Path, Path], udp_host: str
) -> None:
    async with (
        udp_echo_server(udp_host) as (uh, up),
        singbox_pair(tmp_path, cert_pair) as (_s, client, mixed),
        socks5_udp_associate("127.0.0.1", mixed) as assoc,
    ):
        payloads = [b"ping", b"", pattern(1200), pattern(8000)]
        for p in payloads:
            # UDP may drop on a cold start; retry a few times.
            for _attempt in range(5):
                await assoc.sendto(p, (uh, up))
                try:
                    data, addr = await assoc.recvfrom(timeout=2.0)
                except TimeoutError:
                    continue
                break
            else:
                raise AssertionError(f"no UDP echo for {len(p)}-byte datagram\n{client.log_text()}")
            assert data == p
            assert addr[1] == up
            assert addr[0] in (uh, f"::ffff:{uh}")


@async_test(timeout=30)
async def test_singbox_bad_config_fails_fast(tmp_path: Path) -> None:
    assert os.access(singbox_bin(), os.X_OK)
    bad = {"outbounds": [{"type": "anytls", "server": "127.0.0.1", "server_port": 1}]}
    with pytest.raises(SingBoxError, match="check failed"):
        async with SingBox(bad, tmp_path):
            pass


@async_test(timeout=30)
async def test_singbox_port_in_use_reports_log(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    async with tcp_echo_server() as (_h, busy):
        cfg = anytls_server_config(busy, [("u", "p")], *cert_pair)
        sb = SingBox(cfg, tmp_path)
        with pytest.raises(SingBoxError, match="address already in use"):
            await sb.start()
        assert sb.returncode is not None


def test_singbox_sync_context_manager(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    port = free_port()
    with SingBox(anytls_server_config(port, [("u", "p")], *cert_pair), tmp_path) as sb:
        assert sb.returncode is None
        pid = sb.pid
    assert sb.returncode is not None
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("scheme", [None, CUSTOM_SCHEME], ids=["default-padding", "custom"])
@async_test
async def test_padding_on_the_wire_singbox_client(
    tmp_path: Path, cert_pair: tuple[Path, Path], scheme: list[str] | None
) -> None:
    """TLSRecordRecorder between sing-box client and server: Go writes one TLS record per
    padded write, so §5 sizes are visible as TLS 1.3 plaintext lengths."""
    cert, key = cert_pair
    server_port = free_port()
    mixed_port = free_port_tcp_udp()
    server_cfg = anytls_server_config(
        server_port, [("u1", PASSWORD)], cert, key, padding_scheme=scheme
    )
    async with (
        tcp_echo_server() as (eh, ep),
        SingBox(server_cfg, tmp_path / "server", name="server"),
        TLSRecordRecorder("127.0.0.1", server_port) as rec,
        SingBox(
            anytls_client_config(mixed_port, rec.port, PASSWORD), tmp_path / "client", name="client"
        ),
    ):
        reader, writer = await open_socks5("127.0.0.1", mixed_port, eh, ep)
        try:
            got = await echo_roundtrip(reader, writer, pattern(5000), half_close=False)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        assert got == pattern(5000)
    # One TLS connection (one session); the readiness probes never touch the recorder.
    assert len(rec.connections) == 1
    conn = rec.connections[0]
    assert conn.client_records[0].content_type == 22
    app = [plaintext_len_tls13(n) for n in conn.client_app_data()]
    # Go picks a SHA-256 TLS 1.3 suite: client Finished = 4 + 32 bytes.
    assert app[0] == 36
    # Packet 0 = auth: sha256(password) 32 + u16 + padding0 30. A fresh client always
    # starts with the default scheme ("0=30-30"); the server's push only arrives later.
    assert app[1] == 32 + 2 + 30
    # Packet 1 (Settings + SYN + PSH(addr) + Waste): "1=100-400" (both schemes agree here
    # loosely: custom "1=200-300" only applies once the push has been received).
    assert 100 <= app[2] < 400
    # Packet 2 = the 5000-byte write + 7-byte PSH header, split per line 2. With a custom
    # server scheme it races with the push (cmdUpdatePaddingScheme): once received, Go
    # swaps the scheme for the live session too ("2=300-400", stop=3 → rest unshaped).
    if scheme is not None and 300 <= app[3] < 400:
        assert app[3] + app[4] == 5007
    else:
        first = app[3:8]
        assert 400 <= first[0] < 500 and all(500 <= n < 1000 for n in first[1:])
        assert sum(first) + app[8] == 5007
