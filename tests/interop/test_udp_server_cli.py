"""UDP over TCP through the ``anytls-server`` program (a real process): the
``--udp-idle-timeout`` flag, malformed UoT data closing only its stream, the largest
datagrams, the legacy v1 magic name, and our CLI client's SOCKS5 UDP against it (ours ↔
ours, the one pair that carries near-64 KiB datagrams end to end).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anytls import Client, ClientConfig, open_udp
from anytls.aio.client import ClientConnection
from anytls.aio.udp import UdpAssociation
from anytls.core.address import Address
from anytls.core.uot import UOT_V1_MAGIC, UOT_V2_MAGIC, UotPacketDecoder, encode_packet
from anytls.errors import StreamClosedError
from tests.helpers.aio import async_test, wait_until
from tests.helpers.echo import udp_echo_server
from tests.helpers.net import free_port, free_port_tcp_udp
from tests.helpers.ourproc import AnyTLSProcess, program
from tests.helpers.socks5_udp import socks5_udp_associate
from tests.helpers.udp_matrix import matrix_items, measure_rtt, record, run_matrix

PASSWORD = "cli-udp-pw"


@contextlib.asynccontextmanager
async def cli_server(
    tmp_path: Path, cert_pair: tuple[Path, Path], *extra: str
) -> AsyncIterator[tuple[AnyTLSProcess, Client]]:
    """Our server program + an in-process library client for it."""
    cert, key = cert_pair
    port = free_port()
    args = ["-p", PASSWORD, "--cert", str(cert), "--key", str(key), *extra]
    async with AnyTLSProcess.server(port, args, tmp_path / "server") as srv:
        client = Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True))
        try:
            yield srv, client
        finally:
            await client.close()


@async_test
async def test_idle_timeout_flag(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with (
        cli_server(tmp_path, cert_pair, "--udp-idle-timeout", "0.6") as (srv, client),
        udp_echo_server() as echo,
    ):
        assoc = await open_udp(client)
        # traffic every 0.2 s keeps the stream open well past the timeout
        for i in range(8):
            if i:
                await asyncio.sleep(0.2)  # the tested behaviour: 0.2 s gaps, below the timeout
            assoc.sendto(b"keep %d" % i, (echo.host, echo.port))
            async with asyncio.timeout(5):
                assert (await assoc.recvfrom())[0] == b"keep %d" % i
        last = time.monotonic()
        # then silence: the server ends it about 0.6 s after the last datagram
        async with asyncio.timeout(5):
            with pytest.raises(StreamClosedError):
                await assoc.recvfrom()
        idle = time.monotonic() - last
        assert 0.5 <= idle <= 2.5, idle
        await srv.wait_log(r"\(udp\): idle for 0\.6 s, closing")
        # the session survives: a new association on it works
        async with await open_udp(client) as again:
            again.sendto(b"after", (echo.host, echo.port))
            async with asyncio.timeout(5):
                assert (await again.recvfrom())[0] == b"after"
        assert client.sessions_opened == 1


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\x05\x01\x7f\x00\x00\x01\x00\x35", "isConnect byte is 0x05"),
        (b"\x00\x07\x7f\x00\x00\x01\x00\x35", "unknown address type 0x07"),
        (b"\x00\x01\x7f\x00\x00\x01\x00\x35" + b"\x07garbage", "UoT packet address type 0x07"),
        (b"\x00\x01\x7f\x00\x00\x01\x00\x35" + b"\x02\x00\x00\x35\x00\x01x", "empty domain"),
    ],
    ids=["bad-isconnect", "bad-request-atyp", "bad-packet-atyp", "empty-domain"],
)
@async_test
async def test_garbage_closes_only_that_stream(
    tmp_path: Path, cert_pair: tuple[Path, Path], garbage: bytes, why: str
) -> None:
    async with cli_server(tmp_path, cert_pair) as (srv, client), udp_echo_server() as echo:
        good = await open_udp(client)
        conn = good.stream.connection
        assert isinstance(conn, ClientConnection)
        # two more UoT streams on the SAME session: a valid one, and one fed garbage
        sibling = UdpAssociation(conn.open_stream(Address(UOT_V2_MAGIC, 0)), None)
        raw = conn.open_stream(Address(UOT_V2_MAGIC, 0))
        ended = asyncio.Event()

        class Watch(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                ended.set()

        raw.set_protocol(Watch())
        raw.write(garbage)
        async with asyncio.timeout(5):
            line = await srv.wait_log(r"malformed UoT data, closing the stream")
            await ended.wait()  # the server's FIN arrived
        assert why in line, line
        # the session and its other streams live on
        assert not conn.is_closed
        for i in range(20):
            good.sendto(b"alive %d" % i, (echo.host, echo.port))
            sibling.sendto(b"also %d" % i, (echo.host, echo.port))
        async with asyncio.timeout(5):
            got = [await good.recv() for _ in range(20)]
            also = [await sibling.recv() for _ in range(20)]
        assert got == [b"alive %d" % i for i in range(20)]
        assert also == [b"also %d" % i for i in range(20)]
        assert srv.returncode is None
        assert len(srv.log_lines(r"malformed UoT data")) == 1
        good.close()
        sibling.close()


@async_test
async def test_unusable_names(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    """Names getaddrinfo cannot even encode (an empty label, a 64-byte label): a connect
    request gets an error SYNACK, non-connect datagrams to them are dropped, and the
    association goes on (on both our server and our client's local resolution)."""
    bad_names = ("bad..name", "a" * 64 + ".test")
    async with cli_server(tmp_path, cert_pair) as (srv, client), udp_echo_server() as echo:
        for name in bad_names:
            assoc = await open_udp(client, connect=(name, 53))
            async with asyncio.timeout(5):
                with pytest.raises(StreamClosedError) as exc:
                    await assoc.recv()
            assert f"udp {name}:53" in str(exc.value.__cause__)
        async with await open_udp(client) as assoc:  # resolved by our client
            for name in bad_names:
                assoc.sendto(b"lost", (name, 53))
            assoc.sendto(b"kept", (echo.host, echo.port))
            async with asyncio.timeout(5):
                assert (await assoc.recvfrom())[0] == b"kept"
            await wait_until(lambda: assoc.dropped >= 2)  # both names failed to resolve
            assert assoc.dropped == 2
        # names sent as they are: our server's per-packet resolution drops them
        async with await open_udp(client, resolve_domains=False) as assoc:
            for name in bad_names:
                assoc.sendto(b"lost", (name, 53))
            assoc.sendto(b"kept", ("localhost", echo.port))
            async with asyncio.timeout(5):
                got, source = await assoc.recvfrom()
            assert got == b"kept" and source == Address("127.0.0.1", echo.port)
        await srv.wait_log(r"dropping 1 datagram\(s\) for bad\.\.name")
        assert "stream handler failed" not in srv.log_text()
        assert srv.returncode is None


@async_test
async def test_largest_datagrams_and_v1(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with (
        cli_server(tmp_path, cert_pair) as (srv, client),
        udp_echo_server() as echo,
        udp_echo_server("::1") as echo6,
    ):
        async with await open_udp(client) as assoc:
            for size in (65000, 65507):
                data = bytes(range(256)) * (size // 256) + bytes(size % 256)
                assoc.sendto(data, (echo.host, echo.port))
                async with asyncio.timeout(5):
                    got, source = await assoc.recvfrom()
                assert got == data and source == Address(echo.host, echo.port)
            # 65 508 bytes do not fit an IPv4 datagram: dropped, the stream goes on
            assoc.sendto(bytes(65508), (echo.host, echo.port))
            assoc.sendto(b"next", (echo.host, echo.port))
            async with asyncio.timeout(5):
                assert (await assoc.recvfrom())[0] == b"next"
        async with await open_udp(client, connect=(echo6.host, echo6.port)) as assoc:
            assoc.send(bytes(65507))
            async with asyncio.timeout(5):
                assert len(await assoc.recv()) == 65507
        # legacy v1: no request, non-connect packets straight away
        raw = await client.open_stream(Address(UOT_V1_MAGIC, 0))
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Collect(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                replies.put_nowait(data)

        raw.set_protocol(Collect())
        raw.write(encode_packet(Address(echo.host, echo.port), b"legacy v1"))
        decoder = UotPacketDecoder(connect=False)
        async with asyncio.timeout(5):
            packets: list[tuple[Address | None, bytes]] = []
            while not packets:
                packets = decoder.feed(await replies.get())
        assert packets == [(Address(echo.host, echo.port), b"legacy v1")]
        raw.close()
    assert "udp socket error" in srv.log_text()  # the 65 508-byte datagram


@async_test
async def test_cli_client_socks5_vs_cli_server(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    """Both programs ours: the full matrix plus near-64 KiB datagrams through SOCKS5."""
    cert, key = cert_pair
    port = free_port()
    mixed = free_port_tcp_udp()
    server_args = ["-p", PASSWORD, "--cert", str(cert), "--key", str(key)]
    client_args = ["-s", f"127.0.0.1:{port}", "-p", PASSWORD, "--insecure"]
    async with (
        AnyTLSProcess.server(port, server_args, tmp_path / "server") as srv,
        AnyTLSProcess.client(mixed, client_args, tmp_path / "client"),
        udp_echo_server() as a,
        udp_echo_server() as b,
        udp_echo_server("::1") as c,
        socks5_udp_associate("127.0.0.1", mixed) as s5,
    ):

        async def recv() -> tuple[bytes, tuple[str, int]]:
            return await s5.recvfrom()

        # 65 497 = the largest payload whose SOCKS5 reply (10-byte header) fits IPv4 UDP
        items = matrix_items([a, b, c], big=(32768, 60000, 65000, 65497))
        result = await run_matrix(s5.sendto, recv, items)
        result.check()
        dom = matrix_items([("localhost", b.port)], count=20, check_source=False)
        for it in dom:
            it.source = ("127.0.0.1", b.port)
        (await run_matrix(s5.sendto, recv, dom)).check()
        rtts = await measure_rtt(s5.sendto, recv, a)
        record("ours CLI SOCKS5 → ours CLI server, non-connect", result, rtts)
    requests = srv.log_lines(r"\(udp\): (packet|connect) request")
    assert len(requests) == 1 and "packet request to 0.0.0.0:0" in requests[0], requests


def test_udp_idle_timeout_flag_is_validated(tmp_path: Path) -> None:
    for bad in ("0", "-1", "nan"):
        proc = subprocess.run(
            [*program("server"), "-p", "x", "--udp-idle-timeout", bad],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "udp-idle-timeout" in proc.stderr
