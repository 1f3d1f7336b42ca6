"""UDP over TCP, ours ↔ ours: connect and non-connect formats, many targets, domains, limits."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time

import pytest

from anytls.aio import uot_server
from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import LOOKUPS_PER_SESSION, ServerConfig, serve
from anytls.aio.udp import open_udp
from anytls.core.address import Address
from anytls.core.uot import UOT_V2_MAGIC, encode_packet, packet_to_socks_datagram
from anytls.errors import RemoteProtocolError, StreamClosedError
from tests.helpers.aio import wait_until
from tests.helpers.echo import udp_echo_server
from tests.helpers.resolver import stall_lookups

PASSWORD = "udp-pw"


class Env:
    def __init__(self, **server_kwargs: object) -> None:
        self.server_kwargs = server_kwargs

    async def __aenter__(self) -> Env:
        config = ServerConfig(
            users={"u": PASSWORD}, **{"allow_private": True, **self.server_kwargs}
        )  # type: ignore[arg-type]
        self.server = await serve(config, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.client = Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.close()


def test_non_connect_many_sizes_and_three_targets() -> None:
    async def main() -> None:
        async with (
            Env() as env,
            udp_echo_server() as a,
            udp_echo_server() as b,
            udp_echo_server("::1") as c,
        ):
            assoc = await open_udp(env.client)
            targets = [a, b, c]
            sent: list[tuple[bytes, tuple[str, int]]] = []
            for size in range(1, 1401):
                payload = (hashlib.sha256(str(size).encode()).digest() * 44)[:size]
                sent.append((payload, targets[size % 3]))
            for size in (60_000, 65_000, 65_507):
                sent.append((bytes(size), a))
            received = []
            # UDP may drop under a burst (socket buffers); send in windows of 25 like a
            # real request/response client so a loss means a bug, not a full buffer.
            async with asyncio.timeout(30):
                for i in range(0, len(sent), 25):
                    window = sent[i : i + 25]
                    for payload, target in window:
                        assoc.sendto(payload, (target[0], target[1]))
                    for _ in window:
                        received.append(await assoc.recvfrom())
            assert sorted(p for p, _ in received) == sorted(p for p, _ in sent)
            # replies carry the source address of each target
            for payload, source in received:
                expected = next(t for p, t in sent if p == payload)
                assert (source.host, source.port) == (expected[0], expected[1])
            assoc.close()

    asyncio.run(main())


def test_datagram_handler_gets_queued_then_live_datagrams_in_order() -> None:
    async def main() -> None:
        async with Env() as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client)
            assoc.sendto(b"queued-1", echo)
            assoc.sendto(b"queued-2", echo)
            await wait_until(lambda: assoc.queue.qsize() == 2, 5)
            got: list[tuple[bytes, Address]] = []
            all_in = asyncio.Event()

            def handler(payload: bytes, source: Address) -> None:
                got.append((payload, source))
                if len(got) == 22:
                    all_in.set()

            assoc.set_datagram_handler(handler)
            assert [p for p, _ in got] == [b"queued-1", b"queued-2"]  # handed over at once
            for i in range(20):
                assoc.sendto(b"live-%d" % i, echo)
            await asyncio.wait_for(all_in.wait(), 5)
            assert [p for p, _ in got[2:]] == [b"live-%d" % i for i in range(20)]
            assert all((s.host, s.port) == (echo[0], echo[1]) for _, s in got)
            assert assoc.queue.qsize() == 0  # nothing went to the queue meanwhile
            assoc.close()
            with pytest.raises(StreamClosedError):
                await asyncio.wait_for(assoc.recvfrom(), 5)  # still reports the end

    asyncio.run(main())


def test_connect_mode_and_domain_target() -> None:
    async def main() -> None:
        async with Env() as env, udp_echo_server() as echo:
            async with await open_udp(env.client, connect=("localhost", echo[1])) as assoc:
                for i in range(200):
                    assoc.send(b"ping %d" % i)
                async with asyncio.timeout(10):
                    got = [await assoc.recv() for _ in range(200)]
                assert got == [b"ping %d" % i for i in range(200)]
            async with await open_udp(env.client) as assoc:
                assoc.sendto(b"by name", Address("localhost", echo[1]))
                async with asyncio.timeout(10):
                    payload, source = await assoc.recvfrom()
                assert payload == b"by name" and source.port == echo[1]

    asyncio.run(main())


def test_idle_timeout_closes_stream() -> None:
    async def main() -> None:
        async with Env(udp_idle_timeout=0.5) as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client)
            assoc.sendto(b"x", (echo[0], echo[1]))
            async with asyncio.timeout(5):
                assert (await assoc.recvfrom())[0] == b"x"
                with pytest.raises(StreamClosedError):
                    await assoc.recvfrom()

    asyncio.run(main())


@pytest.mark.parametrize(
    "packet",
    [
        b"\x07garbage",  # an invalid UoT address type
        b"\x02\x03a\x00b\x00\x35\x00\x01x",  # a whole packet to a domain name with a NUL
    ],
)
def test_garbage_closes_only_that_stream(caplog: pytest.LogCaptureFixture, packet: bytes) -> None:
    caplog.set_level(logging.INFO, logger="anytls")

    async def main() -> None:
        async with Env() as env, udp_echo_server() as echo:
            good = await open_udp(env.client)
            stream = await env.client.open_stream(Address(UOT_V2_MAGIC, 0))
            # request: non-connect, then the bad packet
            stream.write(b"\x00\x01\x7f\x00\x00\x01\x00\x35" + packet)
            await wait_until(stream.is_closing, timeout=3)
            assert stream.is_closing()
            # the other association on the same client still works
            good.sendto(b"alive", (echo[0], echo[1]))
            async with asyncio.timeout(5):
                assert (await good.recvfrom())[0] == b"alive"

    asyncio.run(main())
    assert any("malformed UoT" in r.getMessage() for r in caplog.records)


def test_udp_socket_count_is_bounded() -> None:
    """One association uses one UDP socket per address family, whatever the target count."""

    async def main() -> None:
        async with Env() as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client)
            for i in range(50):
                assoc.sendto(b"%d" % i, ("127.0.0.1", echo[1]))
            async with asyncio.timeout(5):
                for _ in range(50):
                    await assoc.recvfrom()
            (conn,) = env.server.connections
            relays = [s.get_protocol() for s in conn.streams.values()]
            assert len(relays) == 1 and len(relays[0].sockets) == 1
            assert relays[0].sockets[socket.AF_INET].transport is not None

    asyncio.run(main())


def test_remembered_targets_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Targets are kept checked per encoded address, a bounded number of them."""
    monkeypatch.setattr(uot_server, "TARGET_CACHE_SIZE", 4)

    async def main() -> None:
        async with Env() as env, udp_echo_server() as a, udp_echo_server() as b:
            assoc = await open_udp(env.client)
            for round_ in range(3):
                for i in range(10):
                    # ports 1..10 of 127.0.0.2 (nobody answers) between the echo targets
                    assoc.sendto(b"%d-%d" % (round_, i), (a[0], a[1]) if i % 2 else (b[0], b[1]))
                    assoc.sendto(b"nobody", ("127.0.0.2", 1 + i))
            async with asyncio.timeout(5):
                got = sorted([(await assoc.recvfrom())[0] for _ in range(30)])
            assert got == sorted(b"%d-%d" % (r, i) for r in range(3) for i in range(10))
            (conn,) = env.server.connections
            (relay,) = [s.get_protocol() for s in conn.streams.values()]
            assert 0 < len(relay._targets) <= 4

    asyncio.run(main())


