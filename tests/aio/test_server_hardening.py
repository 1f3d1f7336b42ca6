"""Hostile and broken input against our server: bounded time, clean close, nothing leaked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import time

import pytest

from anytls.aio import server as server_module
from anytls.aio.client import Client, ClientConfig
from anytls.aio.server import AnyTLSServer, ServerConfig, serve
from anytls.aio.tls import server_context
from anytls.core.address import Address
from anytls.core.auth import build_preface
from anytls.core.constants import Command
from anytls.core.frame import encode_frame
from anytls.errors import StreamOpenError
from tests.helpers.aio import wait_until
from tests.helpers.echo import tcp_echo_server
from tests.helpers.httpd import http_server
from tests.helpers.net import free_port
from tests.helpers.resolver import stall_lookups

PASSWORD = "hard-pw"


async def start(**kwargs: object) -> tuple[AnyTLSServer, int]:
    config = ServerConfig(users={"u": PASSWORD}, **{"allow_private": True, **kwargs})  # type: ignore[arg-type]
    server = await serve(config, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def insecure() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def tls_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=insecure())


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Read until EOF (or reset); fail if it takes longer than ``seconds``."""
    data = b""
    async with asyncio.timeout(seconds):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except (ConnectionError, ssl.SSLError):
            pass
    return data


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="anytls")
    return caplog


def rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("rejected")]


@pytest.mark.parametrize(
    "payload",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3, os.urandom(200), build_preface("nope", 30)],
    ids=["http", "random", "wrong-password"],
)
def test_unauthenticated_input_closed_with_one_log_line(
    payload: bytes, info_logs: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server, port = await start()
        reader, writer = await tls_connect(port)
        writer.write(payload)
        assert await closed_within(reader, 3) == b""  # no reply at all
        writer.close()
        await wait_until(lambda: server.connections == set())
        assert server.connections == set()
        await server.close()

    asyncio.run(main())
    lines = rejected_lines(info_logs)
    assert len(lines) == 1 and "127.0.0.1:" in lines[0]


def test_plain_tcp_without_tls_is_dropped() -> None:
    async def main() -> None:
        server, port = await start(handshake_timeout=1.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        await closed_within(reader, 3)
        assert time.monotonic() - started < 3
        writer.close()
        # silence after connecting: the handshake timeout ends it
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await closed_within(reader, 3)
        writer.close()
        await server.close()

    asyncio.run(main())


def test_trickled_preface_hits_the_timeout(info_logs: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server, port = await start(preface_timeout=0.6)
        reader, writer = await tls_connect(port)
        preface = build_preface(PASSWORD, 30)
        started = time.monotonic()

        async def trickle() -> None:
            for i in range(len(preface)):
                writer.write(preface[i : i + 1])
                await asyncio.sleep(0.1)  # the tested behaviour: one byte every 0.1 s

        task = asyncio.create_task(trickle())
        await closed_within(reader, 3)
        task.cancel()
        assert 0.5 < time.monotonic() - started < 2
        writer.close()
        await server.close()

    asyncio.run(main())
    assert any("no auth preface" in line for line in rejected_lines(info_logs))


def test_syn_before_settings_gets_alert_and_close() -> None:
    async def main() -> None:
        server, port = await start()
        reader, writer = await tls_connect(port)
        writer.write(build_preface(PASSWORD, 0) + encode_frame(Command.SYN, 1))
        data = await closed_within(reader, 3)
        assert data.startswith(bytes([Command.ALERT]))
        assert b"did not send its settings" in data
        writer.close()
        await server.close()

    asyncio.run(main())


def test_garbage_frames_after_auth_do_not_hurt_other_streams() -> None:
    async def main() -> None:
        server, port = await start()
        async with (
            tcp_echo_server() as echo,
            Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True)) as client,
        ):
            reader, writer = await client.open_connection(*echo)
            # a second, raw session sends frames with unknown commands and oversized lengths
            _, raw_writer = await tls_connect(port)
            raw_writer.write(
                build_preface(PASSWORD, 0)
                + encode_frame(Command.SETTINGS, 0, b"v=2")
                + encode_frame(200, 9, b"x" * 100)
                + encode_frame(Command.PSH, 12345, b"y" * 65535)
                + encode_frame(Command.FIN, 777)
                + bytes([Command.SYNACK])
                + b"\xff\xff\xff\xff\xff\xff"  # declares 65535
            )
            raw_writer.write(os.urandom(70_000))
            writer.write(b"still fine" * 1000)
            assert await reader.readexactly(10_000) == b"still fine" * 1000
            raw_writer.close()
            writer.close()
        await server.close()

    asyncio.run(main())


def test_fallback_relays_probe_to_a_real_web_server(info_logs: pytest.LogCaptureFixture) -> None:
    async def main(web: tuple[str, int]) -> None:
        server, port = await start(fallback=Address(web[0], web[1]))
        reader, writer = await tls_connect(port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        response = await closed_within(reader, 5)
        assert response.startswith(b"HTTP/1.")
        assert b" 200 " in response.split(b"\r\n", 1)[0]
        writer.close()
        # an authenticated client still works on the same port
        async with (
            tcp_echo_server() as echo,
            Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True)) as client,
        ):
            r, w = await client.open_connection(*echo)
            w.write(b"ok")
            assert await r.readexactly(2) == b"ok"
            w.close()
        await server.close()

    with http_server() as web:
        asyncio.run(main(web))
        assert any(path == "/hello" for _, path, _ in web.requests)
    assert any("fallback" in line for line in rejected_lines(info_logs))


