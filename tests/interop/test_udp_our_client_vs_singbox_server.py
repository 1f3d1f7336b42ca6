"""UDP over TCP: our client ↔ a real sing-box 1.14.4 anytls server.

Our side is the library (``open_udp`` in the non-connect and the connect format) and the
``anytls-client`` program's SOCKS5 UDP ASSOCIATE (driven by the hand-written SOCKS5 UDP
client). Each runs the datagram matrix (1 000 datagrams of sizes 1..1 400 over three targets,
one on ::1, plus the largest sizes sing-box carries), a domain target (``localhost``) and a
round-trip measurement. sing-box's log tells which UoT format it saw.

sing-box 1.14.4 carries datagrams of at most 16 384 bytes (see tests/helpers/udp_matrix.py);
near-64 KiB datagrams are covered ours ↔ ours (tests/interop/test_udp_server_cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anytls import Client, ClientConfig, open_udp
from anytls.aio.udp import UdpAssociation
from anytls.core.address import Address
from anytls.errors import StreamClosedError
from tests.helpers.aio import async_test
from tests.helpers.echo import ServerAddr, udp_echo_server
from tests.helpers.net import free_port, free_port_tcp_udp
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.singbox import SingBox, anytls_server_config
from tests.helpers.socks5_udp import socks5_udp_associate
from tests.helpers.udp_matrix import (
    SINGBOX_MAX_DATAGRAM,
    matrix_items,
    measure_rtt,
    record,
    run_matrix,
)

PASSWORD = "udp-interop-pw"
BIG = (8192, 16000, SINGBOX_MAX_DATAGRAM)


@contextlib.asynccontextmanager
async def singbox_server(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> AsyncIterator[tuple[SingBox, int]]:
    """A sing-box anytls server on loopback; yields (process, port)."""
    cert, key = cert_pair
    port = free_port()
    cfg = anytls_server_config(port, [("u", PASSWORD)], cert, key)
    async with SingBox(cfg, tmp_path / "sing-box", name="server") as sb:
        yield sb, port


@contextlib.asynccontextmanager
async def targets() -> AsyncIterator[tuple[ServerAddr, ServerAddr, ServerAddr, ServerAddr]]:
    """Three echo targets (two IPv4, one ::1) and one reached by the name ``localhost``."""
    async with (
        udp_echo_server() as a,
        udp_echo_server() as b,
        udp_echo_server("::1") as c,
        udp_echo_server() as d,
    ):
        yield a, b, c, d


def _client(port: int) -> Client:
    return Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True))


def _lib_io(assoc: UdpAssociation):  # type: ignore[no-untyped-def]
    def send(data: bytes, target: tuple[str, int]) -> None:
        if assoc.connect is not None:
            assoc.send(data)
        else:
            assoc.sendto(data, target)

    async def recv() -> tuple[bytes, tuple[str, int]]:
        data, source = await assoc.recvfrom()
        return data, (source.host, source.port)

    return send, recv


@async_test
async def test_library_non_connect(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with singbox_server(tmp_path, cert_pair) as (sb, port), targets() as (a, b, c, d):
        client = _client(port)
        try:
            async with await open_udp(client) as assoc:
                send, recv = _lib_io(assoc)
                result = await run_matrix(send, recv, matrix_items([a, b, c], big=BIG))
                result.check()
                # A domain target in the same association: resolved by our client (sing-box
                # does not resolve per-packet names), so the reply names the IP.
                dom = matrix_items([("localhost", d.port)], count=20, check_source=False)
                for it in dom:
                    it.source = ("127.0.0.1", d.port)
                dres = await run_matrix(send, recv, dom)
                dres.check()
                rtts = await measure_rtt(send, recv, a)
                assert c.stats.datagrams > 300 and d.stats.datagrams == 20
            record("ours lib → sing-box server, non-connect", result, rtts)
        finally:
            await client.close()
        lines = [ln for ln in sb.log_lines() if "inbound UoT" in ln]
        assert lines and all("inbound UoT connection to 0.0.0.0:0" in ln for ln in lines), lines


@async_test
async def test_library_connect(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with singbox_server(tmp_path, cert_pair) as (sb, port), targets() as (a, b, c, d):
        client = _client(port)
        try:
            # one connect-format association per target: 1 000 datagrams to a, fewer to
            # b, ::1 and a name (sing-box resolves the request's domain)
            async with await open_udp(client, connect=(a.host, a.port)) as assoc:
                send, recv = _lib_io(assoc)
                result = await run_matrix(send, recv, matrix_items([a], big=BIG))
                result.check()
                rtts = await measure_rtt(send, recv, a)
            for target, source in (
                ((b.host, b.port), (b.host, b.port)),
                ((c.host, c.port), (c.host, c.port)),
                (("localhost", d.port), ("localhost", d.port)),
            ):
                async with await open_udp(client, connect=target) as assoc:
                    send, recv = _lib_io(assoc)
                    items = matrix_items([target], count=100, check_source=False)
                    for it in items:
                        it.source = source  # connect mode reports the request's address
                    sub = await run_matrix(send, recv, items)
                    sub.check()
            assert (b.stats.datagrams, c.stats.datagrams, d.stats.datagrams) == (100, 100, 100)
            record("ours lib → sing-box server, connect", result, rtts)
        finally:
            await client.close()
        connects = [ln for ln in sb.log_lines() if "inbound UoT connect connection to" in ln]
        assert len(connects) == 4, sb.log_text()
        assert any(f"connect connection to [::1]:{c.port}" in ln for ln in connects)
        assert any(f"connect connection to localhost:{d.port}" in ln for ln in connects)


@async_test
async def test_cli_socks5_udp(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    """``anytls-client`` (a real process) SOCKS5 UDP ASSOCIATE → sing-box server."""
    async with singbox_server(tmp_path, cert_pair) as (sb, port), targets() as (a, b, c, d):
        mixed = free_port_tcp_udp()
        args = ["-s", f"127.0.0.1:{port}", "-p", PASSWORD, "--insecure"]
        async with (
            AnyTLSProcess.client(mixed, args, tmp_path / "client") as cli,
            socks5_udp_associate("127.0.0.1", mixed) as s5,
        ):

            async def recv() -> tuple[bytes, tuple[str, int]]:
                return await s5.recvfrom()

            items = matrix_items([a, b, c], big=BIG)
            result = await run_matrix(s5.sendto, recv, items)
            result.check()
            dom = matrix_items([("localhost", d.port)], count=20, check_source=False)
            for it in dom:
                it.source = ("127.0.0.1", d.port)
            dres = await run_matrix(s5.sendto, recv, dom)
            dres.check()
            rtts = await measure_rtt(s5.sendto, recv, a)
            record("ours CLI SOCKS5 → sing-box server, non-connect", result, rtts)
            assert cli.returncode is None
        # the whole association is ONE UoT stream in the non-connect format
        lines = [ln for ln in sb.log_lines() if "inbound UoT" in ln]
        assert len(lines) == 1 and "inbound UoT connection to 0.0.0.0:0" in lines[0], lines


@async_test
async def test_datagram_over_singbox_limit_ends_only_that_association(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    """sing-box closes a UoT stream carrying a datagram > 16 384 bytes ("short buffer"); our
    client reports that association closed and the next one works."""
    async with singbox_server(tmp_path, cert_pair) as (sb, port), udp_echo_server() as a:
        client = _client(port)
        try:
            assoc = await open_udp(client)
            assoc.sendto(bytes(SINGBOX_MAX_DATAGRAM + 1), (a.host, a.port))
            async with asyncio.timeout(5):
                with pytest.raises(StreamClosedError):
                    await assoc.recvfrom()
            await sb.wait_log(r"UoT read: short buffer")
            async with await open_udp(client) as again:
                again.sendto(b"still fine", Address(a.host, a.port))
                async with asyncio.timeout(5):
                    assert (await again.recvfrom())[0] == b"still fine"
        finally:
            await client.close()
