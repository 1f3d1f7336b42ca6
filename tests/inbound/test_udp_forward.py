"""``anytls.inbound.udp_forward``: LOCAL=TARGET parsing, one connect-mode association per
local source, replies to the right source, idle and server-side endings, limits, the CLI flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from anytls import Client, ClientConfig, ServerConfig, serve
from anytls.aio.server import AnyTLSServer
from anytls.aio.uot_server import UotServerRelay
from anytls.cli import client as client_cli
from anytls.core.address import Address
from anytls.errors import ConfigError
from anytls.inbound.udp_forward import (
    PENDING_LIMIT,
    UdpForwarder,
    parse_forward,
    start_forwarders,
)
from tests.helpers.aio import async_test
from tests.helpers.echo import udp_echo_server
from tests.helpers.net import free_port

PASSWORD = "fwd-pw"


# ------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "local", "target"),
    [
        ("127.0.0.1:5353=8.8.8.8:53", Address("127.0.0.1", 5353), Address("8.8.8.8", 53)),
        (
            "[::1]:5353=[2001:4860:4860::8888]:53",
            Address("::1", 5353),
            Address("2001:4860:4860::8888", 53),
        ),
        ("0.0.0.0:0=dns.google:853", Address("0.0.0.0", 0), Address("dns.google", 853)),
        (" 127.0.0.1:1 = localhost:2 ", Address("127.0.0.1", 1), Address("localhost", 2)),
    ],
)
def test_parse_forward(text: str, local: Address, target: Address) -> None:
    assert parse_forward(text) == (local, target)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1:5353", "expected LOCAL=TARGET"),
        ("127.0.0.1:5353=8.8.8.8", "expected host:port"),
        ("localhost:5353=8.8.8.8:53", "must be an IP literal"),
        ("127.0.0.1:5353=8.8.8.8:0", "target port must not be 0"),
        ("127.0.0.1:99999=8.8.8.8:53", "not a number"),
        ("::1:53=8.8.8.8:53", "brackets"),
    ],
)
def test_parse_forward_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_forward(text)


def test_cli_flag_is_repeatable_and_validated(capsys: pytest.CaptureFixture[str]) -> None:
    parser = client_cli.build_parser()
    argv = ["-s", "h:1", "-udp-forward", "127.0.0.1:1=1.1.1.1:53",
            "--udp-forward=[::1]:2=localhost:53"]  # fmt: skip
    args = parser.parse_args(
        client_cli.normalise(argv, client_cli._SHORT, client_cli.long_options(parser))
    )
    assert args.udp_forward == ["127.0.0.1:1=1.1.1.1:53", "[::1]:2=localhost:53"]
    with pytest.raises(SystemExit) as exc:
        client_cli.main(["-s", "h:1", "-p", "x", "--udp-forward", "nonsense"])
    assert exc.value.code == 2
    assert "--udp-forward 'nonsense': expected LOCAL=TARGET" in capsys.readouterr().err


# ------------------------------------------------------------------------- forwarding


class LocalPeer(asyncio.DatagramProtocol):
    """A local UDP client of the forwarder."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self, timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        return await asyncio.wait_for(self.queue.get(), timeout)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


@contextlib.asynccontextmanager
async def local_peer(fwd: UdpForwarder) -> AsyncIterator[LocalPeer]:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in fwd.local.host else socket.AF_INET
    transport, peer = await loop.create_datagram_endpoint(
        LocalPeer, remote_addr=(fwd.local.host, fwd.port), family=family
    )
    try:
        yield peer
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def setup(
    target: Address | tuple[str, int] | None = None,
    *,
    local: str = "127.0.0.1",
    server_timeout: float = 60.0,
    **fwd_kwargs: object,
) -> AsyncIterator[tuple[AnyTLSServer, Client, UdpForwarder, tuple[str, int]]]:
    """Our server + client + a forwarder to ``target`` (default: an echo server)."""
    config = ServerConfig(
        users={"u": PASSWORD}, allow_private=True, udp_idle_timeout=server_timeout
    )
    server = await serve(config, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True))
    try:
        async with udp_echo_server() as echo:
            tgt = target or (echo.host, echo.port)
            if not isinstance(tgt, Address):
                tgt = Address(*tgt)
            fwd = UdpForwarder(client, Address(local, 0), tgt, **fwd_kwargs)  # type: ignore[arg-type]
            await fwd.start()
            try:
                yield server, client, fwd, echo
            finally:
                await fwd.close()
    finally:
        await client.close()
        await server.close()


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait until ``predicate()`` is true."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the poll interval (the state has no event)


def relays(server: AnyTLSServer) -> list[UotServerRelay]:
    return [
        s.get_protocol()  # type: ignore[misc]
        for conn in server.connections
        for s in conn.streams.values()
        if isinstance(s.get_protocol(), UotServerRelay)
    ]


@async_test(timeout=30)
async def test_each_source_gets_its_own_connect_association() -> None:
    async with (
        setup() as (server, _client, fwd, echo),
        local_peer(fwd) as one,
        local_peer(fwd) as two,
    ):
        for i in range(50):
            one.send(b"one %d" % i)
            two.send(b"two %d" % i)
        got_one = [await one.recv() for _ in range(50)]
        got_two = [await two.recv() for _ in range(50)]
        # each source hears only its own replies, in order
        assert got_one == [b"one %d" % i for i in range(50)]
        assert got_two == [b"two %d" % i for i in range(50)]
        assert set(fwd.peers) == {one.addr, two.addr}
        assert fwd.associations_opened == 2
        assert (fwd.datagrams_out, fwd.datagrams_in) == (100, 100)
        rs = relays(server)
        assert len(rs) == 2
        assert all(r.connect_target == (echo[0], echo[1]) for r in rs)
        assert echo.stats.datagrams == 100
        # the echo server sees one source per association (one socket per stream)
        assert echo.stats.connections == 2


