"""The server's TLS layer (aio/tls_transport.py) against a client made of ssl.SSLObject on
memory BIOs over a plain socket, so the test sees every TLS record the server sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from anytls.aio.tls_transport import ENCRYPT_SIZE, TlsServerTransport
from tests.helpers.aio import async_test, wait_until

RECORD_OVERHEAD = 17  # TLS 1.3 AES-GCM / ChaCha20: inner content type + 16-byte tag
MAX_PLAINTEXT = 16384


SHARED = bytearray(64 * 1024)


class Recorder(asyncio.BufferedProtocol):
    """Application protocol: keeps what it gets; ``echo`` sends it back. All share one
    receive buffer (as the server's connections do)."""

    def __init__(self, echo: bool = False, keep: bool = True) -> None:
        self.buf = SHARED
        self.data = bytearray()
        self.echo = echo
        self.keep = keep
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.calls = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.calls += 1
        chunk = bytes(self.buf[:nbytes])
        if self.keep:
            self.data += chunk
        if self.echo and self.transport is not None:
            self.transport.write(chunk)

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class Recorders(list[Recorder]):
    """An application protocol factory that keeps every protocol it made."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__()
        self.echo = echo

    def __call__(self) -> Recorder:
        self.append(Recorder(echo=self.echo))
        return self[-1]


class RawTlsClient:
    """A TLS client whose records the test can see."""

    def __init__(self, sock: socket.socket) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.raw = bytearray()  # ciphertext not yet split into records
        self.records: list[
            tuple[int, int]
        ] = []  # (type, length) of each record after the handshake
        self.plaintext = bytearray()
        self.closed_cleanly = False
        self.handshaken = False

    async def _send_outgoing(self) -> None:
        data = self.outgoing.read()
        if data:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _receive(self) -> bool:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 20)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        if self.handshaken:
            self.raw += data
            while len(self.raw) >= 5:
                length = int.from_bytes(self.raw[3:5], "big")
                if len(self.raw) < 5 + length:
                    break
                self.records.append((self.raw[0], length))
                del self.raw[: 5 + length]
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._send_outgoing()
                assert await self._receive(), "the server closed during the handshake"
        await self._send_outgoing()
        self.handshaken = True

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        await self._send_outgoing()

    async def read_until(self, size: int) -> None:
        """Read until ``size`` plaintext bytes arrived (or the server closed)."""
        while len(self.plaintext) < size:
            try:
                data = self.tls.read(1 << 20)
            except ssl.SSLWantReadError:
                pass
            else:
                if not data:  # the server's close_notify (before any EOF from TCP)
                    self.closed_cleanly = True
                    return
                self.plaintext += data
                continue
            if not await self._receive():
                return

    async def read_to_end(self) -> None:
        await self.read_until(1 << 62)


@asynccontextmanager
async def tls_server(
    cert_pair: tuple[Path, Path],
    app: Callable[[], asyncio.BaseProtocol],
    handshake_timeout: float | None = 5.0,
) -> AsyncIterator[tuple[int, list[TlsServerTransport]]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, cert_pair))
    made: list[TlsServerTransport] = []

    def factory() -> TlsServerTransport:
        transport = TlsServerTransport(ctx, app, handshake_timeout)
        made.append(transport)
        return transport

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], made
    finally:
        server.close()


async def raw_connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


@async_test
async def test_echo_and_one_record_per_chunk(cert_pair: tuple[Path, Path]) -> None:
    apps = Recorders()

    async with tls_server(cert_pair, apps) as (port, _):
        with await raw_connect(port) as sock:
            client = RawTlsClient(sock)
            await client.handshake()
            await client.send(b"hello")
            await wait_until(lambda: bool(apps) and bytes(apps[0].data) == b"hello")
            assert bytes(apps[0].data) == b"hello"
            transport = apps[0].transport
            assert transport is not None
            assert transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            assert transport.get_extra_info("peername") == sock.getsockname()
            # The padding scheme sizes records by writing chunks: each is its own record.
            chunks = [b"a" * 100, b"b" * 1, b"c" * 3000]
            transport.writelines(chunks)
            big = bytes(range(256)) * 1000  # 256 000 bytes: more than one ENCRYPT_SIZE slice
            transport.write(big)
            total = sum(map(len, chunks)) + len(big)
            await client.read_until(total)
            assert bytes(client.plaintext) == b"".join(chunks) + big
            data_records = [length for kind, length in client.records if kind == 23]
            # (TLS 1.3 session tickets may come first, also as type-23 records)
            lengths = data_records[-(3 + len(range(0, len(big), MAX_PLAINTEXT))) :]
            assert lengths[:3] == [n + RECORD_OVERHEAD for n in (100, 1, 3000)]
            assert all(n <= MAX_PLAINTEXT + RECORD_OVERHEAD for n in lengths[3:])
            assert sum(lengths[3:]) - RECORD_OVERHEAD * len(lengths[3:]) == len(big)
            assert len(big) > ENCRYPT_SIZE


@async_test
async def test_first_data_with_the_finished_message(cert_pair: tuple[Path, Path]) -> None:
    """A client that sends application data in the flight with its Finished (as ours and
    sing-box's do) has it delivered as soon as the handshake completes."""
    apps = Recorders(echo=True)

    async with tls_server(cert_pair, apps) as (port, _):
        with await raw_connect(port) as sock:
            client = RawTlsClient(sock)
            loop = asyncio.get_running_loop()
            while True:
                try:
                    client.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    out = client.outgoing.read()
                    if out:
                        await loop.sock_sendall(sock, out)
                    assert await client._receive()
            client.tls.write(b"preface")  # same TCP write as the Finished
            await loop.sock_sendall(sock, client.outgoing.read())
            client.handshaken = True
            await client.read_until(7)
            assert bytes(client.plaintext) == b"preface"


async def handshaken(
    sock: socket.socket, apps: Recorders
) -> tuple[RawTlsClient, asyncio.Transport]:
    """A finished handshake on ``sock`` and the server's transport for its application."""
    client = RawTlsClient(sock)
    await client.handshake()
    await wait_until(lambda: bool(apps))
    transport = apps[0].transport
    assert transport is not None
    return client, transport


@async_test
async def test_pause_reading_holds_data_until_resume(cert_pair: tuple[Path, Path]) -> None:
    apps = Recorders()

    async with tls_server(cert_pair, apps) as (port, _):
        with await raw_connect(port) as sock:
            client, transport = await handshaken(sock, apps)
            transport.pause_reading()
            payload = bytes(range(256)) * 4096  # 1 MiB
            await client.send(payload)
            # Ends with close_notify and EOF while the application still reads nothing.
            sock.shutdown(socket.SHUT_WR)  # and the end, while nothing is read
            # Not synchronisation: time for the bytes and the EOF to arrive, to show that
            # neither reaches the application while it is paused.
            await asyncio.sleep(0.2)
            assert len(apps[0].data) < len(payload)
            assert not apps[0].eof
            transport.resume_reading()
            await wait_until(lambda: apps[0].eof, timeout=5)
            assert bytes(apps[0].data) == payload  # all of it, then the EOF
            assert apps[0].eof


@async_test
async def test_close_sends_close_notify(cert_pair: tuple[Path, Path]) -> None:
    apps = Recorders()

    async with tls_server(cert_pair, apps) as (port, _):
        with await raw_connect(port) as sock:
            client, transport = await handshaken(sock, apps)
            transport.write(b"bye")
            transport.close()
            assert transport.is_closing()
            await client.read_to_end()
            assert bytes(client.plaintext) == b"bye"
            assert client.closed_cleanly  # a close_notify, not a bare FIN
            assert await asyncio.wait_for(apps[0].lost, 5) is None


@async_test
async def test_handshake_timeout_and_garbage(cert_pair: tuple[Path, Path]) -> None:
    created = Recorders()

    loop = asyncio.get_running_loop()
    async with tls_server(cert_pair, created, handshake_timeout=0.3) as (port, made):
        with await raw_connect(port) as silent:
            t0 = loop.time()
            assert await asyncio.wait_for(loop.sock_recv(silent, 100), 5) == b""
            assert 0.25 < loop.time() - t0 < 3
        with await raw_connect(port) as junk:
            await loop.sock_sendall(junk, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(loop.sock_recv(junk, 100), 5)
            while True:  # an alert or nothing, then the end
                more = await asyncio.wait_for(loop.sock_recv(junk, 100), 5)
                if not more:
                    break
                reply += more
            assert reply == b"" or reply[0] == 21  # (21: a TLS alert record)
        assert created == []  # no application protocol for a failed handshake
        assert len(made) == 2
        # and the server still serves
        with await raw_connect(port) as sock:
            client = RawTlsClient(sock)
            await client.handshake()
            await client.send(b"x")
            await wait_until(lambda: bool(created) and created[0].data == b"x")
            assert created[0].data == b"x"


@pytest.mark.parametrize("sessions", [20])
@async_test
async def test_no_receive_buffer_kept_per_connection(
    cert_pair: tuple[Path, Path], sessions: int
) -> None:
    """After carrying 1 MiB each, idle connections hold no large receive buffer (asyncio's
    and uvloop's TLS transports keep 256 KiB per connection for as long as it lives)."""

    def app() -> Recorder:
        return Recorder(echo=True, keep=False)

    payload = bytes(range(256)) * 4096  # 1 MiB
    socks: list[socket.socket] = []
    tracemalloc.start()
    try:
        async with tls_server(cert_pair, app) as (port, _):
            before = tracemalloc.get_traced_memory()[0]
            try:
                socks += [await raw_connect(port) for _ in range(sessions)]
                clients = [RawTlsClient(sock) for sock in socks]
                await asyncio.gather(*(c.handshake() for c in clients))

                async def one(client: RawTlsClient) -> None:
                    await client.send(payload)
                    await client.read_until(len(payload))
                    client.plaintext = bytearray()

                await asyncio.gather(*(one(c) for c in clients))
                after = tracemalloc.get_traced_memory()[0]
            finally:
                for sock in socks:
                    sock.close()
    finally:
        tracemalloc.stop()
    # (both ends of each connection are in this process; each holds well under 64 KiB)
    per_connection = (after - before) / sessions
    assert per_connection < 32 * 1024, per_connection


class _MemoryTcp:
    """Stands in for the TCP transport under a TlsServerTransport: keeps what it writes."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.out += chunk

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


@pytest.mark.parametrize(("tls12", "app_buffer"), [(False, 65536), (True, 65536), (False, 1000)])
@async_test
async def test_records_in_pieces_of_any_size(
    cert_pair: tuple[Path, Path], tls12: bool, app_buffer: int
) -> None:
    """Ciphertext arriving cut anywhere (single bytes, a record's header alone, many
    records in one read, reads larger than the feed size) decrypts to the same bytes in
    order: the top-up of OpenSSL's buffer, the stop when all is read and the wait for the
    rest of a cut record. TLS 1.2 records may be longer than TLS 1.3's; an application
    buffer smaller than a record leaves decrypted bytes in OpenSSL that must still come."""
    import random

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*map(str, cert_pair))
    app = Recorder()
    app.buf = bytearray(app_buffer)
    server = TlsServerTransport(ctx, lambda: app)
    tcp = _MemoryTcp()
    server.connection_made(tcp)  # type: ignore[arg-type]
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    if tls12:
        client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    rng = random.Random(13)

    def feed(data: bytes, max_piece: int) -> None:
        pos = 0
        while pos < len(data):
            n = min(rng.randint(1, max_piece), len(server.get_buffer(-1)))
            piece = data[pos : pos + n]
            server.get_buffer(-1)[: len(piece)] = piece
            server.buffer_updated(len(piece))
            pos += len(piece)

    for _ in range(6):  # the handshake, a flight at a time
        with contextlib.suppress(ssl.SSLWantReadError):
            client.do_handshake()
        feed(outgoing.read(), 1 << 20)
        incoming.write(bytes(tcp.out))
        tcp.out.clear()
    assert app.transport is not None, "handshake did not complete"

    sent = bytearray()
    for max_piece in (1, 7, 300, 20_000, 200_000):
        sizes = (1, 100, 1500, 16384) if max_piece < 100 else (1, 100, 1500, 16384, 70_000)
        stream = bytearray()
        for _ in range(12 if max_piece < 100 else 40):
            chunk = rng.randbytes(rng.choice(sizes))
            client.write(chunk)
            sent += chunk
            stream += outgoing.read()
        feed(bytes(stream), max_piece)
        assert app.data == sent
    assert not app.eof


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    # a record whose authentication tag does not match
    "bad MAC": lambda record: record[:-1] + bytes([record[-1] ^ 1]),
    # a record header announcing more than TLS allows, then junk
    "oversized record": lambda record: b"\x17\x03\x03\xff\xff" + b"\x00" * 64,
    # a record of a content type that does not exist
    "unknown type": lambda record: b"\x63" + record[1:],
    # a plaintext alert in the middle of the encrypted session
    "plain alert": lambda record: b"\x15\x03\x03\x00\x02\x02\x28",
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
@async_test
async def test_bad_records_close_the_connection_cleanly(
    cert_pair: tuple[Path, Path], corruption: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged record after the handshake: the connection is closed, the application is
    told (connection_lost), nothing reaches the event loop's exception handler, the data
    before it was delivered, and the server goes on serving."""
    caplog.set_level(logging.DEBUG, logger="anytls.tls")
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    apps = Recorders()

    async with tls_server(cert_pair, apps) as (port, _):
        with await raw_connect(port) as sock:
            client = RawTlsClient(sock)
            await client.handshake()
            client.tls.write(b"good")
            good = client.outgoing.read()
            client.tls.write(b"next")
            damaged = CORRUPTIONS[corruption](client.outgoing.read())
            await loop.sock_sendall(sock, good + damaged)
            await wait_until(lambda: bool(apps) and apps[0].lost.done(), timeout=5)
            assert apps[0].lost.done()
            assert bytes(apps[0].data) == b"good"
            # one line naming the peer and OpenSSL's reason
            (line,) = [r.getMessage() for r in caplog.records if r.name == "anytls.tls"]
            assert line.startswith(f"TLS error from 127.0.0.1:{sock.getsockname()[1]}, closing:")
            # the TCP connection ends (after an alert, or at once)
            while await asyncio.wait_for(loop.sock_recv(sock, 4096), 5):
                pass
        with await raw_connect(port) as sock:
            client = RawTlsClient(sock)
            await client.handshake()
            await client.send(b"again")
            await wait_until(lambda: len(apps) == 2 and apps[1].data == b"again")
            assert apps[1].data == b"again"
    assert errors == []
