"""The real sing-box 1.14 client (``mixed`` inbound → ``anytls`` outbound) against our
server: the ``anytls-server`` program (certificate files, started once per module) and the
in-process :func:`anytls.serve` (self-signed default), over loopback. Data checks by sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from anytls import AnyTLSServer, ServerConfig, serve
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import refused_port, tcp_echo_server
from tests.helpers.interop import (
    CUSTOM_SCHEME,
    CUSTOM_SCHEME_MD5,
    DEFAULT_SCHEME_MD5,
    MIB,
    aclose,
    echo_check,
    expect_closed_without_data,
    socks_echo_check,
)
from tests.helpers.net import free_port, free_port_tcp_udp, make_self_signed_cert
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.proxyclient import open_http_connect, open_socks5_raw
from tests.helpers.singbox import SingBox, anytls_client_config
from tests.helpers.socks5_udp import Socks5Error

PASSWORD = "interop-pw"
WRONG_PASSWORD_LINE = re.compile(r"INFO anytls\.server: rejected 127\.0\.0\.1:\d+: wrong password")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def our_server(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path]
) -> Iterator[AnyTLSProcess]:
    """``anytls-server`` with the test certificate and the default padding scheme."""
    cert, key = certs
    args = ["-p", PASSWORD, "--cert", str(cert), "--key", str(key)]
    with AnyTLSProcess.server(free_port(), args, tmp_path_factory.mktemp("our-server")) as srv:
        srv.wait_log_sync(rf"padding md5 {DEFAULT_SCHEME_MD5}")
        yield srv


@pytest.fixture(scope="module")
def sb_client(
    tmp_path_factory: pytest.TempPathFactory, certs: tuple[Path, Path], our_server: AnyTLSProcess
) -> Iterator[SingBox]:
    """sing-box client verifying our server's certificate (server_name localhost)."""
    cfg = anytls_client_config(
        free_port_tcp_udp(), our_server.port, PASSWORD, insecure=False, ca_cert=certs[0]
    )
    with SingBox(cfg, tmp_path_factory.mktemp("sb-client"), name="client") as sb:
        yield sb


def mixed_port(sb: SingBox) -> int:
    return sb.ports[0][1]


@contextlib.asynccontextmanager
async def singbox_client(
    workdir: Path, server_port: int, password: str = PASSWORD
) -> AsyncIterator[SingBox]:
    """A sing-box client for one test (``insecure: true``: our servers may be self-signed)."""
    cfg = anytls_client_config(free_port_tcp_udp(), server_port, password, insecure=True)
    async with SingBox(cfg, workdir, name="client") as sb:
        yield sb


@contextlib.asynccontextmanager
async def inprocess_server(**config: object) -> AsyncIterator[tuple[AnyTLSServer, int]]:
    """``anytls.serve`` on loopback with its self-signed default certificate."""
    server = await serve(
        ServerConfig(users={"alice": PASSWORD}, **{"allow_private": True, **config}),  # type: ignore[arg-type]
        "127.0.0.1",
        0,
    )
    try:
        yield server, server.sockets[0].getsockname()[1]
    finally:
        await server.close()


# ---------------------------------------------------------------------------- data


@async_test
async def test_socks5_echo_8mib_cli_server(sb_client: SingBox) -> None:
    async with tcp_echo_server() as (host, port):
        elapsed = await socks_echo_check(mixed_port(sb_client), host, port, 8 * MIB)
    print(f"8 MiB echo, sing-box client (SOCKS5) -> anytls-server: {elapsed:.3f} s")


@async_test
async def test_socks5_echo_8mib_inprocess_self_signed(tmp_path: Path) -> None:
    async with (
        tcp_echo_server() as (host, port),
        inprocess_server() as (server, server_port),
        singbox_client(tmp_path, server_port) as sb,
    ):
        elapsed = await socks_echo_check(mixed_port(sb), host, port, 8 * MIB)
        assert len(server.connections) >= 1  # sing-box keeps its session open
        for conn in server.connections:  # the suite Go itself would choose
            assert conn.get_extra_info("cipher")[0] == "TLS_AES_128_GCM_SHA256"
    print(f"8 MiB echo, sing-box client (SOCKS5) -> anytls.serve: {elapsed:.3f} s")


@async_test
async def test_http_connect_echo(sb_client: SingBox) -> None:
    async with tcp_echo_server() as (_host, port):
        reader, writer = await open_http_connect(
            "127.0.0.1", mixed_port(sb_client), "localhost", port
        )
        await echo_check(reader, writer, MIB)


@async_test
async def test_socks5_100_concurrent_streams(sb_client: SingBox, our_server: AnyTLSProcess) -> None:
    async with tcp_echo_server() as echo:
        await asyncio.gather(
            *(socks_echo_check(mixed_port(sb_client), *echo, 20_000 + 89 * i) for i in range(100))
        )
        assert echo.stats.connections == 100
    assert our_server.returncode is None


# ---------------------------------------------------------------------------- failures