@pytest.mark.parametrize("policy", [{"allow_private": False}, {"deny_private": True}])
def test_deny_private_applies_to_udp(
    policy: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "anytls.udp")

    async def main() -> None:
        async with Env(**policy) as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client)
            assoc.sendto(b"to loopback", (echo[0], echo[1]))
            assoc.sendto(b"again", (echo[0], echo[1]))  # a refusal is never remembered
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await assoc.recvfrom()
            assert echo.stats.datagrams == 0
            # said at INFO once for the address, with the way out
            said = [
                r for r in caplog.records if r.levelno == logging.INFO and "dropping" in r.message
            ]
            assert len(said) == 1, said
            assert f"to {echo[0]}: a private" in said[0].message
            assert "--allow-private" in said[0].message
            connected = await open_udp(env.client, connect=("127.0.0.1", echo[1]))
            connected.send(b"x")
            with pytest.raises(StreamClosedError):
                async with asyncio.timeout(5):
                    await connected.recvfrom()
            assert echo.stats.datagrams == 0

    asyncio.run(main())


def test_a_failing_datagram_handler_ends_only_its_association() -> None:
    async def main() -> None:
        async with Env() as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client)

            def broken(payload: bytes, source: Address) -> None:
                raise RuntimeError("handler bug")

            assoc.set_datagram_handler(broken)
            assoc.sendto(b"boom", echo)
            with pytest.raises(StreamClosedError):
                await asyncio.wait_for(assoc.recvfrom(), 5)
            (conn,) = env.client.sessions.values()
            assert not conn.is_closed  # the TLS session and its other streams live on
            other = await open_udp(env.client)
            other.sendto(b"still fine", echo)
            assert (await asyncio.wait_for(other.recvfrom(), 5))[0] == b"still fine"
            assert env.client.sessions_opened == 1
            other.close()

    asyncio.run(main())


async def _relay(env: Env) -> uot_server.UotServerRelay:
    """The server side of the one UDP stream (once it is there)."""

    def relays() -> list[uot_server.UotServerRelay]:
        protocols = [s.get_protocol() for c in env.server.connections for s in c.streams.values()]
        return [p for p in protocols if isinstance(p, uot_server.UotServerRelay)]

    await wait_until(lambda: len(relays()) == 1)
    (relay,) = relays()
    return relay


