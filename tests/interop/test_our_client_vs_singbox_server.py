"""Our client (the ``anytls.Client`` library and the ``anytls-client`` program) against the
real sing-box 1.14 anytls server, over loopback TLS with a verified self-signed certificate.

sing-box servers are started once per module (one with the default padding scheme, one with
a custom scheme it pushes); every data check is by sha256.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from anytls import AnyTLSError, Client, ClientConfig, StreamOpenError
from anytls.aio.tls import client_context
from tests.helpers.aio import async_test
from tests.helpers.echo import refused_port, tcp_echo_server
from tests.helpers.interop import (
    CUSTOM_SCHEME,
    CUSTOM_SCHEME_MD5,
    DEFAULT_SCHEME_MD5,
    MIB,
    echo_check,
    expect_closed_without_data,
    sessions_of,
    socks_echo_check,
)
from tests.helpers.net import free_port, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import ProxyHTTPError, open_http_connect, open_socks5_raw
from tests.helpers.singbox import SingBox, anytls_server_config
from tests.helpers.socks5_udp import Socks5Error
from tests.helpers.tls_recorder import TLSRecordRecorder, plaintext_len_tls13

PASSWORD = "interop-pw"
PUSH_LOG = "server pushed a new padding scheme"


class SingBoxServer:
    def __init__(self, sb: SingBox, port: int, cert: Path) -> None:
        self.sb = sb
        self.port = port
        self.cert = cert

    def ssl_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts the test certificate."""
        return client_context(ca_file=str(self.cert))

    def client(self, password: str = PASSWORD, port: int | None = None, **kw: object) -> Client:
        host_port = ("127.0.0.1", port or self.port)
        kw.setdefault("ca_file", str(self.cert))
        config = ClientConfig(*host_port, password, sni="localhost", **kw)  # type: ignore[arg-type]
        return Client(config)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


def _singbox_server(
    tmp: Path, certs: tuple[Path, Path], scheme: list[str] | None, name: str
) -> Iterator[SingBoxServer]:
    port = free_port()
    cfg = anytls_server_config(port, [("u1", PASSWORD)], *certs, padding_scheme=scheme)
    with SingBox(cfg, tmp, name=name) as sb:
        yield SingBoxServer(sb, port, certs[0])


