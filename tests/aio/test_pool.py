"""Session pool, SYNACK watchdog with retry, heartbeats and v1 negotiation, ours ↔ ours."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from dataclasses import replace
from typing import Any

import pytest

from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from anytls.aio.udp import open_udp
from anytls.core.address import Address
from anytls.errors import SessionClosedError, StreamOpenError
from tests.helpers.aio import ClockLoop, run_async, wait_until
from tests.helpers.echo import blackhole, refused_port, tcp_echo_server

PASSWORD = "pool-pw"


async def start(**server_kwargs: object) -> tuple[AnyTLSServer, int]:
    server = await serve(
        ServerConfig(users={"u": PASSWORD}, **{"allow_private": True, **server_kwargs}),
        "127.0.0.1",
        0,
    )  # type: ignore[arg-type]
    return server, server.sockets[0].getsockname()[1]


def client_for(port: int, **kwargs: object) -> Client:
    return Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, **kwargs))  # type: ignore[arg-type]


async def ping(client: Client, echo: tuple[str, int], data: bytes = b"ping") -> None:
    reader, writer = await client.open_connection(echo[0], echo[1])
    writer.write(data)
    assert await reader.readexactly(len(data)) == data
    writer.close()
    await asyncio.sleep(0)  # let the FIN go out and the session go idle


def test_sequential_streams_reuse_one_session() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port) as client:
            for _ in range(20):
                await ping(client, echo)
            assert client.sessions_opened == 1
            assert server.sessions_accepted == 1
        await server.close()

    asyncio.run(main())


@pytest.mark.parametrize("fingerprint", ["chrome", "openssl"])
def test_a_server_name_is_looked_up_once_for_its_concurrent_sessions(
    monkeypatch: pytest.MonkeyPatch, fingerprint: str
) -> None:
    """The server given by name: its sessions (one per busy stream) share one lookup by
    the system's resolver and connect to an address (left to curl, each session waited
    for DNS queries of its own), IPv4 first. An address that does not answer: the session
    goes on to the next one, and later sessions look the name up again and try it last."""
    from anytls.aio import outbound

    names = {
        "both.test": [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")],
        "dead-first.test": [(socket.AF_INET, "127.0.0.2"), (socket.AF_INET, "127.0.0.1")],
    }
    lookups: list[str] = []

    async def resolver(host: str, port: int | None, kind: int) -> list[tuple[int, str]]:
        lookups.append(host)
        return names[host]

    monkeypatch.setattr(outbound, "lookup", resolver)
    dialled: list[str] = []
    real_connect = Client._connect

    async def recording(self: Client, seq: int, address: str, *args: Any) -> Any:
        dialled.append(address)
        return await real_connect(self, seq, address, *args)

    monkeypatch.setattr(Client, "_connect", recording)

    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo:
            config = ClientConfig(
                "both.test",
                port,
                PASSWORD,
                insecure=True,
                reuse_sessions=False,
                fingerprint=fingerprint,
            )
            async with Client(config) as client:
                await asyncio.gather(*(ping(client, echo) for _ in range(5)))
                await ping(client, echo)
                assert client.sessions_opened == 6
                peers = {c.get_extra_info("peername")[0] for c in client.sessions.values()}
                assert peers <= {"127.0.0.1"}
            assert lookups == ["both.test"]
            assert dialled == ["127.0.0.1"] * 6
            lookups.clear()
            dialled.clear()
            config = replace(config, server_host="dead-first.test")
            async with Client(config) as client:
                await ping(client, echo)  # nobody listens on 127.0.0.2: the next one
                assert lookups == ["dead-first.test"]
                assert dialled == ["127.0.0.2", "127.0.0.1"]
                await ping(client, echo)  # looked up again, 127.0.0.2 now last
            assert lookups == ["dead-first.test"] * 2
            assert dialled == ["127.0.0.2", "127.0.0.1", "127.0.0.1"]
        await server.close()

    asyncio.run(main())


def test_an_invalid_server_name_is_a_session_error() -> None:
    """A name the resolver cannot even encode (a label over 63 characters) fails the
    session with the reason, like a name that does not resolve."""

    async def main() -> None:
        config = ClientConfig("a" * 64 + ".test", 443, PASSWORD, insecure=True)
        async with Client(config) as client:
            with pytest.raises(SessionClosedError, match="cannot resolve the server's name"):
                await client.open_stream(Address("127.0.0.1", 9))

    asyncio.run(main())


def test_reuse_disabled_opens_a_session_per_stream() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port, reuse_sessions=False) as client:
            for _ in range(3):
                await ping(client, echo)
            assert client.sessions_opened == 3
        await server.close()

    asyncio.run(main())


def test_idle_expiry_keeps_min_idle_newest() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port, min_idle_session=1) as client:
            await asyncio.gather(*(ping(client, echo) for _ in range(3)))
            await wait_until(lambda: len(client.idle) == 3)
            assert len(client.idle) == 3
            for conn in client.idle:
                assert conn.idle_since is not None
                conn.idle_since -= 1000  # long expired
            newest = max(client.sessions)
            client.reap()
            await wait_until(lambda: list(client.sessions) == [newest])
            assert list(client.sessions) == [newest]
            # without min idle, the last one goes too
            client.policy = ClientConfig("h", 1, "p").policy()
            client.sessions[newest].idle_since -= 1000  # type: ignore[operator]
            client.reap()
            await wait_until(lambda: client.sessions == {})
            assert client.sessions == {}
            # and a new request simply opens a new session
            await ping(client, echo)
            assert client.sessions_opened == 4
        await server.close()

    asyncio.run(main())


def test_dead_session_leaves_pool_at_once() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port) as client:
            await ping(client, echo)
            (conn,) = client.sessions.values()
            for sconn in list(server.connections):
                sconn.close("test", abort=True)
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert client.sessions == {}
            await ping(client, echo)
            assert client.sessions_opened == 2
        await server.close()

    asyncio.run(main())


def test_watchdog_closes_stalled_session_and_retry_succeeds() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port, synack_timeout=0.3) as client:
            await ping(client, echo)
            # The server silently stops reading this session: the tunnel is dead.
            (sconn,) = server.connections
            assert sconn.transport is not None
            sconn.transport.pause_reading()
            started = time.monotonic()
            await ping(client, echo, b"after the stall")
            elapsed = time.monotonic() - started
            assert 0.3 <= elapsed < 3
            assert client.streams_retried == 1
            assert client.sessions_opened == 2
        await server.close()

    asyncio.run(main())


def test_many_streams_share_sessions_with_a_cap() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo:
            results = {}
            modes: dict[str, dict[str, int]] = {
                "go": {"max_handshakes": 0},  # one session per busy stream
                "default": {},  # at most 16 handshakes at a time, then shared
                "cap": {"max_handshakes": 0, "max_streams_per_session": 50},
            }
            for name, kwargs in modes.items():
                async with client_for(port, **kwargs) as client:
                    started = time.monotonic()
                    await asyncio.gather(*(ping(client, echo, b"x" * 1000) for _ in range(200)))
                    results[name] = (client.sessions_opened, time.monotonic() - started)
            assert results["go"][0] >= 100  # Go behaviour: about one session per stream
            # All 200 arrive before a handshake ends: they share the first 16 sessions.
            assert results["default"][0] == 16
            assert results["cap"][0] <= 8
            print(f"200 parallel streams: {results}")
        await server.close()

    asyncio.run(main())


def test_handshake_cap_shares_only_while_the_cap_is_reached() -> None:
    """Below the cap every busy stream gets a session of its own; at the cap streams
    wait for the session being set up with the fewest waiting, and each stream's bytes
    stay its own."""

    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port, max_handshakes=3) as client:
            # Three at once: under the cap, three sessions, as the Go clients.
            first = await asyncio.gather(
                *(client.open_connection(echo[0], echo[1]) for _ in range(3))
            )
            assert client.sessions_opened == 3
            assert sorted(len(c.streams) for c in client.sessions.values()) == [1, 1, 1]
            # Three busy sessions, none being set up: the next burst starts three
            # more, then shares them: 9 streams spread 3/3/3 over the new sessions.
            burst = await asyncio.gather(
                *(client.open_connection(echo[0], echo[1]) for _ in range(9))
            )
            assert client.sessions_opened == 6
            assert sorted(len(c.streams) for c in client.sessions.values()) == [
                1, 1, 1, 3, 3, 3,
            ]  # fmt: skip
            for n, (_, writer) in enumerate(first + burst):
                writer.write(b"stream %d" % n)
            for n, (reader, writer) in enumerate(first + burst):
                assert await reader.readexactly(len(b"stream %d" % n)) == b"stream %d" % n
                writer.close()
        await server.close()

    asyncio.run(main())


def test_a_failing_burst_costs_only_the_capped_handshakes() -> None:
    """A wrong password: the streams that shared a new session fail with it, and are not
    retried on fresh sessions as streams of a stale pooled session would be."""

    async def main() -> None:
        server, port = await start()
        config = ClientConfig("127.0.0.1", port, "wrong-password", insecure=True)
        async with Client(replace(config, max_handshakes=3)) as client:
            results = await asyncio.gather(
                *(client.open_connection("127.0.0.1", 9) for _ in range(12)),
                return_exceptions=True,
            )
            assert all(isinstance(r, SessionClosedError) for r in results), results
            assert client.sessions_opened == 3
            assert client.streams_retried == 0
            assert client._joinable == []
        await server.close()

    asyncio.run(main())


def test_streams_that_give_up_stop_counting_for_a_handshake() -> None:
    """Cancelled waiters leave the handshake's count; one nobody waits for any more is
    still joined, and its failure, when all gave up, is not reported as unretrieved."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: unhandled.append(context))
        hole = blackhole()
        config = ClientConfig("127.0.0.1", hole.port, PASSWORD, insecure=True, connect_timeout=0.5)
        try:
            async with Client(replace(config, max_handshakes=1)) as client:
                waiters = [loop.create_task(client.acquire_session()) for _ in range(4)]
                await asyncio.sleep(0.05)
                (handshake,) = client._joinable
                assert handshake.claims == 4
                for task in waiters[1:3]:
                    task.cancel()
                await asyncio.sleep(0)
                assert handshake.claims == 2
                for task in (waiters[0], waiters[3]):
                    task.cancel()
                await asyncio.sleep(0)
                assert handshake.claims == 0
                # Still under way, with nobody waiting: the next stream joins it.
                late = loop.create_task(client.acquire_session())
                await asyncio.sleep(0)
                assert client._joinable == [handshake]
                assert handshake.claims == 1
                late.cancel()
                await asyncio.sleep(0.8)  # the handshake times out, with nobody waiting
                assert handshake.task.done()
                assert client._joinable == []
                assert client.sessions_opened == 0
                del handshake, waiters, late
            gc.collect()
            await asyncio.sleep(0)
            assert unhandled == []
        finally:
            hole.close()

    asyncio.run(main())