@pytest.mark.parametrize("policy", [{"allow_private": False}, {"deny_private": True}])
def test_deny_private_refuses_loopback_destinations(policy: dict[str, bool]) -> None:
    async def main() -> None:
        server, port = await start(**policy)
        async with (
            tcp_echo_server() as echo,
            Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True)) as client,
        ):
            for host in ("127.0.0.1", "localhost", "::1"):
                with pytest.raises(StreamOpenError, match="not allowed"):
                    await client.open_connection(host, echo[1])
            assert echo.stats.connections == 0
        await server.close()

    asyncio.run(main())


def test_connection_limit() -> None:
    async def main() -> None:
        server, port = await start(max_connections=2)
        held = [await tls_connect(port) for _ in range(2)]
        reader, writer = await tls_connect(port)
        await closed_within(reader, 3)
        writer.close()
        for _, w in held:
            w.close()
        await server.close()

    asyncio.run(main())


def test_vanished_client_frees_everything() -> None:
    async def main() -> None:
        server, port = await start()
        async with tcp_echo_server() as echo:
            client = Client(
                ClientConfig("127.0.0.1", port, PASSWORD, insecure=True, max_streams_per_session=20)
            )
            pairs = [await client.open_connection(*echo) for _ in range(20)]
            for r, w in pairs:
                w.write(b"x")
                await r.readexactly(1)
            assert echo.stats.active == 20
            (sconn,) = server.connections
            for conn in client.sessions.values():
                assert conn.transport is not None
                conn.transport.abort()  # the client vanishes: no FIN, no close_notify
            await wait_until(lambda: not server.connections and not echo.stats.active, 5)
            assert not server.connections and not echo.stats.active
            assert sconn.streams == {} and sconn.tasks == set()
            await client.close()
        await server.close()

    asyncio.run(main())


async def _attempt(port: int, payload: bytes, echoed: bool = False) -> tuple[bytes, str]:
    """What a client sees after sending ``payload``: the bytes and how the connection ended.

    ``echoed``: the fallback is an echo server; read back as many bytes as were sent.
    """
    reader, writer = await tls_connect(port)
    writer.write(payload)
    data, ending = b"", "eof"
    async with asyncio.timeout(5):
        try:
            if echoed:
                data = await reader.readexactly(len(payload))
                ending = "echoed"
            else:
                while chunk := await reader.read(65536):
                    data += chunk
        except (ConnectionError, ssl.SSLError) as exc:
            ending = type(exc).__name__
    writer.close()
    return data, ending


@pytest.mark.parametrize("with_fallback", [False, True], ids=["close", "fallback"])
def test_auth_fail_limit_answers_exactly_as_a_wrong_password(
    with_fallback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="anytls")
    request = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
    wrong = build_preface("guess", 30) + request
    right = build_preface(PASSWORD, 30) + request

    async def main() -> None:
        async with tcp_echo_server() as echo:
            extra = {"fallback": Address(*echo)} if with_fallback else {}
            config = ServerConfig(users={"u": PASSWORD}, auth_fail_limit=3, **extra)  # type: ignore[arg-type]
            server = AnyTLSServer(config, server_context(hosts=["localhost"]))
            port = free_port()
            await server.start(["127.0.0.1", "::1"], port)  # type: ignore[arg-type]
            first_wrong = await _attempt(port, wrong, with_fallback)
            for _ in range(2):
                await _attempt(port, wrong, with_fallback)
            now = asyncio.get_running_loop().time()
            assert server.auth_limiter.limited("127.0.0.1", now, 3)
            limited_wrong = await _attempt(port, wrong, with_fallback)
            limited_right = await _attempt(port, right, with_fallback)
            if with_fallback:
                # The fallback got every byte, the right password's preface included.
                assert first_wrong == (wrong, "echoed") and limited_wrong == first_wrong
                assert limited_right == (right, "echoed")
            else:
                assert first_wrong[0] == b""
                assert limited_right == first_wrong and limited_wrong == first_wrong
            assert server.sessions_accepted == 0  # the right password was refused
            # Another source is not limited: a client from ::1 still gets in.
            async with Client(ClientConfig("::1", port, PASSWORD, insecure=True)) as client:
                r, w = await client.open_connection(*echo)
                w.write(b"ok")
                assert await r.readexactly(2) == b"ok"
                w.close()
            assert server.sessions_accepted == 1
            await server.close()

    asyncio.run(main())
    limit_lines = [r for r in caplog.records if "--auth-fail-limit" in r.getMessage()]
    assert len(limit_lines) == 1 and limit_lines[0].levelno == logging.WARNING
    assert "127.0.0.1 failed to authenticate 3 times" in limit_lines[0].getMessage()