@pytest.fixture(scope="module")
def sb_default(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[SingBoxServer]:
    yield from _singbox_server(tmp_path_factory.mktemp("sb-default"), certs, None, "server")


@pytest.fixture(scope="module")
def sb_custom(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[SingBoxServer]:
    yield from _singbox_server(
        tmp_path_factory.mktemp("sb-custom"), certs, CUSTOM_SCHEME, "server-custom"
    )


@pytest.fixture(scope="module")
def cli_client(
    tmp_path_factory: pytest.TempPathFactory, sb_default: SingBoxServer
) -> Iterator[AnyTLSProcess]:
    """``anytls-client`` → sing-box, certificate verified (trust via SSL_CERT_FILE)."""
    uri = f"anytls://{PASSWORD}@127.0.0.1:{sb_default.port}/?sni=localhost"
    with AnyTLSProcess.client(
        free_port(),
        ["-s", uri],
        tmp_path_factory.mktemp("cli-client"),
        env={"SSL_CERT_FILE": str(sb_default.cert)},
    ) as proc:
        yield proc


async def _open_and_echo(client: Client, host: str, port: int, size: int) -> float:
    reader, writer = await client.open_connection(host, port)
    return await echo_check(reader, writer, size)


async def _assert_wrong_password_fails(client: Client, host: str, port: int) -> None:
    """The stream must fail (error or close without data), bounded by a timeout."""
    async with asyncio.timeout(10):
        try:
            reader, writer = await client.open_connection(host, port)
        except AnyTLSError:
            return
        await expect_closed_without_data(reader, writer)


# ---------------------------------------------------------------------------- library


@async_test
async def test_library_echo_8mib(sb_default: SingBoxServer) -> None:
    async with tcp_echo_server() as (host, port), sb_default.client() as client:
        elapsed = await _open_and_echo(client, host, port, 8 * MIB)
        (conn,) = sessions_of(client)
        assert conn.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert conn.core.peer_version == 2  # sing-box sent ServerSettings v=2
    print(f"8 MiB echo, anytls.Client -> sing-box server: {elapsed:.3f} s")


@async_test
async def test_library_100_concurrent_streams(sb_default: SingBoxServer) -> None:
    async with tcp_echo_server() as echo, sb_default.client() as client:
        host, port = echo
        await asyncio.gather(
            *(_open_and_echo(client, host, port, 20_000 + 97 * i) for i in range(100))
        )
        assert echo.stats.connections == 100
        opened = client.sessions_opened
        assert 1 <= opened <= 100  # Go-style pooling: one active stream per session
        # afterwards sequential streams reuse the idle sessions
        await _open_and_echo(client, host, port, 1000)
        await _open_and_echo(client, host, port, 1000)
        assert client.sessions_opened == opened


@async_test
async def test_library_refused_destination(sb_default: SingBoxServer) -> None:
    dead = refused_port()
    async with tcp_echo_server() as (host, port), sb_default.client() as client:
        with pytest.raises(StreamOpenError, match="connection refused"):
            await client.open_connection("127.0.0.1", dead)
        # the session survives the failed stream and carries the next one
        await _open_and_echo(client, host, port, 4096)
        assert client.sessions_opened == 1
    await sb_default.sb.wait_log(rf"dial tcp 127\.0\.0\.1:{dead}: connect: connection refused")


@async_test
async def test_library_wrong_password(sb_default: SingBoxServer) -> None:
    before = sb_default.sb.log_text().count("unknown user password")
    async with tcp_echo_server() as (host, port), sb_default.client("not-the-password") as bad:
        await _assert_wrong_password_fails(bad, host, port)
        assert not bad.idle  # the dead session is not pooled
    await sb_default.sb.wait_log("unknown user password")
    assert sb_default.sb.log_text().count("unknown user password") == before + 1


@async_test
async def test_library_padding_push_used_by_next_session(
    sb_custom: SingBoxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="anytls")
    async with (
        tcp_echo_server() as (host, port),
        TLSRecordRecorder("127.0.0.1", sb_custom.port) as rec,
    ):
        client = sb_custom.client(port=rec.port, reuse_sessions=False)
        try:
            assert client.padding.md5 == DEFAULT_SCHEME_MD5
            await _open_and_echo(client, host, port, 3000)
            assert client.padding.md5 == CUSTOM_SCHEME_MD5
            assert client.padding.raw == "\n".join(CUSTOM_SCHEME).encode()
            # reuse is off: the next stream gets a new session built with the pushed scheme
            reader, writer = await client.open_connection(host, port)
            conn = sessions_of(client)[-1]  # session 1 may still be finishing its close
            assert conn.seq == 2
            assert conn.core.padding.md5 == CUSTOM_SCHEME_MD5
            await echo_check(reader, writer, 3000)
        finally:
            await client.close()
        await rec.wait_closed()
    pushes = [r for r in caplog.records if PUSH_LOG in r.getMessage()]
    # sing-box pushes only when the client's padding-md5 differs: once, to session 1
    assert len(pushes) == 1, [r.getMessage() for r in pushes]
    assert CUSTOM_SCHEME_MD5 in pushes[0].getMessage()
    # on the wire: the auth preface is 32 + 2 + padding0 (line 0: 30, then 10)
    prefaces = [plaintext_len_tls13(c.client_app_data()[1]) for c in rec.connections]
    assert prefaces == [64, 44]


# ---------------------------------------------------------------------------- CLI client


@async_test
async def test_cli_socks5_echo_8mib(cli_client: AnyTLSProcess) -> None:
    async with tcp_echo_server() as (host, port):
        elapsed = await socks_echo_check(cli_client.port, host, port, 8 * MIB)
    print(f"8 MiB echo, anytls-client (SOCKS5) -> sing-box server: {elapsed:.3f} s")


@async_test
async def test_cli_http_connect_echo(cli_client: AnyTLSProcess) -> None:
    async with tcp_echo_server() as (_host, port):
        reader, writer = await open_http_connect("127.0.0.1", cli_client.port, "localhost", port)
        await echo_check(reader, writer, MIB)


@async_test
async def test_cli_100_concurrent_socks5_streams(cli_client: AnyTLSProcess) -> None:
    async with tcp_echo_server() as echo:
        await asyncio.gather(
            *(socks_echo_check(cli_client.port, *echo, 20_000 + 89 * i) for i in range(100))
        )
        assert echo.stats.connections == 100


@async_test
async def test_cli_refused_destination(
    tmp_path: Path, cli_client: AnyTLSProcess, sb_default: SingBoxServer
) -> None:
    dead = refused_port()
    # Default (0-RTT) replies: the CONNECT was answered, so sing-box's error SYNACK resets
    # the local connection.
    r, w, _ = await open_socks5_raw("127.0.0.1", cli_client.port, "127.0.0.1", dead)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(r.read(), 5)
    w.close()
    await cli_client.wait_log(
        rf"CONNECT 127\.0\.0\.1:{dead} failed: .*connection refused.*local connection reset"
    )
    # --wait-for-synack: real SOCKS5 / HTTP error codes.
    uri = f"anytls://{PASSWORD}@127.0.0.1:{sb_default.port}/?sni=localhost"
    env = {"SSL_CERT_FILE": str(sb_default.cert)}
    args = ["-s", uri, "--wait-for-synack"]
    async with AnyTLSProcess.client(free_port(), args, tmp_path, env=env) as waiting:
        with pytest.raises(Socks5Error) as info:
            await open_socks5_raw("127.0.0.1", waiting.port, "127.0.0.1", dead)
        assert info.value.reply == 5  # connection refused
        with pytest.raises(ProxyHTTPError) as http_info:
            await open_http_connect("127.0.0.1", waiting.port, "127.0.0.1", dead)
        assert http_info.value.status == 502
        await waiting.wait_log(rf"CONNECT 127\.0\.0\.1:{dead} failed: .*connection refused")
    # the proxy keeps working
    async with tcp_echo_server() as (host, port):
        await socks_echo_check(cli_client.port, host, port, 1000)


@async_test
async def test_cli_wrong_password(tmp_path: Path, sb_default: SingBoxServer) -> None:
    before = sb_default.sb.log_text().count("unknown user password")
    args = ["-s", f"127.0.0.1:{sb_default.port}", "-p", "not-the-password", "--insecure"]
    args.append("--wait-for-synack")  # real SOCKS/HTTP error codes
    async with (
        tcp_echo_server() as (host, port),
        AnyTLSProcess.client(free_port(), args, tmp_path) as cli,
    ):
        async with asyncio.timeout(10):
            with pytest.raises(Socks5Error) as info:
                await open_socks5_raw("127.0.0.1", cli.port, host, port)
            assert info.value.reply == 1  # general failure: the session, not the destination
            with pytest.raises(ProxyHTTPError) as http_info:
                await open_http_connect("127.0.0.1", cli.port, host, port)
            assert http_info.value.status == 502
        await cli.wait_log(r"CONNECT 127\.0\.0\.1:\d+ failed")
    await sb_default.sb.wait_log("unknown user password")
    assert sb_default.sb.log_text().count("unknown user password") >= before + 2


@async_test
async def test_cli_padding_push_used_by_next_session(
    tmp_path: Path, sb_custom: SingBoxServer
) -> None:
    async with (
        tcp_echo_server() as (host, port),
        TLSRecordRecorder("127.0.0.1", sb_custom.port) as rec,
    ):
        args = ["-s", f"127.0.0.1:{rec.port}", "-p", PASSWORD, "--insecure", "--dr"]
        async with AnyTLSProcess.client(free_port(), args, tmp_path) as cli:
            await socks_echo_check(cli.port, host, port, 3000)
            await cli.wait_log(rf"{PUSH_LOG} \(md5 {CUSTOM_SCHEME_MD5}\)")
            await socks_echo_check(cli.port, host, port, 3000)
            await rec.wait_connections(2)
            pushes = cli.log_lines(re.escape(PUSH_LOG))
        await rec.wait_closed()
    # session 2 advertised the pushed md5, so sing-box did not push again
    assert len(pushes) == 1, pushes
    prefaces = [plaintext_len_tls13(c.client_app_data()[1]) for c in rec.connections]
    assert prefaces == [64, 44]