def test_a_udp_association_never_shares_a_session_being_set_up() -> None:
    """At the handshake cap a TCP stream shares the session being set up; a UDP
    association waits for none and nobody waits for its own, but it takes an idle
    pooled session."""

    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port, max_handshakes=1) as client:
            # TCP first: the association does not join the TCP stream's handshake.
            tcp, udp = await asyncio.gather(
                client.open_connection(echo[0], echo[1]), open_udp(client)
            )
            assert client.sessions_opened == 2
            assert udp.stream.connection is not tcp[1].transport.connection
            # UDP first: the TCP stream does not join the association's handshake.
            udp2, tcp2 = await asyncio.gather(
                open_udp(client), client.open_connection(echo[0], echo[1])
            )
            assert client.sessions_opened == 4
            assert sorted(len(c.streams) for c in client.sessions.values()) == [1, 1, 1, 1]
            for assoc in (udp, udp2):
                assoc.close()
            for _, writer in (tcp, tcp2):
                writer.close()
            # Idle sessions in the pool: an association takes one, no handshake.
            await wait_until(lambda: all(not c.streams for c in client.sessions.values()))
            again = await open_udp(client)
            assert client.sessions_opened == 4
            again.close()
        await server.close()

    asyncio.run(main())


def test_heartbeats_keep_session_and_detect_a_dead_one() -> None:
    """Client heartbeats with the reference's timings, on a clock the test moves."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ClockLoop)
        server, port = await start()
        async with (
            tcp_echo_server() as echo,
            client_for(port, heartbeat_interval=30.0, heartbeat_timeout=10.0) as client,
        ):
            # A stream stays open, so the pool's idle reaping (30 s) leaves the session be.
            reader, writer = await client.open_connection(*echo)
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            (conn,) = client.sessions.values()
            loop.advance(29)  # not silent long enough yet
            await asyncio.sleep(0.05)  # time for a wrong heartbeat to be answered: none is
            assert conn.heartbeats_answered == 0
            for answered in (1, 2):
                loop.advance(31)
                await wait_until(lambda n=answered: conn.heartbeats_answered == n)
                assert conn.heartbeats_answered == answered
            assert not conn.is_closed
            (sconn,) = server.connections
            assert sconn.transport is not None
            sconn.transport.pause_reading()  # the server stops answering
            loop.advance(31)  # the next heartbeat goes out ...
            await asyncio.sleep(0.05)  # real time passes, the clock does not: no close yet
            assert not conn.is_closed
            loop.advance(11)  # ... and is not answered within 10 s
            await wait_until(lambda: conn.is_closed)
            assert conn.is_closed and client.sessions == {}
            writer.close()
        await server.close()

    run_async(main, timeout=None, loop_factory=ClockLoop)


def test_server_heartbeat_closes_a_silent_client() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ClockLoop)
        server, port = await start(heartbeat_interval=60.0, heartbeat_timeout=10.0)
        async with tcp_echo_server() as echo, client_for(port) as client:
            reader, writer = await client.open_connection(*echo)  # kept open: not idle
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            (conn,) = client.sessions.values()
            (sconn,) = server.connections
            loop.advance(61)  # the server asks; the client answers
            await wait_until(lambda: sconn.core.last_activity >= loop.time() - 1)
            assert not sconn.is_closed
            assert conn.transport is not None
            conn.transport.pause_reading()  # the client goes deaf
            loop.advance(61)
            await asyncio.sleep(0.05)  # real time for the unanswered heartbeat to leave
            loop.advance(11)
            await wait_until(lambda: sconn.is_closed)
            assert sconn.is_closed
            conn.transport.resume_reading()  # hears the close at once
            await wait_until(lambda: conn.is_closed)
            writer.close()
        await server.close()

    run_async(main, timeout=None, loop_factory=ClockLoop)


@pytest.mark.parametrize("side", ["server", "client"])
def test_v1_peer_gets_no_synack_and_is_not_waited_for(side: str) -> None:
    async def main() -> None:
        server, port = await start(version=1 if side == "server" else 2)
        kwargs = {"version": 1} if side == "client" else {}
        async with tcp_echo_server() as echo, client_for(port, **kwargs) as client:
            await ping(client, echo)
            (conn,) = client.sessions.values()
            assert conn.core.peer_version in (0, 1)
            (sconn,) = server.connections
            assert sconn.core.peer_version == 1
            # reused session, no SYNACK ever: no watchdog, the stream still works
            started = time.monotonic()
            for _ in range(3):
                await ping(client, echo)
            assert time.monotonic() - started < 1.0
            assert client.sessions_opened == 1
            # a refused destination cannot be reported by a v1 server: the stream just ends
            reader, _ = await client.open_connection("127.0.0.1", refused_port())
            assert await asyncio.wait_for(reader.read(), 5) == b""
        await server.close()

    asyncio.run(main())


def test_v2_refused_is_reported_on_reused_session() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port) as client:
            await ping(client, echo)
            with pytest.raises(StreamOpenError, match="refused"):
                await client.open_connection("127.0.0.1", refused_port())
            assert client.sessions_opened == 1
        await server.close()

    asyncio.run(main())


def test_server_reaps_idle_sessions() -> None:
    async def main() -> None:
        server, port = await start(idle_session_timeout=0.3)
        async with tcp_echo_server() as echo, client_for(port) as client:
            await ping(client, echo)
            (conn,) = client.sessions.values()
            await asyncio.wait_for(conn.wait_closed(), 3)
            assert server.connections == set()
        await server.close()

    asyncio.run(main())


def test_server_caps_streams_per_session() -> None:
    async def main() -> None:
        server, port = await start(max_streams_per_session=2)
        async with (
            tcp_echo_server() as echo,
            client_for(port, max_streams_per_session=10) as client,
        ):
            first = [await client.open_connection(*echo) for _ in range(2)]
            with pytest.raises(StreamOpenError, match="too many streams"):
                await client.open_connection(*echo)
            for _, writer in first:
                writer.close()
        await server.close()

    asyncio.run(main())


def test_unacknowledged_stream_times_out_and_the_session_stays_usable() -> None:
    async def main() -> None:
        server, port = await start(connect_timeout=30.0)
        hole = blackhole()
        async with tcp_echo_server() as echo, client_for(port, ack_timeout=0.5) as client:
            await ping(client, echo)  # the pooled session is known to be v2
            started = time.monotonic()
            with pytest.raises(StreamOpenError, match=r"did not acknowledge .* within 0\.5 s"):
                await client.open_connection("127.0.0.1", hole.port)
            assert 0.4 < time.monotonic() - started < 3
            (conn,) = client.sessions.values()
            assert conn.streams == {}  # the timed-out stream was closed
            await ping(client, echo)
            assert client.sessions_opened == 1
        hole.close()
        await server.close()

    asyncio.run(main())


def test_cancelled_open_closes_its_stream_on_both_sides() -> None:
    async def main() -> None:
        server, port = await start(connect_timeout=30.0)
        hole = blackhole()
        async with tcp_echo_server() as echo, client_for(port) as client:
            await ping(client, echo)
            opening = asyncio.create_task(client.open_connection("127.0.0.1", hole.port))
            await wait_until(lambda: server.open_streams, 1)
            assert server.open_streams == 1  # the server is dialling the black hole
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            (conn,) = client.sessions.values()
            assert conn.streams == {}
            await wait_until(lambda: not server.open_streams, 1)
            assert server.open_streams == 0  # FIN arrived, the dial was abandoned
        hole.close()
        await server.close()

    asyncio.run(main())


@pytest.mark.parametrize("max_streams", [1, 3])
def test_pool_pick_matches_the_policy_as_streams_come_and_go(max_streams: int) -> None:
    async def main() -> None:
        server, port = await start()
        async with (
            tcp_echo_server() as echo,
            client_for(port, max_streams_per_session=max_streams) as client,
        ):

            def agrees() -> bool:
                expected = client.policy.choose([c.info() for c in client.sessions.values()])
                picked = client._choose()
                return (picked.seq if picked else None) == expected

            opened = await asyncio.gather(*(client.open_connection(*echo) for _ in range(12)))
            assert agrees()
            for i, (reader, writer) in enumerate(opened):
                writer.write(b"x")
                assert await reader.readexactly(1) == b"x"
                if i % 3 == 0:
                    writer.close()
                    await writer.wait_closed()
                    assert agrees()
            newest = max(client.sessions)
            client.sessions[newest].close("test")
            assert agrees()
            for _, writer in opened:
                writer.close()
            # (those of the closed session end with its SessionClosedError)
            await asyncio.gather(*(w.wait_closed() for _, w in opened), return_exceptions=True)
            await wait_until(lambda: newest not in client.sessions)
            assert agrees()
            await ping(client, echo)
            assert agrees()
        await server.close()

    asyncio.run(main())


class Opened:
    """Collects what :meth:`Client.open_stream_then` reports."""

    def __init__(self) -> None:
        self.future: asyncio.Future[tuple[object, object]] = (
            asyncio.get_running_loop().create_future()
        )

    def __call__(self, stream: object, exc: object) -> None:
        assert not self.future.done(), "done() called twice"
        self.future.set_result((stream, exc))

    async def result(self) -> tuple[object, object]:
        return await asyncio.wait_for(self.future, 10)


async def echo_through(stream: object, data: bytes) -> bytes:
    from anytls.aio.stream import Stream

    assert isinstance(stream, Stream)
    got = bytearray()
    arrived = asyncio.Event()

    class Sink(asyncio.Protocol):
        def data_received(self, chunk: bytes) -> None:
            got.extend(chunk)
            if len(got) >= len(data):
                arrived.set()

    stream.set_protocol(Sink())
    stream.write(data)
    await asyncio.wait_for(arrived.wait(), 10)
    stream.close()
    return bytes(got)


def test_open_stream_then_uses_no_task_on_a_pooled_session() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port) as client:
            first = Opened()
            pending = client.open_stream_then(Address(*echo), first)
            assert pending.task is not None  # no session yet: opened in a task
            stream, exc = await first.result()
            assert exc is None and await echo_through(stream, b"one") == b"one"
            await wait_until(lambda: client.idle)  # back in the pool
            second = Opened()
            pending = client.open_stream_then(Address(*echo), second)
            assert pending.task is None and pending.stream is not None  # callback path
            stream, exc = await second.result()
            assert exc is None and await echo_through(stream, b"two") == b"two"
            assert client.sessions_opened == 1
            await wait_until(lambda: client.idle)
            refused = Opened()
            pending = client.open_stream_then(Address("127.0.0.1", refused_port()), refused)
            assert pending.task is None
            stream, exc = await refused.result()
            assert stream is None
            assert isinstance(exc, StreamOpenError) and "refused" in str(exc)
        await server.close()

    asyncio.run(main())


def test_open_stream_then_retries_once_when_the_pooled_session_is_dead() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo, client_for(port, synack_timeout=0.3) as client:
            await ping(client, echo)
            (sconn,) = server.connections
            assert sconn.transport is not None
            sconn.transport.pause_reading()  # the pooled session's tunnel is dead
            opened = Opened()
            pending = client.open_stream_then(Address(*echo), opened)
            assert pending.task is None
            stream, exc = await opened.result()
            assert exc is None
            assert await echo_through(stream, b"after the stall") == b"after the stall"
            assert client.streams_retried == 1 and client.sessions_opened == 2
        await server.close()

    asyncio.run(main())


def test_open_stream_then_cancel_closes_the_stream_and_stays_silent() -> None:
    async def main() -> None:
        server, port = await start(connect_timeout=30.0)
        hole = blackhole()
        async with tcp_echo_server() as echo, client_for(port) as client:
            await ping(client, echo)
            opened = Opened()
            pending = client.open_stream_then(Address("127.0.0.1", hole.port), opened)
            assert pending.stream is not None
            await wait_until(lambda: server.open_streams, 1)
            pending.cancel()
            assert pending.stream.is_closing()
            await wait_until(lambda: not server.open_streams, 1)
            assert server.open_streams == 0
            assert not opened.future.done()  # a cancelled open reports nothing
        hole.close()
        await server.close()

    asyncio.run(main())


def test_open_stream_then_closes_a_stream_that_arrives_after_cancel() -> None:
    from anytls.aio.client import PendingOpen

    class FakeStream:
        closed = False

        def close(self) -> None:
            self.closed = True

    async def main() -> None:
        fake = FakeStream()

        async def opened() -> FakeStream:
            return fake

        pending = PendingOpen(None, Address("127.0.0.1", 1), lambda s, e: None)  # type: ignore[arg-type]
        task = asyncio.get_running_loop().create_task(opened())
        await asyncio.wait([task])
        pending.task = task  # type: ignore[assignment]
        pending.cancel()  # the local client left just as the task finished
        pending._task_done(task)  # type: ignore[arg-type]
        assert fake.closed

    asyncio.run(main())


def test_cancel_during_the_version_probe_closes_the_stream() -> None:
    from anytls.aio.tls import server_context

    async def main() -> None:
        ctx = server_context()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # TLS up, then never a frame: the version stays unknown

        silent_server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=ctx)
        port = silent_server.sockets[0].getsockname()[1]
        async with client_for(port) as client:
            opening = asyncio.create_task(client.open_connection("127.0.0.1", 9))
            await wait_until(
                lambda: client.sessions and next(iter(client.sessions.values())).streams, 1
            )
            (conn,) = client.sessions.values()
            assert conn.streams and not conn.version_known.done()  # inside the probe
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
            assert conn.streams == {}
        silent_server.close()

    asyncio.run(main())


def test_a_cancelled_acknowledgement_is_reported_not_dropped() -> None:
    from anytls.errors import StreamClosedError

    async def main() -> None:
        server, port = await start(connect_timeout=30.0)
        hole = blackhole()
        async with tcp_echo_server() as echo, client_for(port) as client:
            await ping(client, echo)
            opened = Opened()
            pending = client.open_stream_then(Address("127.0.0.1", hole.port), opened)
            assert pending.stream is not None
            pending.stream.acknowledged.cancel()
            stream, exc = await opened.result()
            assert stream is None and isinstance(exc, StreamClosedError)
            assert pending.stream.is_closing()
        hole.close()
        await server.close()

    asyncio.run(main())