@pytest.mark.parametrize("policy", [{}, {"allow_private": False}])
def test_a_name_the_idna_codec_refuses_gets_one_line_and_an_error_synack(
    policy: dict[str, bool], caplog: pytest.LogCaptureFixture
) -> None:
    # A 70-character label: getaddrinfo raises UnicodeError, not OSError.
    caplog.set_level(logging.INFO, logger="anytls")

    async def main() -> None:
        server, port = await start(**policy)
        try:
            async with Client(ClientConfig("127.0.0.1", port, PASSWORD, insecure=True)) as c:
                with pytest.raises(StreamOpenError, match="invalid domain name"):
                    await c.open_connection("a" * 70 + ".com", 80)
        finally:
            await server.close()

    asyncio.run(main())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text and "invalid domain name" in caplog.text


async def _frames(reader: asyncio.StreamReader, until: float) -> list[tuple[int, int, bytes]]:
    """(command, stream id, payload) of the frames that come within ``until`` seconds."""
    data = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(until):
            while chunk := await reader.read(65536):
                data += chunk
    frames, pos = [], 0
    while pos + 7 <= len(data):
        command, stream_id, size = struct.unpack_from("!BIH", data, pos)
        frames.append((command, stream_id, data[pos + 7 : pos + 7 + size]))
        pos += 7 + size
    return frames


#: What an authenticated v2 session starts with.
OPENING = build_preface(PASSWORD, 0) + encode_frame(Command.SETTINGS, 0, b"v=2")


def _open_stream(stream_id: int, host: str, port: int = 80) -> bytes:
    """The SYN and the destination of one stream."""
    return encode_frame(Command.SYN, stream_id) + encode_frame(
        Command.PSH, stream_id, Address(host, port).encode()
    )


