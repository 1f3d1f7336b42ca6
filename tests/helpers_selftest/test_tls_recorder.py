"""Check TLSRecordRecorder and the plaintext-size arithmetic against real Python TLS."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import pytest

from tests.helpers.aio import async_test
from tests.helpers.tls_recorder import (
    RecordParser,
    TLSRecord,
    TLSRecordRecorder,
    plaintext_len_tls12_chacha,
    plaintext_len_tls12_gcm,
    plaintext_len_tls13,
)

SIZES = [100, 250, 1000, 16384]


def _finished_len(cipher: str) -> int:
    """TLS 1.3 Finished handshake message size: 4-byte header + HMAC of the suite's hash."""
    return 4 + (48 if cipher.endswith("SHA384") else 32)


def _server_ctx(cert_pair: tuple[Path, Path], version: str, cipher: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_pair)
    if version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if cipher:
            ctx.set_ciphers(cipher)
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _client_ctx(cert_pair: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cert_pair[0])
    return ctx


@contextlib.asynccontextmanager
async def _tls_sink(ctx: ssl.SSLContext, total: int, info: dict[str, object]):
    """TLS server that reads ``total`` bytes, records version/cipher, replies b"ok"."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            info["received"] = await r.readexactly(total)
            obj = w.get_extra_info("ssl_object")
            info["version"] = obj.version()
            info["cipher"] = obj.cipher()[0]
            w.write(b"ok")
            await w.drain()
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _blocking_client(
    port: int, ctx: ssl.SSLContext, sizes: list[int]
) -> tuple[str | None, str | None]:
    """One SSL_write per size (blocking ssl socket); returns (version, cipher)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        for n in sizes:
            tls.sendall(b"x" * n)
        assert tls.recv(2) == b"ok"
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else None


@pytest.mark.parametrize(
    ("version", "cipher", "to_plain"),
    [
        ("1.3", None, plaintext_len_tls13),
        ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256", plaintext_len_tls12_gcm),
        ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384", plaintext_len_tls12_gcm),
        ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305", plaintext_len_tls12_chacha),
    ],
    ids=["tls13", "tls12-aes128gcm", "tls12-aes256gcm", "tls12-chacha"],
)
@async_test(timeout=30)
async def test_recorder_maps_writes_to_records(
    cert_pair: tuple[Path, Path], version: str, cipher: str | None, to_plain
) -> None:
    info: dict[str, object] = {}
    async with (
        _tls_sink(_server_ctx(cert_pair, version, cipher), sum(SIZES), info) as port,
        TLSRecordRecorder("127.0.0.1", port) as rec,
    ):
        got_version, got_cipher = await asyncio.to_thread(
            _blocking_client, rec.port, _client_ctx(cert_pair), SIZES
        )
        await rec.wait_closed()
    assert got_version == f"TLSv{version}"
    if cipher:
        assert got_cipher == cipher
    assert len(rec.connections) == 1
    conn = rec.connections[0]
    assert conn.client.error is None and conn.server.error is None
    assert not conn.client.partial
    ctypes = [r.content_type for r in conn.client_records]
    assert ctypes[0] == 22  # ClientHello
    app = conn.client_app_data()
    # The last len(SIZES) type-23 records are exactly our writes.
    assert [to_plain(n) for n in app[-len(SIZES) :]] == SIZES
    if version == "1.3":
        # TLS 1.3: the client Finished (4 + hash length bytes) is the first type-23 record.
        assert len(app) == len(SIZES) + 1
        assert to_plain(app[0]) == _finished_len(str(got_cipher))
    else:
        # TLS 1.2: Finished travels as an encrypted handshake (type 22) record.
        assert len(app) == len(SIZES)
        assert 20 in ctypes
    assert conn.client.total_bytes == sum(5 + r.length for r in conn.client_records)
    assert conn.server.total_bytes == sum(5 + r.length for r in conn.server_records)
    assert info["received"] == b"x" * sum(SIZES)
    # Server reply b"ok" is the last server record (type 23, 2 bytes of plaintext).
    assert to_plain(conn.server_app_data()[-1]) == 2


@async_test(timeout=30)
async def test_asyncio_tls_writes_one_record_each(cert_pair: tuple[Path, Path]) -> None:
    """asyncio's SSL transport: write()+drain() per chunk → one record per write."""
    info: dict[str, object] = {}
    async with (
        _tls_sink(_server_ctx(cert_pair, "1.3", None), sum(SIZES), info) as port,
        TLSRecordRecorder("127.0.0.1", port) as rec,
    ):
        reader, writer = await asyncio.open_connection(
            rec.host, rec.port, ssl=_client_ctx(cert_pair), server_hostname="localhost"
        )
        try:
            for n in SIZES:
                writer.write(b"y" * n)
                await writer.drain()
            assert await reader.readexactly(2) == b"ok"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await rec.wait_closed()
    app = [plaintext_len_tls13(n) for n in rec.connections[0].client_app_data()]
    # [Finished, *writes, close_notify alert (2 bytes, also type 23 in TLS 1.3)]
    assert app[0] == _finished_len(str(info["cipher"]))
    assert app[1:] == [*SIZES, 2]


def test_record_parser_arbitrary_chunking() -> None:
    stream = b"".join(
        bytes([t, 3, 3]) + n.to_bytes(2, "big") + b"\0" * n
        for t, n in [(22, 512), (20, 1), (23, 0), (23, 16401), (21, 2)]
    )
    for step in (1, 2, 5, 7, 4096, len(stream)):
        p = RecordParser()
        for i in range(0, len(stream), step):
            p.feed(stream[i : i + step])
        assert p.records == [
            TLSRecord(22, 512),
            TLSRecord(20, 1),
            TLSRecord(23, 0),
            TLSRecord(23, 16401),
            TLSRecord(21, 2),
        ]
        assert p.error is None and not p.partial
    p = RecordParser()
    p.feed(b"GET / HTTP/1.1\r\n")
    assert p.error is not None and p.records == []


@async_test(timeout=20)
async def test_recorder_target_refused() -> None:
    from tests.helpers.echo import refused_port

    async with TLSRecordRecorder("127.0.0.1", refused_port()) as rec:
        r, w = await asyncio.open_connection(rec.host, rec.port)
        assert await r.read() == b""
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()
        await rec.wait_closed()
    assert isinstance(rec.connections[0].connect_error, ConnectionRefusedError)
