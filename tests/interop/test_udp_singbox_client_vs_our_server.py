"""UDP over TCP: a real sing-box 1.14.4 client (mixed inbound, SOCKS5 UDP ASSOCIATE) ↔ our
server, as the ``anytls-server`` program (``--cert/--key``) and in-process (``anytls.serve``).

Which UoT format sing-box uses (checked in our server's debug log):

* by default its router calls the anytls outbound's ``ListenPacket`` → **non-connect**
  ("packet request to <first datagram's target>"), one stream per association, any targets;
* with the route action ``route-options`` + ``udp_connect: true`` it calls
  ``DialContext("udp")`` → **connect** ("connect request to <target>"). Every datagram of
  the association then goes to the first target, so each target gets its own association.
  sing-box reports the reply source of such an association as (target host, port of the
  anytls server it dialled) — its own quirk — so only payloads are checked there.

The sing-box client reads replies of at most 16 122 bytes (tests/helpers/udp_matrix.py).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from anytls import ServerConfig, serve
from anytls.aio.tls import server_context
from tests.helpers.aio import async_test
from tests.helpers.echo import udp_echo_server
from tests.helpers.net import free_port, free_port_tcp_udp
from tests.helpers.ourproc import AnyTLSProcess
from tests.helpers.singbox import SingBox, anytls_client_config
from tests.helpers.socks5_udp import Socks5UDPAssociation, socks5_udp_associate
from tests.helpers.udp_matrix import (
    SINGBOX_CLIENT_MAX_REPLY,
    matrix_items,
    measure_rtt,
    record,
    run_matrix,
)

PASSWORD = "udp-interop-pw"
BIG = (8192, 16000, SINGBOX_CLIENT_MAX_REPLY)


def singbox_client_config(mixed: int, server_port: int, udp_connect: bool) -> dict[str, Any]:
    cfg = anytls_client_config(mixed, server_port, PASSWORD)
    if udp_connect:
        cfg["route"]["rules"] = [{"action": "route-options", "udp_connect": True}]
    return cfg


@contextlib.asynccontextmanager
async def pair(
    tmp_path: Path, cert_pair: tuple[Path, Path], udp_connect: bool
) -> AsyncIterator[tuple[AnyTLSProcess, SingBox, int]]:
    """Our CLI server + a sing-box client; yields (server, client, mixed port)."""
    cert, key = cert_pair
    port = free_port()
    mixed = free_port_tcp_udp()
    args = ["-p", PASSWORD, "--cert", str(cert), "--key", str(key)]
    async with (
        AnyTLSProcess.server(port, args, tmp_path / "server") as server,
        SingBox(
            singbox_client_config(mixed, port, udp_connect), tmp_path / "sb", name="client"
        ) as client,
    ):
        yield server, client, mixed


def _io(s5: Socks5UDPAssociation):  # type: ignore[no-untyped-def]
    async def recv() -> tuple[bytes, tuple[str, int]]:
        return await s5.recvfrom()

    return s5.sendto, recv


@async_test
async def test_non_connect_cli_server(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with (
        pair(tmp_path, cert_pair, udp_connect=False) as (server, sb, mixed),
        udp_echo_server() as a,
        udp_echo_server() as b,
        udp_echo_server("::1") as c,
        udp_echo_server() as d,
    ):
        async with socks5_udp_associate("127.0.0.1", mixed) as s5:
            send, recv = _io(s5)
            result = await run_matrix(send, recv, matrix_items([a, b, c], big=BIG))
            result.check()
            # sing-box sends the name; our server resolves it per packet and replies from
            # the IP
            dom = matrix_items([("localhost", d.port)], count=20, check_source=False)
            for it in dom:
                it.source = ("127.0.0.1", d.port)
            (await run_matrix(send, recv, dom)).check()
            rtts = await measure_rtt(send, recv, a)
        record("sing-box SOCKS5 → ours CLI server, non-connect", result, rtts)
        assert d.stats.datagrams == 20
        # one non-connect stream for the association, named after the first target
        requests = server.log_lines(r"\(udp\): (packet|connect) request")
        assert len(requests) == 1, server.log_text()
        assert f"packet request to 127.0.0.1:{a.port}" in requests[0]
    assert "outbound UoT packet connection" in sb.log_text()


@async_test
async def test_connect_cli_server(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    async with (
        pair(tmp_path, cert_pair, udp_connect=True) as (server, sb, mixed),
        udp_echo_server() as a,
        udp_echo_server("::1") as c,
        udp_echo_server() as d,
    ):
        rtts: list[float] = []
        result = None
        for target, count, big in (
            ((a.host, a.port), 1000, BIG),
            ((c.host, c.port), 200, (SINGBOX_CLIENT_MAX_REPLY,)),
            (("localhost", d.port), 200, (SINGBOX_CLIENT_MAX_REPLY,)),
        ):
            async with socks5_udp_associate("127.0.0.1", mixed) as s5:
                send, recv = _io(s5)
                items = matrix_items([target], big=big, count=count, check_source=False)
                res = await run_matrix(send, recv, items)
                res.check()
                if result is None:
                    result = res
                    rtts = await measure_rtt(send, recv, target)
        record("sing-box SOCKS5 → ours CLI server, connect (udp_connect)", result, rtts)
        assert (c.stats.datagrams, d.stats.datagrams) == (201, 201)
        requests = server.log_lines(r"\(udp\): (packet|connect) request")
        assert [r.split("(udp): ")[1] for r in requests] == [
            f"connect request to 127.0.0.1:{a.port}",
            f"connect request to [::1]:{c.port}",
            f"connect request to localhost:{d.port}",
        ], server.log_text()
    assert sb.log_lines() and "udp-connect" in sb.log_text()


@async_test
async def test_in_process_server_one_socket_per_family(
    tmp_path: Path, cert_pair: tuple[Path, Path]
) -> None:
    """``anytls.serve`` in this process: one association to IPv4, ::1 and a name is one
    stream with one UDP socket per address family."""
    cert, key = cert_pair
    ctx = server_context(str(cert), str(key))
    server = await serve(
        ServerConfig(users={"u": PASSWORD}, allow_private=True), "127.0.0.1", 0, ssl_context=ctx
    )
    port = server.sockets[0].getsockname()[1]
    mixed = free_port_tcp_udp()
    try:
        async with (
            SingBox(singbox_client_config(mixed, port, False), tmp_path / "sb", name="client"),
            udp_echo_server() as a,
            udp_echo_server("::1") as c,
            socks5_udp_associate("127.0.0.1", mixed) as s5,
        ):
            send, recv = _io(s5)
            items = matrix_items([a, c, ("localhost", a.port)], count=300, check_source=False)
            for it in items:
                it.source = (it.target[0].replace("localhost", "127.0.0.1"), it.target[1])
            result = await run_matrix(send, recv, items)
            result.check()
            (conn,) = server.connections
            relays = [s.get_protocol() for s in conn.streams.values()]
            assert len(relays) == 1
            assert sorted(relays[0].sockets) == sorted([socket.AF_INET, socket.AF_INET6])
            assert relays[0].datagrams_out == 300 and relays[0].datagrams_in == 300
    finally:
        await server.close()