def _stall_dials(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Dials that wait for the returned event, then are refused."""
    release = asyncio.Event()

    async def slow_connect(self: object, candidates: object, port: int) -> asyncio.Transport:
        await release.wait()
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(server_module._ServerStream, "_connect", slow_connect)
    return release


def test_streams_beyond_the_default_limit_get_an_error_synack() -> None:
    async def main() -> None:
        server, port = await start()  # the default limit
        limit = server_module.MAX_STREAMS_PER_SESSION
        reader, writer = await tls_connect(port)
        syns = b"".join(encode_frame(Command.SYN, i) for i in range(1, limit + 6))
        writer.write(OPENING + syns)
        frames = await _frames(reader, 2)
        refused = [(sid, p) for cmd, sid, p in frames if cmd == Command.SYNACK and p]
        assert [sid for sid, _ in refused] == list(range(limit + 1, limit + 6))
        assert all(p == b"too many streams (limit %d)" % limit for _, p in refused)
        assert server.open_streams == limit
        writer.close()
        await server.close()

    asyncio.run(main())


def test_a_stream_without_a_destination_is_closed(
    monkeypatch: pytest.MonkeyPatch, info_logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server_module, "DESTINATION_TIMEOUT", 0.3)

    async def main() -> None:
        server, port = await start()
        reader, writer = await tls_connect(port)
        writer.write(OPENING + encode_frame(Command.SYN, 1))  # and nothing more on it
        frames = await _frames(reader, 1.5)
        assert (Command.FIN, 1, b"") in frames
        assert server.open_streams == 0 and len(server.connections) == 1  # the session lives
        writer.close()
        await server.close()

    asyncio.run(main())
    assert "stream 1: no destination within 0.3 s" in info_logs.text


def test_one_session_has_at_most_8_name_lookups_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        # TEST-NET: never answers a connect
        release, asked = stall_lookups(monkeypatch, [(socket.AF_INET, "192.0.2.1")])
        server, port = await start(allow_private=False, connect_timeout=30.0)
        _, writer = await tls_connect(port)
        writer.write(OPENING + b"".join(_open_stream(i, f"n{i}.x") for i in range(1, 21)))
        await wait_until(lambda: len(asked) >= server_module.LOOKUPS_PER_SESSION)
        await asyncio.sleep(0.3)
        assert len(asked) == server_module.LOOKUPS_PER_SESSION  # the others wait their turn
        release.set()
        await wait_until(lambda: len(asked) == 20)
        assert len(asked) == 20
        writer.close()
        await server.close()

    asyncio.run(main())


def test_what_a_session_buffers_for_destinations_being_dialled_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Many streams, each below the per-stream limit, to destinations that take their time.
    async def main() -> None:
        release = _stall_dials(monkeypatch)
        server, port = await start(connect_timeout=30.0)
        _, writer = await tls_connect(port)
        writer.write(OPENING)
        chunk = b"u" * 60_000
        for i in range(1, 101):  # 100 streams × 180 kB = 18 MB offered
            writer.write(
                _open_stream(i, "192.0.2.1")
                + b"".join(encode_frame(Command.PSH, i, chunk) for _ in range(3))
            )
        await wait_until(lambda: server.open_streams > 0)
        (conn,) = server.connections
        await asyncio.sleep(0.5)  # whatever the session would read, it has read
        limit = server_module.SESSION_DIAL_BUFFER_LIMIT
        assert limit <= conn.dial_buffered <= limit + 70_000  # one frame past the limit
        release.set()  # the dials fail: their bytes are let go, the session reads on
        await wait_until(lambda: server.open_streams == 0 and conn.dial_buffered == 0, 10)
        assert conn.dial_buffered == 0
        writer.close()
        await server.close()

    asyncio.run(main())


def test_a_lookup_keeps_its_slot_until_it_ends_even_when_its_dial_gave_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stalled resolver: the dials time out, but their lookups still hold the resolver's
    # threads, so the session gets no new ones until those end.
    async def main() -> None:
        release, asked = stall_lookups(monkeypatch, None)
        server, port = await start(allow_private=False, connect_timeout=0.3)
        reader, writer = await tls_connect(port)
        writer.write(OPENING)

        def streams(first: int) -> bytes:
            return b"".join(_open_stream(i, f"n{i}.x") for i in range(first, first + 8))

        writer.write(streams(1))
        await wait_until(lambda: len(asked) == 8)
        frames = await _frames(reader, 1.0)  # the 8 dials time out meanwhile
        timed_out = [sid for cmd, sid, p in frames if cmd == Command.SYNACK and b"timeout" in p]
        assert sorted(timed_out) == list(range(1, 9))
        writer.write(streams(9))
        frames = await _frames(reader, 1.0)
        assert len(asked) == 8  # no slot until a stalled lookup ends: these time out waiting
        timed_out = [sid for cmd, sid, p in frames if cmd == Command.SYNACK and b"timeout" in p]
        assert sorted(timed_out) == list(range(9, 17))
        release.set()  # the stalled lookups end: their slots are free again
        writer.write(streams(17))
        await wait_until(lambda: len(asked) == 16)
        assert len(asked) == 16
        writer.close()
        await server.close()

    asyncio.run(main())


def test_the_destination_timer_waits_while_the_server_holds_the_reads(
    monkeypatch: pytest.MonkeyPatch, info_logs: pytest.LogCaptureFixture
) -> None:
    # Stream 2's SYN is read; its destination sits unread behind stream 1's upload, which
    # paused the session's reads (its dial is slow): stream 2 must not be blamed for that.
    monkeypatch.setattr(server_module, "DESTINATION_TIMEOUT", 0.3)

    async def main() -> None:
        release = _stall_dials(monkeypatch)
        server, port = await start(connect_timeout=30.0)
        reader, writer = await tls_connect(port)
        upload = b"".join(encode_frame(Command.PSH, 1, b"u" * 60_000) for _ in range(40))
        writer.write(
            OPENING
            + _open_stream(1, "192.0.2.1")
            + encode_frame(Command.SYN, 2)
            + upload  # 2.4 MB: past what one read takes in
            + encode_frame(Command.PSH, 2, Address("192.0.2.2", 80).encode())
        )
        await asyncio.sleep(1.0)  # three timer periods with the reads held
        release.set()
        frames = await _frames(reader, 2.0)
        refused = {sid for cmd, sid, p in frames if cmd == Command.SYNACK and b"refused" in p}
        assert refused == {1, 2}  # stream 2's destination was read and dialled
        writer.close()
        await server.close()

    asyncio.run(main())
    assert "no destination" not in info_logs.text