@async_test(timeout=30)
async def test_datagrams_sent_before_the_stream_opens_are_kept_in_order() -> None:
    async with setup() as (_server, _client, fwd, _echo), local_peer(fwd) as peer:
        # a burst right away: all wait for the association (up to PENDING_LIMIT)
        n = PENDING_LIMIT
        for i in range(n):
            peer.send(b"early %d" % i)
        assert [await peer.recv() for _ in range(n)] == [b"early %d" % i for i in range(n)]


@async_test(timeout=30)
async def test_ipv6_local_and_domain_target() -> None:
    async with udp_echo_server("::1") as echo6:
        async with setup(("localhost", 0), local="::1") as (_s, _c, fwd, echo):
            # the target named "localhost" is resolved by the server (127.0.0.1 first)
            fwd.target = Address("localhost", echo.port)
            async with local_peer(fwd) as peer:
                peer.send(b"via name")
                assert await peer.recv() == b"via name"
        async with setup(("::1", echo6.port)) as (_s, _c, fwd, _echo), local_peer(fwd) as peer:
            peer.send(b"to v6")
            assert await peer.recv() == b"to v6"


@async_test(timeout=30)
async def test_idle_association_is_closed_and_reopened() -> None:
    async with setup(idle_timeout=0.3) as (server, _client, fwd, _echo), local_peer(fwd) as peer:
        peer.send(b"first")
        assert await peer.recv() == b"first"
        assert len(fwd.peers) == 1 and len(relays(server)) == 1
        # traffic within the timeout keeps it
        for i in range(4):
            await asyncio.sleep(0.15)  # the tested behaviour: gaps shorter than the timeout
            peer.send(b"k%d" % i)
            assert await peer.recv() == b"k%d" % i
        assert fwd.associations_opened == 1
        # then it is closed on both ends …
        await eventually(lambda: not fwd.peers and not relays(server))
        # … and the next datagram opens a new one
        peer.send(b"again")
        assert await peer.recv() == b"again"
        assert fwd.associations_opened == 2


@async_test(timeout=30)
async def test_association_ended_by_the_server_is_replaced() -> None:
    async with setup(server_timeout=0.3) as (_s, _c, fwd, _echo), local_peer(fwd) as peer:
        peer.send(b"one")
        assert await peer.recv() == b"one"
        await eventually(lambda: not fwd.peers)
        peer.send(b"two")
        assert await peer.recv() == b"two"
        assert fwd.associations_opened == 2


@async_test(timeout=30)
async def test_unresolvable_target_is_logged_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="anytls")
    async with setup(("bad..name", 53)) as (_s, _c, fwd, _echo), local_peer(fwd) as peer:
        peer.send(b"query")
        # the server answers the connect request with an error SYNACK; the forwarder
        # logs it and forgets the source
        await eventually(lambda: any(
            "association for" in r.getMessage() and "bad..name:53" in r.getMessage()
            for r in caplog.records
        ), timeout=10)  # fmt: skip
        await eventually(lambda: not fwd.peers)
        assert peer.queue.empty()
    assert any("udp bad..name:53" in r.getMessage() for r in caplog.records)


@async_test(timeout=30)
async def test_source_limit() -> None:
    async with (
        setup(max_associations=1) as (_server, _client, fwd, _echo),
        local_peer(fwd) as one,
        local_peer(fwd) as two,
    ):
        one.send(b"a")
        assert await one.recv() == b"a"
        two.send(b"b")
        with pytest.raises(TimeoutError):
            await two.recv(timeout=0.3)
        assert fwd.dropped == 1 and len(fwd.peers) == 1


@async_test(timeout=30)
async def test_close_ends_every_association_and_frees_the_port() -> None:
    async with setup() as (server, client, fwd, _echo):
        async with local_peer(fwd) as one, local_peer(fwd) as two:
            one.send(b"1")
            two.send(b"2")
            await one.recv()
            await two.recv()
            port = fwd.port
            await fwd.close()
            assert not fwd.peers
            await eventually(lambda: not relays(server))
        # the port is free as soon as close() returns
        again = UdpForwarder(client, Address("127.0.0.1", port), Address("127.0.0.1", 9))
        await again.start()
        await again.close()


@async_test(timeout=30)
async def test_start_forwarders_bind_error_closes_the_started_ones() -> None:
    async with setup() as (_server, client, fwd, _echo):
        taken = fwd.port
        free = free_port("127.0.0.1", socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            await start_forwarders(client, [
                (Address("127.0.0.1", free), Address("127.0.0.1", 9)),
                (Address("127.0.0.1", taken), Address("127.0.0.1", 9)),
            ])  # fmt: skip
        # the first one was closed again: its port is free
        ok = await start_forwarders(client, [(Address("127.0.0.1", free), Address("1.1.1.1", 53))])
        assert [f.port for f in ok] == [free]
        for f in ok:
            await f.close()