def test_datagrams_to_ever_new_names_do_not_queue_lookups_without_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        release, asked = stall_lookups(monkeypatch, [(socket.AF_INET, "127.0.0.1")])
        async with Env() as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client, resolve_domains=False)  # names to the server
            for i in range(100):
                assoc.sendto(b"x" * 1000, (f"n{i}.example", echo[1]))
            relay = await _relay(env)
            await wait_until(lambda: relay.datagrams_dropped >= 100 - uot_server.NAMES_IN_FLIGHT)
            assert len(relay.waiting) == uot_server.NAMES_IN_FLIGHT
            # the session's lookup slots: 8 under way, the other waiting names queued
            assert len(asked) == LOOKUPS_PER_SESSION
            assert relay.datagrams_dropped == 100 - uot_server.NAMES_IN_FLIGHT
            release.set()  # the resolver answers: what waited goes out, new names work
            async with asyncio.timeout(5):
                got = [(await assoc.recvfrom())[0] for _ in range(uot_server.NAMES_IN_FLIGHT)]
            assert got == [b"x" * 1000] * uot_server.NAMES_IN_FLIGHT
            assert relay._held == 0 and not relay.waiting

    asyncio.run(main())


def test_datagrams_waiting_for_a_connect_target_are_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        release, _ = stall_lookups(monkeypatch, [(socket.AF_INET, "127.0.0.1")])
        async with Env() as env, udp_echo_server() as echo:
            udp = await open_udp(env.client, connect=("slow.example", echo[1]))
            for _ in range(200):  # 12 MB while the name is looked up
                udp.send(bytes(60_000))
            relay = await _relay(env)
            await wait_until(lambda: relay.datagrams_dropped + len(relay.queue) == 200)
            assert relay._held <= uot_server.WAITING_BYTES
            assert len(relay.queue) == uot_server.WAITING_BYTES // 60_000
            release.set()
            async with asyncio.timeout(5):
                assert len((await udp.recvfrom())[0]) == 60_000
            await wait_until(lambda: relay._held == 0)
            assert relay._held == 0

    asyncio.run(main())


def test_a_malformed_reply_address_ends_the_association_with_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server's reply whose source name has a control character: the SOCKS5 relay's
    # packet handler cannot re-frame it.
    caplog.set_level(logging.INFO, "anytls.udp")

    async def main() -> None:
        async with Env() as env:
            assoc = await open_udp(env.client)
            relayed: list[bytes] = []
            assoc.set_packet_handler(
                lambda packet: relayed.append(packet_to_socks_datagram(packet))
            )
            good = encode_packet(Address("ab.example", 53), b"reply")
            assoc.data_received(good)
            assoc.data_received(good.replace(b"ab.example", b"a\nb.exampl"))
            assert len(relayed) == 1
            assert isinstance(assoc.error, RemoteProtocolError)

    asyncio.run(main())
    lines = [r for r in caplog.records if "malformed UoT data from the server" in r.message]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_datagrams_to_a_name_keep_their_order_when_the_answer_lands() -> None:
    # The lookup's answer is cached a loop iteration before the datagrams waiting for it
    # are sent: one sent in between must queue behind them, not overtake them (seen once
    # as a reply out of order in the sing-box interop matrix of a loaded CI run).
    async def main() -> None:
        async with Env() as env:
            assoc = await open_udp(env.client)
            written: list[bytes] = []
            assoc._write = written.append  # type: ignore[method-assign]
            answer = asyncio.get_running_loop().create_future()

            async def resolve(host: str) -> list[tuple[int, str]]:
                return await answer  # type: ignore[no-any-return]

            assoc._dns.resolve = resolve  # type: ignore[method-assign]
            assoc.sendto(b"first", ("name.example", 53))
            await asyncio.sleep(0)
            # the answer is in the cache, the waiting datagram not yet sent
            assoc._dns._entries["name.example"] = (
                time.monotonic() + 60,
                [(socket.AF_INET, "192.0.2.7")],
            )
            assoc.sendto(b"second", ("name.example", 53))
            answer.set_result([(socket.AF_INET, "192.0.2.7")])
            await wait_until(lambda: len(written) == 2)
            assert written[0].endswith(b"first") and written[1].endswith(b"second")

    asyncio.run(main())


def test_a_closed_udp_stream_lets_go_of_its_lookups_and_waiting_datagrams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        release, _ = stall_lookups(monkeypatch, [(socket.AF_INET, "127.0.0.1")])
        async with Env() as env, udp_echo_server() as echo:
            assoc = await open_udp(env.client, resolve_domains=False)
            for i in range(16):
                assoc.sendto(bytes(10_000), (f"n{i}.example", echo[1]))
            relay = await _relay(env)
            await wait_until(lambda: len(relay.waiting) == 16)
            (conn,) = env.server.connections
            assert conn.dial_buffered == 160_000
            assoc.close()
            await wait_until(lambda: relay.closed and not relay._slow)
            assert not relay._slow and not relay.waiting and relay._held == 0
            assert conn.dial_buffered == 0
            release.set()
            await asyncio.sleep(0.1)
            assert relay.datagrams_out == 0  # nothing sent for the closed stream

    asyncio.run(main())