@async_test
async def test_refused_destination_closes(sb_client: SingBox, our_server: AnyTLSProcess) -> None:
    dead = refused_port()
    port = mixed_port(sb_client)
    # sing-box answers SOCKS5 CONNECT before the tunnel is up (0-RTT), so the failure shows
    # as the connection closing without data (or, if it ever waits, as an error reply).
    try:
        reader, writer, _bnd = await open_socks5_raw("127.0.0.1", port, "127.0.0.1", dead)
    except Socks5Error as exc:
        assert exc.reply not in (None, 0)
    else:
        await expect_closed_without_data(reader, writer)
    # our server reported the refusal (SYNACK with the error text) and logged it
    await our_server.wait_log(rf"dial tcp 127\.0\.0\.1:{dead}: connect: connection refused")
    async with tcp_echo_server() as (host, echo_port):
        await socks_echo_check(port, host, echo_port, 1000)


async def _wrong_password_attempt(sb: SingBox) -> None:
    """One SOCKS5 CONNECT through a sing-box client with a wrong password must fail."""
    async with tcp_echo_server() as echo:
        async with asyncio.timeout(10):
            try:
                reader, writer, _bnd = await open_socks5_raw("127.0.0.1", mixed_port(sb), *echo)
            except Socks5Error as exc:
                assert exc.reply not in (None, 0)
            else:
                await expect_closed_without_data(reader, writer)
        assert echo.stats.connections == 0  # nothing reached the destination


@async_test
async def test_wrong_password_cli_server(tmp_path: Path, our_server: AnyTLSProcess) -> None:
    before = len(our_server.log_lines(WRONG_PASSWORD_LINE))
    async with singbox_client(tmp_path, our_server.port, "not-the-password") as sb:
        await _wrong_password_attempt(sb)
        await our_server.wait_log(WRONG_PASSWORD_LINE)
        await sb.wait_log(r"outbound/anytls\[anytls-out\]: outbound connection to")
    assert len(our_server.log_lines(WRONG_PASSWORD_LINE)) == before + 1


@async_test
async def test_wrong_password_inprocess_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="anytls")

    def rejected() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "wrong password" in r.getMessage()]

    async with (
        inprocess_server() as (server, server_port),
        singbox_client(tmp_path, server_port, "not-the-password") as sb,
    ):
        await _wrong_password_attempt(sb)
        await wait_until(rejected, 5)  # logging has no event to wait on
        assert not server.connections  # the rejected session is gone
    (record,) = rejected()
    assert record.levelno == logging.INFO
    assert record.name == "anytls.server"
    assert re.search(r"rejected 127\.0\.0\.1:\d+: wrong password", record.getMessage())


# ---------------------------------------------------------------------------- padding, TLS


@async_test
async def test_padding_scheme_pushed_to_singbox(tmp_path: Path) -> None:
    scheme = tmp_path / "padding.txt"
    scheme.write_bytes("\n".join(CUSTOM_SCHEME).encode())
    server_args = ["-p", PASSWORD, "--padding-scheme", str(scheme)]
    async with (
        tcp_echo_server() as (host, port),
        AnyTLSProcess.server(free_port(), server_args, tmp_path / "server") as srv,
        singbox_client(tmp_path / "client", srv.port) as sb,
    ):
        await srv.wait_log(rf"padding md5 {CUSTOM_SCHEME_MD5}")
        mixed = mixed_port(sb)
        await socks_echo_check(mixed, host, port, 10_000)
        await sb.wait_log(rf"\[Update padding succeed\] {CUSTOM_SCHEME_MD5}")
        # Hold one stream open so the next one needs a second sing-box session, which must
        # advertise the pushed scheme's md5 (our server logs each client's Settings).
        held_reader, held_writer, _ = await open_socks5_raw("127.0.0.1", mixed, host, port)
        try:
            held_writer.write(b"hold")
            assert await held_reader.readexactly(4) == b"hold"  # stream 1 is up and busy
            await socks_echo_check(mixed, host, port, 10_000)
        finally:
            await aclose(held_writer)
        settings = srv.log_lines(r"settings \{.*'padding-md5'")
        assert len(settings) == 2, settings
        assert f"'padding-md5': '{DEFAULT_SCHEME_MD5}'" in settings[0]
        assert f"'padding-md5': '{CUSTOM_SCHEME_MD5}'" in settings[1]
        # ...so it was pushed exactly once
        updates = [ln for ln in sb.log_lines() if "Update padding succeed" in ln]
        assert len(updates) == 1, updates


@async_test
async def test_self_signed_default_cli_server(tmp_path: Path) -> None:
    async with (
        tcp_echo_server() as (host, port),
        AnyTLSProcess.server(
            free_port(), ["-p", PASSWORD, "--state-dir", str(tmp_path / "state")], tmp_path / "s"
        ) as srv,
        singbox_client(tmp_path / "client", srv.port) as sb,
    ):
        await srv.wait_log("made a self-signed certificate for 127.0.0.1, localhost, kept in")
        await socks_echo_check(mixed_port(sb), host, port, MIB)
        await srv.wait_log(r"session from 127\.0\.0\.1:\d+: user default")
